"""The CLAP model: audio branch + text branch + 2-layer MLP projections into a 512-d joint
space + two learnable temperatures (reference/clap.md §2.4).

Attribute names are LAION's (``audio_branch``, ``text_branch``, ``audio_projection.{0,2}``,
``text_projection.{0,2}``, ``audio_transform.sequential.{0,3}``, ``text_transform...``,
``logit_scale_a``, ``logit_scale_t``; for the CLIP text tower also ``token_embedding``,
``positional_embedding``, ``ln_final``) so a LAION checkpoint's state dict loads as is.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .text import CONTEXT_LENGTH, LayerNorm, Transformer

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


class MLPLayers(nn.Module):
    """Linear-ReLU-Dropout-Linear (indices 0 and 3), the unused-by-default "mlp loss" heads
    that every LAION checkpoint carries."""

    def __init__(self, units=(512, 512, 512), dropout: float = 0.1):
        super().__init__()
        seq: list[nn.Module] = []
        for u0, u1 in zip(units[:-1], units[1:]):
            seq += [nn.Linear(u0, u1), nn.ReLU(), nn.Dropout(dropout)]
        self.sequential = nn.Sequential(*seq[:-2])

    def forward(self, x):
        return self.sequential(x)


def _projection(width: int, joint: int, act: str) -> nn.Sequential:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    if act not in acts:
        raise ValueError(f"mlp_act must be one of {sorted(acts)}")
    return nn.Sequential(nn.Linear(width, joint), acts[act](), nn.Linear(joint, joint))


class CLAP(nn.Module):
    def __init__(self, audio_branch: nn.Module, audio_width: int, text_type: str,
                 text_branch: nn.Module | None = None, text_cfg: dict | None = None,
                 joint_embed_shape: int = 512, mlp_act: str = "relu"):
        super().__init__()
        self.text_branch_type = text_type
        self.audio_branch = audio_branch
        self.joint_embed_shape = joint_embed_shape
        if text_type == "transformer":
            text_cfg = text_cfg or {}
            width = text_cfg.get("width", 512)
            self.context_length = text_cfg.get("context_length", CONTEXT_LENGTH)
            self.text_branch = Transformer(width, text_cfg.get("layers", 12), text_cfg.get("heads", 8))
            self.token_embedding = nn.Embedding(text_cfg.get("vocab_size", 49408), width)
            self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width))
            self.ln_final = LayerNorm(width)
            mask = torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)
            self._init_clip_text(width, text_cfg.get("layers", 12))
        elif text_type in ("roberta", "bert"):
            if text_branch is None:
                raise ValueError(f"text type {text_type} needs a Hugging Face text branch")
            self.text_branch = text_branch
            width = text_branch.config.hidden_size
        else:
            raise ValueError(f"unknown text model type {text_type!r}")
        self.text_transform = MLPLayers((joint_embed_shape,) * 3)
        self.text_projection = _projection(width, joint_embed_shape, mlp_act)
        self.audio_transform = MLPLayers((joint_embed_shape,) * 3)
        self.audio_projection = _projection(audio_width, joint_embed_shape, mlp_act)
        self.logit_scale_a = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_t = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def _init_clip_text(self, width: int, layers: int) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.text_branch.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    # -- encoders ---------------------------------------------------------------------------
    def encode_audio(self, audio: dict) -> torch.Tensor:
        """Projected, unnormalised audio features (B, 512)."""
        return self.audio_projection(self.audio_branch(audio)["embedding"])

    def encode_text(self, text: dict) -> torch.Tensor:
        """Projected, unnormalised text features (B, 512)."""
        ids = text["input_ids"]
        if self.text_branch_type == "transformer":
            x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
            x = self.text_branch(x.permute(1, 0, 2), attn_mask=self.attn_mask[: ids.shape[1], : ids.shape[1]])
            x = self.ln_final(x.permute(1, 0, 2))
            # CLIP takes the end-of-text token (argmax of ids with CLIP's vocab); the last
            # attended position is the same token for any tokenizer.
            if "attention_mask" in text:
                eot = text["attention_mask"].sum(-1) - 1
            else:
                eot = ids.argmax(-1)
            x = x[torch.arange(x.shape[0], device=x.device), eot]
        else:
            kwargs = {"input_ids": ids, "attention_mask": text["attention_mask"]}
            if self.text_branch_type == "bert" and "token_type_ids" in text:
                kwargs["token_type_ids"] = text["token_type_ids"]
            x = self.text_branch(**kwargs)["pooler_output"]
        return self.text_projection(x)

    def get_audio_embedding(self, audio: dict) -> torch.Tensor:
        return F.normalize(self.encode_audio(audio), dim=-1)

    def get_text_embedding(self, text: dict) -> torch.Tensor:
        return F.normalize(self.encode_text(text), dim=-1)

    def forward(self, audio: dict | None, text: dict | None):
        """LAION's contract: both -> (audio, text, audio_mlp, text_mlp, exp(s_a), exp(s_t)) with
        normalised features; neither -> the two scales; one side -> its unnormalised feature."""
        if audio is None and text is None:
            return self.logit_scale_a.exp(), self.logit_scale_t.exp()
        if audio is None:
            return self.encode_text(text)
        if text is None:
            return self.encode_audio(audio)
        a = F.normalize(self.encode_audio(audio), dim=-1)
        t = F.normalize(self.encode_text(text), dim=-1)
        return a, t, self.audio_transform(a), self.text_transform(t), \
            self.logit_scale_a.exp(), self.logit_scale_t.exp()

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """LAION clamps to [0, ln 100] after every optimizer step."""
        self.logit_scale_a.clamp_(0, LOGIT_SCALE_MAX)
        self.logit_scale_t.clamp_(0, LOGIT_SCALE_MAX)


def unwrap(model: nn.Module) -> nn.Module:
    """The CLAP module inside DDP (or itself)."""
    return model.module if hasattr(model, "module") else model



