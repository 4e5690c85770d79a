"""Attentional feature fusion (Dai et al., WACV 2021) as CLAP uses it to merge the global
view of a long clip with its three local chunks (reference/clap.md §2.5).

Module and submodule indices match LAION's ``feature_fusion.py`` so that fusion checkpoints
load: ``local_att.{0,1,3,4}``, ``global_att.{1,2,4,5}`` (and ``*_att2`` for iAFF).
Only the 2-D variants are provided: released checkpoints use ``aff_2d``.
"""
from __future__ import annotations

import torch
from torch import nn

FUSION_TYPES = ("aff_2d", "iaff_2d", "daf_2d")


def _attention(channels: int, inter: int, pooled: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if pooled else []
    layers += [nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
               nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers)


class DAF(nn.Module):
    """Direct add fusion."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class AFF(nn.Module):
    """w = sigmoid(local(x+y) + global(x+y)); out = 2*x*w + 2*y*(1-w)."""

    def __init__(self, channels: int = 64, r: int = 4):
        super().__init__()
        inter = int(channels // r)
        self.local_att = _attention(channels, inter, pooled=False)
        self.global_att = _attention(channels, inter, pooled=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        xa = x + residual
        single = xa.shape[0] == 1
        if single:  # BatchNorm needs two items in training: LAION duplicates the item
            xa = torch.cat([xa, xa])
        w = self.sigmoid(self.local_att(xa) + self.global_att(xa))
        if single:
            w = w[:1]
        return 2 * x * w + 2 * residual * (1 - w)


class iAFF(nn.Module):
    """Iterative AFF. LAION's second pass reuses ``global_att`` (not ``global_att2``); kept for
    checkpoint parity, ``global_att2`` exists only so the state dict matches."""

    def __init__(self, channels: int = 64, r: int = 4):
        super().__init__()
        inter = int(channels // r)
        self.local_att = _attention(channels, inter, pooled=False)
        self.global_att = _attention(channels, inter, pooled=True)
        self.local_att2 = _attention(channels, inter, pooled=False)
        self.global_att2 = _attention(channels, inter, pooled=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        xa = x + residual
        single = xa.shape[0] == 1
        if single:
            xa = torch.cat([xa, xa])
            x2, r2 = torch.cat([x, x]), torch.cat([residual, residual])
        else:
            x2, r2 = x, residual
        w = self.sigmoid(self.local_att(xa) + self.global_att(xa))
        xi = x2 * w + r2 * (1 - w)
        w2 = self.sigmoid(self.local_att2(xi) + self.global_att(xi))
        out = x2 * w2 + r2 * (1 - w2)
        return out[:1] if single else out


def build_fusion(fusion_type: str, channels: int) -> nn.Module:
    if fusion_type == "aff_2d":
        return AFF(channels)
    if fusion_type == "iaff_2d":
        return iAFF(channels)
    if fusion_type == "daf_2d":
        return DAF()
    raise ValueError(f"unsupported fusion type {fusion_type!r}; expected one of {FUSION_TYPES}")
