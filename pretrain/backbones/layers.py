"""Layers shared by the backbones (as timm's ``layers``): stochastic depth, position-embedding lookup, and the
autocast state a custom autograd function replays in its backward."""

from __future__ import annotations

import torch
from torch import nn

from ..patches import resize_pos_embed


def autocast_state(t: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """Autocast state at forward time, for a custom backward to replay (what ``torch.amp.custom_bwd`` does)."""
    dev = t.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath semantics: survivors scaled by 1/keep; identity in eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def pos_embed_for_grid(pos_embed: torch.Tensor, num_cls: int, trained_grid: tuple[int, int],
                       grid: tuple[int, int], mode: str = "ssast") -> tuple[torch.Tensor, torch.Tensor]:
    """(cls part, patch part) of a learned ``(1, num_cls + N, D)`` position embedding (cls entries first),
    the patch part adapted from the grid it was trained on to ``grid``."""
    cls_pos, patch_pos = pos_embed[:, :num_cls], pos_embed[:, num_cls:]
    return cls_pos, resize_pos_embed(patch_pos, trained_grid, tuple(grid), mode)
