"""LAION's learning-rate schedule: linear warmup lr*(step+1)/warmup, then cosine to 0 over
the remaining steps, set every optimizer step (reference/clap.md §3.1)."""
from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span)) * base_lr


class CosineWarmup:
    """Sets ``lr`` on every param group; its only state is the step, saved in checkpoints."""

    def __init__(self, optimizer, base_lr: float, warmup: int, total: int):
        self.optimizer, self.base_lr, self.warmup, self.total = optimizer, base_lr, warmup, total
        self.step_num = 0

    def step(self) -> float:
        lr = cosine_lr(self.step_num, self.base_lr, self.warmup, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_num += 1
        return lr

    def state_dict(self) -> dict:
        return {"step_num": self.step_num, "base_lr": self.base_lr, "warmup": self.warmup,
                "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.step_num = int(state["step_num"])
