"""The learning-rate shape shared by both training stages: linear warmup, then an optional half-cosine."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float,
                     cosine: bool) -> float | None:
    """Linear warmup from 0, then (if ``cosine``) a half-cosine to ``min_lr`` at ``total_steps``;
    None after the warmup of a non-cosine schedule (the caller's own decay applies)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if cosine:
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    return None
