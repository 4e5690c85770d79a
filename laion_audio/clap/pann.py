"""PANN CNN audio encoders (Kong et al. 2020) in CLAP's variant (reference/clap.md §2.2).

Cnn14: six 3x3 double-conv blocks 64..2048 -> 2048-d embedding; Cnn10: five blocks ..1024 ->
1024-d; Cnn6: four 5x5 single-conv blocks ..512 -> 512-d. Names match LAION's
``pann_model.py`` (``conv_block{i}.conv1/bn1/...``, ``fc1``, ``fc_audioset``) so checkpoints
load. 2-D fusion (Cnn14 in LAION, any here): local chunks pass ``mel_conv2d`` (5x5, stride
(6, 2)) and are fused with the global map after ``conv_block1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feature_fusion import FUSION_TYPES, build_fusion
from .features import AudioConfig, LogmelFilterBank, SpecAugmentation, Spectrogram

#: name -> (channels per block, 5x5 single-conv blocks?, pool of the last block)
PANN_SIZES = {
    "Cnn14": ((64, 128, 256, 512, 1024, 2048), False, (1, 1)),
    "Cnn10": ((64, 128, 256, 512, 1024), False, (2, 2)),
    "Cnn6": ((64, 128, 256, 512), True, (2, 2)),
}


def _init_layer(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        layer.bias.data.fill_(0.0)


def _init_bn(bn: nn.Module) -> None:
    bn.bias.data.fill_(0.0)
    bn.weight.data.fill_(1.0)


class ConvBlock(nn.Module):
    """Two 3x3 conv+BN+ReLU then pooling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        for m in (self.conv1, self.conv2):
            _init_layer(m)
        for m in (self.bn1, self.bn2):
            _init_bn(m)

    def forward(self, x, pool=(2, 2)):
        x = F.relu_(self.bn2(self.conv2(F.relu_(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, kernel_size=pool)


class ConvBlock5x5(nn.Module):
    """One 5x5 conv+BN+ReLU then pooling (Cnn6)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        _init_layer(self.conv1)
        _init_bn(self.bn1)

    def forward(self, x, pool=(2, 2)):
        return F.avg_pool2d(F.relu_(self.bn1(self.conv1(x))), kernel_size=pool)


class PANN(nn.Module):
    """CNN14/10/6 with LAION's input dict and output dict (``embedding`` etc.)."""

    def __init__(self, cfg: AudioConfig, channels, five_by_five: bool, last_pool,
                 fusion_type: str | None = None, spec_augment: bool = True):
        super().__init__()
        if fusion_type and fusion_type not in FUSION_TYPES:
            raise ValueError(f"PANN supports fusion types {FUSION_TYPES}, not {fusion_type!r}")
        self.cfg = cfg
        self.fusion_type = fusion_type
        self.last_pool = tuple(last_pool)
        self.spectrogram_extractor = Spectrogram(cfg.window_size, cfg.hop_size)
        self.logmel_extractor = LogmelFilterBank(cfg)
        self.spec_augmenter = SpecAugmentation() if spec_augment else nn.Identity()
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        block = ConvBlock5x5 if five_by_five else ConvBlock
        cins = (1,) + tuple(channels[:-1])
        self.num_blocks = len(channels)
        for i, (cin, cout) in enumerate(zip(cins, channels), start=1):
            setattr(self, f"conv_block{i}", block(cin, cout))
        width = channels[-1]
        self.num_features = width
        self.fc1 = nn.Linear(width, width)
        self.fc_audioset = nn.Linear(width, cfg.class_num)
        if fusion_type:
            self.mel_conv2d = nn.Sequential(
                nn.Conv2d(1, channels[0], kernel_size=5, stride=(6, 2), padding=2),
                nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
            self.fusion_model = build_fusion(fusion_type, channels[0])
        _init_bn(self.bn0)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    def _bn0(self, x):
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def forward(self, batch: dict) -> dict:
        longer_idx = None
        if not self.fusion_type:
            x = self._bn0(self.logmel_extractor(self.spectrogram_extractor(batch["waveform"])))
        else:
            longer = batch["longer"].reshape(-1).bool().to(batch["mel_fusion"].device)
            # LAION's Cnn14 flags a random item even in eval (embeddings then vary per call); we
            # do it in training only, like its HTS-AT, so evaluation is deterministic
            if not bool(longer.any()) and self.training:
                longer = longer.clone()
                longer[int(torch.randint(0, longer.shape[0], (1,)))] = True
            longer_idx = torch.where(longer)[0]
            x = self._bn0(batch["mel_fusion"].float())
        if self.training:
            x = self.spec_augmenter(x)
        if self.fusion_type:
            global_x = self.conv_block1(x[:, 0:1])
            if len(longer_idx) > 0:
                local = x[longer_idx, 1:].contiguous()
                B, C, H, W = local.shape
                local = self.mel_conv2d(local.view(B * C, 1, H, W))
                local = local.view(B, C, *local.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3)
                th = global_x.shape[-2]
                if local.shape[-2] < th:
                    local = F.pad(local, (0, 0, 0, th - local.shape[-2]))
                else:
                    local = local[:, :, :th]
                global_x = global_x.clone()
                global_x[longer_idx] = self.fusion_model(global_x[longer_idx], local)
            x = global_x
        else:
            x = self.conv_block1(x)
        x = F.dropout(x, p=0.2, training=self.training)
        for i in range(2, self.num_blocks + 1):
            pool = self.last_pool if i == self.num_blocks else (2, 2)
            x = F.dropout(getattr(self, f"conv_block{i}")(x, pool), p=0.2, training=self.training)
        x = torch.mean(x, dim=3)
        latent = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        fine = F.relu_(self.fc1(latent.transpose(1, 2)))
        x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu_(self.fc1(x))
        embedding = F.dropout(x, p=0.5, training=self.training)
        return {"embedding": embedding, "clipwise_output": torch.sigmoid(self.fc_audioset(x)),
                "fine_grained_embedding": fine}


def create_pann(cfg: AudioConfig, model_name: str, fusion_type: str | None = None,
                channels=None, spec_augment: bool = True) -> PANN:
    """LAION sizes by name; ``channels`` shrinks a size for tests."""
    if model_name not in PANN_SIZES:
        raise ValueError(f"unknown PANN {model_name!r}; expected {sorted(PANN_SIZES)}")
    default_channels, five, last_pool = PANN_SIZES[model_name]
    return PANN(cfg, tuple(channels or default_channels), five, last_pool, fusion_type, spec_augment)
