"""Symmetric InfoNCE (CLIP/CLAP ``ClipLoss``, reference/clap.md §2.6).

logits_a = s * A @ T^T, logits_t = s * T @ A^T, labels = arange(N); loss = (CE_a + CE_t) / 2,
with s = exp(logit_scale_a). Under DDP the features are gathered across ranks with gradients
so every rank computes the global loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad


def clip_logits(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor):
    logits_a = scale * audio @ text.T
    return logits_a, logits_a.T


def clip_loss(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Global symmetric InfoNCE over all ranks' (normalised) features."""
    audio, text = gather_with_grad(audio.float()), gather_with_grad(text.float())
    logits_a, logits_t = clip_logits(audio, text, scale.float())
    labels = torch.arange(audio.shape[0], device=audio.device)
    return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels)) / 2
