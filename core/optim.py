"""One optimizer builder for both training stages: Adam (SSAST, L2-style decay) or AdamW (decoupled)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float, no_decay: set[str]) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms, embeddings named by ``no_decay`` excluded."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if p.ndim <= 1 or name in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def build_optimizer(name: str, groups: Iterable[dict[str, Any]], lr: float, betas: list[float] | tuple[float, ...],
                    eps: float) -> torch.optim.Optimizer:
    """``name`` is ``"adam"`` or ``"adamw"``; each group carries its own ``weight_decay`` (and ``lr_scale``)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    b1, b2 = betas
    return cls(list(groups), lr=lr, betas=(b1, b2), eps=eps)
