"""SSAST/AST Transformer backbone: pre-LN ViT blocks with 1 or 2 cls tokens.

Matches SSAST's timm-0.4.5 DeiT layout (LayerNorm eps 1e-6, qkv with bias, GELU MLP ratio 4,
learned position embeddings over cls + patch tokens, trunc-normal std 0.02 init) so that the
published checkpoints map onto it key for key. Attention runs through
``scaled_dot_product_attention``; ``attention = "naive"`` materializes the score matrix as the
original code does (kept for benchmarks and for parity tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneOutput
from .layers import DropPath, pos_embed_for_grid


@dataclass
class ViTConfig:
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_cls: int = 2  # SSAST uses DeiT-distilled models: cls + dist token
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    dropout: float = 0.0
    attention: str = "sdpa"  # "sdpa" | "naive"
    pos_resize: str = "ssast"  # how position embeddings adapt to other grids: "ssast" (cut/interpolate) | "interpolate"

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.attention not in ("sdpa", "naive"):
            raise ValueError(f"attention must be 'sdpa' or 'naive', not {self.attention!r}")
        if self.num_cls not in (0, 1, 2):
            raise ValueError(f"num_cls must be 0, 1 or 2, not {self.num_cls}")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, naive: bool, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.naive = naive
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        p = self.dropout if self.training else 0.0
        if self.naive:
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            attn = F.dropout(attn.softmax(dim=-1), p)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, cfg.qkv_bias, cfg.attention == "naive", cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTBackbone(Backbone):
    """Transformer backbone (SSAST/AST). Token order time-major; cls tokens first."""

    name = "vit"
    Config = ViTConfig
    presets = {
        "tiny": {"dim": 192, "depth": 12, "num_heads": 3},
        "small": {"dim": 384, "depth": 12, "num_heads": 6},
        "base": {"dim": 768, "depth": 12, "num_heads": 12},
    }

    def __init__(self, config: ViTConfig, grid: tuple[int, int], patch: tuple[int, int]):
        super().__init__(config, grid, patch)
        c = config
        n = grid[0] * grid[1]
        self.cls_tokens = nn.Parameter(torch.zeros(1, c.num_cls, c.dim)) if c.num_cls else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n + c.num_cls, c.dim))
        self.pos_drop = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, c.depth).tolist()
        self.blocks = nn.ModuleList(Block(c, r) for r in rates)
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_tokens is not None:
            nn.init.trunc_normal_(self.cls_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_embedding(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls part, patch part) of the position embedding, the patch part adapted to ``grid``."""
        return pos_embed_for_grid(self.pos_embed, self.config.num_cls, self.grid, grid, self.config.pos_resize)

    def forward(self, x, grid, mask=None, output_hidden_states=False) -> BackboneOutput:
        b = x.shape[0]
        cls_pos, patch_pos = self.position_embedding(grid)
        x = x + patch_pos
        c = self.config.num_cls
        if c:
            x = torch.cat([(self.cls_tokens + cls_pos).expand(b, -1, -1), x], dim=1)
        x = self.pos_drop(x)
        hidden = [] if output_hidden_states else None
        for blk in self.blocks:
            x = self.run_block(blk, x)
            if hidden is not None:
                hidden.append(x[:, c:])
        x = self.norm(x)
        return BackboneOutput(patches=x[:, c:], cls=x[:, :c] if c else None, hidden_states=hidden)

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        if param_name.startswith("norm."):
            return self.num_layers + 1
        return 0

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_tokens"}
