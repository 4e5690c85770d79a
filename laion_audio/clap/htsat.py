"""HTS-AT audio encoder (Chen et al., ICASSP 2022) as used by CLAP (reference/clap.md §2.1).

A Swin transformer over a 256x256 "image" made from the log-mel: the (1001, 64) mel is
bicubically stretched to 1024 frames and cut into four 256-frame blocks stacked along the mel
axis. Module names, buffers and init follow LAION's ``htsat.py`` so that official checkpoints
load with ``strict=True`` (``spectrogram_extractor``, ``logmel_extractor``, ``bn0``,
``patch_embed``, ``layers.i.blocks.j``, ``norm``, ``tscam_conv``, ``head``).

Fusion (``aff_2d`` etc.) lives in the patch embedding: the global channel goes through the
normal 4x4 patch conv, each local chunk through ``mel_conv2d`` with a 3x wider time stride,
the three local maps are concatenated along time, zero-padded and fused with AFF.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feature_fusion import FUSION_TYPES, build_fusion
from .features import AudioConfig, LogmelFilterBank, SpecAugmentation, Spectrogram

#: LAION's create_htsat_model sizes.
HTSAT_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32)),
    "base": dict(embed_dim=128, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=256, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
}


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype,
                              device=x.device)).floor_()
    return x.div(keep) * mask


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    B = windows.shape[0] // ((H // ws) * (W // ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias table
    ((2w-1)^2 x heads, 225 x heads for w=8) indexed by the ``relative_position_index`` buffer."""

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(B_ // nw, nw, self.heads, N, N) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.heads, N, N)
        attn = self.attn_drop(attn.softmax(-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: int, mlp_ratio: float, drop_path_p: float):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # the window covers the map: no partition, no shift
            shift, window = 0, min(resolution)
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path_p) if drop_path_p > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = None
        if shift > 0:
            H, W = resolution
            img = torch.zeros((1, H, W, 1))
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            label = 0
            for h in cuts:
                for w in cuts:
                    img[:, h, w, :] = label
                    label += 1
            win = window_partition(img, window).view(-1, window * window)
            mask = win[:, None, :] - win[:, :, None]
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.resolution
        B, L, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.window).view(-1, self.window * self.window, C)
        win = self.attn(win, self.attn_mask).view(-1, self.window, self.window, C)
        x = window_reverse(win, self.window, H, W)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        H, W = self.resolution
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, heads, window, mlp_ratio, drop_path_ps, downsample):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2,
                                 mlp_ratio, drop_path_ps[i]) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """4x4 patch conv (+LayerNorm); with 2-D fusion also ``mel_conv2d`` + ``fusion_model``."""

    def __init__(self, img_size: int, patch: int, stride: int, embed_dim: int,
                 fusion_type: str | None):
        super().__init__()
        self.img_size = img_size
        self.grid = img_size // stride
        pad = (patch - stride) // 2
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=stride, padding=pad)
        self.norm = nn.LayerNorm(embed_dim)
        self.fusion_type = fusion_type
        if fusion_type:
            self.mel_conv2d = nn.Conv2d(1, embed_dim, kernel_size=(patch, patch * 3),
                                        stride=(stride, stride * 3), padding=(pad, pad))
            self.fusion_model = build_fusion(fusion_type, embed_dim)

    def forward(self, x: torch.Tensor, longer_idx: torch.Tensor | None = None) -> torch.Tensor:
        if self.fusion_type:
            global_x = self.proj(x[:, 0:1])
            if longer_idx is not None and len(longer_idx) > 0:
                local = x[longer_idx, 1:].contiguous()
                B, C, H, W = local.shape
                local = self.mel_conv2d(local.view(B * C, 1, H, W))
                local = local.view(B, C, *local.shape[1:]).permute(0, 2, 3, 1, 4).flatten(3)
                tw = global_x.shape[-1]
                if local.shape[-1] < tw:
                    local = F.pad(local, (0, tw - local.shape[-1]))
                else:
                    local = local[..., :tw]
                global_x = global_x.clone()
                global_x[longer_idx] = self.fusion_model(global_x[longer_idx], local)
            x = global_x
        else:
            x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """HTS-AT. ``forward(batch)`` takes LAION's input dict (``waveform`` for non-fusion,
    ``mel_fusion`` + ``longer`` for fusion) and returns ``{"embedding", "clipwise_output", ...}``."""

    def __init__(self, cfg: AudioConfig, embed_dim: int, depths, num_heads, window_size: int = 8,
                 spec_size: int = 256, patch_size: int = 4, patch_stride: int = 4,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
                 fusion_type: str | None = None, spec_augment: bool = True):
        super().__init__()
        if fusion_type and fusion_type not in FUSION_TYPES:
            raise ValueError(f"HTS-AT supports fusion types {FUSION_TYPES}, not {fusion_type!r}")
        self.cfg = cfg
        self.spec_size = spec_size
        self.freq_ratio = spec_size // cfg.mel_bins
        self.depths = list(depths)
        self.patch_stride = patch_stride
        self.fusion_type = fusion_type
        self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
        self.spectrogram_extractor = Spectrogram(cfg.window_size, cfg.hop_size)
        self.logmel_extractor = LogmelFilterBank(cfg)
        self.spec_augmenter = SpecAugmentation() if spec_augment else nn.Identity()
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.patch_embed = PatchEmbed(spec_size, patch_size, patch_stride, embed_dim, fusion_type)
        grid = self.patch_embed.grid
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.pos_drop = nn.Dropout(0.0)
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            res = (grid // 2 ** i, grid // 2 ** i)
            self.layers.append(BasicLayer(int(embed_dim * 2 ** i), res, depth, heads, window_size,
                                          mlp_ratio, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                                          downsample=i < len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features)
        sf = spec_size // 2 ** (len(depths) - 1) // patch_stride // self.freq_ratio
        self.tscam_conv = nn.Conv2d(self.num_features, cfg.class_num, kernel_size=(sf, 3), padding=(0, 1))
        self.head = nn.Linear(cfg.class_num, cfg.class_num)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _bn0(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm over mel bins: mel goes to the channel axis and back."""
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def reshape_wav2img(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, F) mel -> (B, C, spec_size, spec_size) by bicubic time stretch and folding
        of freq_ratio time blocks onto the mel axis."""
        B, C, T, Fq = x.shape
        target_t, target_f = self.spec_size * self.freq_ratio, self.spec_size // self.freq_ratio
        if T > target_t or Fq > target_f:
            raise ValueError(f"mel of {T}x{Fq} exceeds the HTS-AT input {target_t}x{target_f}")
        if T < target_t:
            x = F.interpolate(x, (target_t, Fq), mode="bicubic", align_corners=True)
        if Fq < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        x = x.permute(0, 1, 3, 2).contiguous()
        x = x.reshape(B, C, x.shape[2], self.freq_ratio, x.shape[3] // self.freq_ratio)
        x = x.permute(0, 1, 3, 2, 4).contiguous()
        return x.reshape(B, C, x.shape[2] * x.shape[3], x.shape[4])

    def forward_features(self, x: torch.Tensor, longer_idx=None) -> dict:
        frames = x.shape[2]
        x = self.pos_drop(self.patch_embed(x, longer_idx))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        B, N, C = x.shape
        sf = frames // 2 ** (len(self.depths) - 1) // self.patch_stride
        x = x.permute(0, 2, 1).reshape(B, C, sf, sf)
        c_freq = sf // self.freq_ratio
        x = x.reshape(B, C, sf // c_freq, c_freq, sf).permute(0, 1, 3, 2, 4).reshape(B, C, c_freq, -1)
        embedding = x.flatten(2).mean(-1)
        logits = self.tscam_conv(x).flatten(2)
        return {"embedding": embedding, "clipwise_output": torch.sigmoid(logits.mean(-1)),
                "fine_grained_embedding": x.mean(2).transpose(1, 2)}

    def forward(self, batch: dict) -> dict:
        if not self.fusion_type:
            x = self.spectrogram_extractor(batch["waveform"])
            x = self._bn0(self.logmel_extractor(x))
            x = self.spec_augmenter(x) if self.training else x
            return self.forward_features(self.reshape_wav2img(x))
        longer = batch["longer"].reshape(-1).bool().to(batch["mel_fusion"].device)
        x = self._bn0(batch["mel_fusion"].float())
        if not bool(longer.any()):
            if not self.training:  # eval with nothing longer: global channel only
                return self.forward_features(self.reshape_wav2img(x), longer_idx=None)
            # training: flag one random item so the fusion layers always get gradients
            longer = longer.clone()
            longer[int(torch.randint(0, longer.shape[0], (1,)))] = True
        x = self.spec_augmenter(x) if self.training else x
        return self.forward_features(self.reshape_wav2img(x), torch.where(longer)[0])


def create_htsat(cfg: AudioConfig, model_name: str, fusion_type: str | None = None,
                 **overrides) -> HTSAT:
    """LAION sizes by name (tiny/base/large); ``overrides`` shrink them for tests."""
    if model_name not in HTSAT_SIZES and not overrides:
        raise ValueError(f"unknown HTS-AT size {model_name!r}; expected {sorted(HTSAT_SIZES)}")
    size = dict(HTSAT_SIZES.get(model_name, HTSAT_SIZES["tiny"]))
    size.update(overrides)
    return HTSAT(cfg, fusion_type=fusion_type, **size)
