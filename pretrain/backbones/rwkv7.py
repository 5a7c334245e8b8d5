"""AudioRWKV (A-RWKV): bidirectional RWKV-7 over the spectrogram patch grid.

Follows the released code (Jiayu-Xiong/AudioRWKV ``models/rwkv7.py``), which is RWKV-7 "x070"
(BlinkDL/RWKV-LM) with two changes:

* **2D token shift.** The causal shift ``x_{t-1} - x_t`` becomes ``DWConv3x3(x) - x`` over the
  (time, freq) patch grid; time-mix and channel-mix have separate convs. As in the code, the conv
  output plays the role of the shifted token and the difference is taken afterwards.
  ``token_shift="dwsep"`` adds a 1x1 pointwise conv after the depthwise one (the paper's
  "depthwise separable" wording); it is initialized to the identity so it starts as the code does.
* **Bi-WKV.** The WKV-7 scan runs forward and on the time-reversed sequence with the same
  r, w, k, v, kappa, alpha, and the two results are mixed per token and head by
  ``gamma = sigmoid(gate . shift_difference)`` (a grouped 1x1 conv, C weights);
  ``bi_combine="sum"`` adds them instead.

Everything else is x070: LoRA decay ``w = exp(-e^-0.5 sigmoid(d))``, value residual from layer 0,
in-context learning rate, normalized removal key, GroupNorm with eps 1e-5 * 8^2, bonus term,
sigmoid-LoRA gate, squared-ReLU channel-mix (whose Linears have biases in A-RWKV), no ``ln0``,
and the reference initialization (including A-RWKV's quirks: the effective re-initializations of
its ``generate_init_weight`` are the mixing gate's ``trunc_normal(std=1e-4)``; the channel-mix
conv keeps PyTorch's default init).

For us the model returns per-patch features after a final LayerNorm (A-RWKV mean-pools first and
puts a 527-class head on top; the Encoder's objective or fine-tuning head replaces that).

Parameter counts. With A-RWKV's 527-class bias-free head, its Conv2d(1, C, 16) stem and the
position embedding for 496 tokens, T/S/B have 6.24M / 23.4M / 91.6M parameters (checked in
``tests/test_rwkv7.py``). The paper quotes 22M for S. Its table was not available to us; the gap
(1.4M) is about the size of S's LoRA matrices (1.47M) and also matches counting in units of
2^20 (23.4e6 / 2^20 = 22.3); which one, if either, explains it is unverified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..patches import resize_pos_embed
from .base import Backbone, BackboneOutput
from .layers import DropPath
from .rwkv7_core import time_mix_core
from .rwkv7_ops import lerp_matmul, sqrelu_linear
from .wkv7 import IMPLS as WKV_IMPLS
from .wkv7 import MAX_CHUNK_SIZE, resolve_impl, wkv7, wkv7_bidirectional

TOKEN_SHIFTS = ("dwconv3x3", "dwsep")
BI_COMBINES = ("gate", "sum")


@dataclass
class RWKV7Config:
    """Hyperparameters of the AudioRWKV backbone (defaults: A-RWKV-T)."""

    dim: int = 192
    depth: int = 12
    head_size: int = 64
    ffn_mult: int = 4
    drop_path: float = 0.0  # maximal stochastic-depth rate, linear over depth (A-RWKV: 0.15)
    pos_drop: float = 0.0  # dropout after the position embedding (A-RWKV: same value as drop_path)
    token_shift: str = "dwconv3x3"  # "dwconv3x3" (released code) | "dwsep" (depthwise + pointwise)
    bi_combine: str = "gate"  # "gate" (released code) | "sum"
    chunk_size: int = 16  # WKV chunk length of the pure path (the CUDA kernel's CHUNK_LEN is 16)
    wkv_impl: str = "auto"  # "auto": fla's Triton kernel on CUDA if installed, else pure | "pure" | "autograd"
    head_size_divisor: int = 8  # GroupNorm eps = 1e-5 * divisor^2, as x070
    ffn_bias: bool = True  # A-RWKV's channel-mix Linears have biases (upstream RWKV-7's do not)
    pos_resize: str = "ssast"  # how the position embedding adapts to other grids (patches.resize_pos_embed)

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.depth <= 0 or self.head_size <= 0:
            raise ValueError(f"rwkv7: dim, depth and head_size must be positive, got {self}")
        if self.dim % self.head_size:
            raise ValueError(f"rwkv7: dim {self.dim} is not a multiple of head_size {self.head_size}")
        if self.token_shift not in TOKEN_SHIFTS:
            raise ValueError(f"rwkv7: token_shift {self.token_shift!r} is not one of {TOKEN_SHIFTS}")
        if self.bi_combine not in BI_COMBINES:
            raise ValueError(f"rwkv7: bi_combine {self.bi_combine!r} is not one of {BI_COMBINES}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"rwkv7: chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {self.chunk_size}")
        if self.wkv_impl not in WKV_IMPLS:
            raise ValueError(f"rwkv7: wkv_impl {self.wkv_impl!r} is not one of {WKV_IMPLS}")
        if self.pos_resize not in ("ssast", "interpolate"):
            raise ValueError(f"rwkv7: pos_resize {self.pos_resize!r} is not 'ssast' or 'interpolate'")
        if not (0.0 <= self.drop_path < 1.0 and 0.0 <= self.pos_drop < 1.0):
            raise ValueError(
                f"rwkv7: drop_path and pos_drop must be in [0, 1), got {self.drop_path}, {self.pos_drop}"
            )


def lora_rank(dim: int, factor: float, power: float) -> int:
    """A-RWKV's LoRA width: ``max(32, round(factor * dim^power / 32) * 32)``."""
    return max(32, int(round(factor * dim**power / 32)) * 32)


def _orthogonal(rows: int, cols: int, scale: float) -> torch.Tensor:
    """x070's ``ortho_init`` for a 2-D matrix."""
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    return nn.init.orthogonal_(torch.empty(rows, cols), gain=gain * scale)


class GridShift(nn.Module):
    """AudioRWKV's token shift: ``conv(x on the (time, freq) grid) - x``.

    ``x`` is ``(B, N, C)`` time-major (``index = t * nf + f``)."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.pointwise = None
        if kind == "dwsep":
            self.pointwise = nn.Conv2d(dim, dim, 1, bias=False)
            with torch.no_grad():
                self.pointwise.weight.copy_(torch.eye(dim).view(dim, dim, 1, 1))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        bsz, n, dim = x.shape
        # (B, T, F, C) seen as channels-last (B, C, T, F); the conv then answers channels-last too,
        # so its output reads back as (B, N, C) without a transposed copy (1.4 vs 1.8 ms fwd+bwd per
        # shift at batch 4 x 512 tokens, one thread).
        img = x.reshape(bsz, grid[0], grid[1], dim).permute(0, 3, 1, 2)
        img = self.depthwise(img)
        if self.pointwise is not None:
            img = self.pointwise(img)
        return img.permute(0, 2, 3, 1).reshape(bsz, n, dim) - x


class TimeMix(nn.Module):
    """RWKV-7 (x070) time-mix with the 2D token shift and Bi-WKV."""

    def __init__(self, cfg: RWKV7Config, layer: int):
        super().__init__()
        c, n = cfg.dim, cfg.head_size
        h = c // n
        self.layer, self.heads, self.head_size, self.chunk_size = layer, h, n, cfg.chunk_size
        self.wkv_impl = cfg.wkv_impl
        self.bi_combine = cfg.bi_combine
        depth = cfg.depth
        ratio_0_to_1 = layer / max(depth - 1, 1)
        ratio_1_to_0 = 1.0 - layer / depth
        ddd = torch.arange(c, dtype=torch.float32) / c
        lin = torch.arange(c, dtype=torch.float32) / (c - 1) - 0.5
        pos = (torch.arange(c) % n).float()
        zigzag = (pos - (n - 1) / 2) / ((n - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        decay = -6 + 6 * (torch.arange(c, dtype=torch.float32) / (c - 1)) ** (1 + ratio_0_to_1**0.3)

        def mix(power: float) -> nn.Parameter:
            return nn.Parameter((1.0 - ddd ** (power * ratio_1_to_0)).view(1, 1, c))

        self.x_r, self.x_w, self.x_k = mix(0.2), mix(0.9), mix(0.7)
        self.x_v, self.x_a, self.x_g = mix(0.7), mix(0.9), mix(0.2)

        d_w, d_v, d_g = lora_rank(c, 1.8, 0.5), lora_rank(c, 1.3, 0.5), lora_rank(c, 0.6, 0.8)
        self.w0 = nn.Parameter((decay + 0.5 + 2.5 * zigzag).view(1, 1, c))  # 0.5 undoes the softplus offset
        self.w1 = nn.Parameter(torch.zeros(c, d_w))
        self.w2 = nn.Parameter(_orthogonal(d_w, c, 0.1))
        self.a0 = nn.Parameter((-0.19 + 0.3 * zigzag + 0.4 * lin).view(1, 1, c))
        self.a1 = nn.Parameter(torch.zeros(c, d_w))
        self.a2 = nn.Parameter(_orthogonal(d_w, c, 0.1))
        self.v0 = nn.Parameter((0.73 - 0.4 * lin).view(1, 1, c))
        self.v1 = nn.Parameter(torch.zeros(c, d_v))
        self.v2 = nn.Parameter(_orthogonal(d_v, c, 0.1))
        if layer == 0:
            # Layer 0 sets v_first = v and never uses its value-residual LoRA (kept, as in RWKV-7, for
            # parameter and checkpoint parity): frozen, so that DDP on 2+ ranks, which stops when a trainable
            # parameter gets no gradient, accepts the model.
            for p in (self.v0, self.v1, self.v2):
                p.requires_grad_(False)
        self.g1 = nn.Parameter(torch.zeros(c, d_g))
        self.g2 = nn.Parameter(_orthogonal(d_g, c, 0.1))
        self.k_k = nn.Parameter((0.71 - 0.1 * lin).view(1, 1, c))
        self.k_a = nn.Parameter(torch.full((1, 1, c), 1.02))
        self.r_k = nn.Parameter(torch.full((h, n), -0.04))

        self.shift = GridShift(c, cfg.token_shift)
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=1e-5 * cfg.head_size_divisor**2)
        bound = 0.5 / math.sqrt(c)
        with torch.no_grad():
            self.receptance.weight.uniform_(-bound, bound)
            self.key.weight.uniform_(-0.1 * bound, 0.1 * bound)
            self.value.weight.uniform_(-bound, bound)
            self.shift.depthwise.weight.uniform_(-bound, bound)
            self.output.weight.zero_()
        # Bi-WKV mixing gate: Conv1d(C -> H, k=1, groups=H, bias=False) on the shift difference.
        self.bi_gate = None
        if cfg.bi_combine == "gate":
            self.bi_gate = nn.Parameter(nn.init.trunc_normal_(torch.empty(h, n), std=1e-4))

    def forward(
        self, x: torch.Tensor, v_first: torch.Tensor | None, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, length, c = x.shape
        h, n = self.heads, self.head_size
        xx = self.shift(x, grid)
        # (x + xx * mu) @ W without keeping the six interpolated inputs (rwkv7_ops.lerp_matmul).
        r = lerp_matmul(x, xx, self.x_r, self.receptance.weight.t())
        # zw, za, zv: the LoRA outputs before their sigmoid (rwkv7_core.time_mix_pre applies them).
        zw = F.linear(torch.tanh(lerp_matmul(x, xx, self.x_w, self.w1)), self.w2.t(), self.w0.view(-1))
        k = lerp_matmul(x, xx, self.x_k, self.key.weight.t())
        zv = None
        if self.layer == 0:
            v = lerp_matmul(x, xx, self.x_v, self.value.weight.t())
            v_first = v
        else:
            if v_first is None:
                raise ValueError("rwkv7: layers after the first need v_first from layer 0")
            v, v_lora = lerp_matmul(x, xx, self.x_v, torch.cat([self.value.weight.t(), self.v1], 1)).split(
                [c, self.v1.shape[1]], dim=-1
            )
            # contiguous: views would keep the whole (C + D)-wide product alive for backward
            v, zv = v.contiguous(), F.linear(v_lora.contiguous(), self.v2.t(), self.v0.view(-1))
        za = F.linear(lerp_matmul(x, xx, self.x_a, self.a1), self.a2.t(), self.a0.view(-1))
        g = torch.sigmoid(lerp_matmul(x, xx, self.x_g, self.g1)) @ self.g2

        gate = None
        if self.bi_gate is not None:
            gate = torch.sigmoid((xx.view(bsz, length, h, n) * self.bi_gate).sum(-1))
        y = time_mix_core(
            r, zw, k, v, v_first if zv is not None else None, zv, za, g, gate, self.k_k, self.k_a, self.r_k,
            self.ln_x.weight, self.ln_x.bias, heads=h, eps=self.ln_x.eps, chunk_size=self.chunk_size,
            impl=resolve_impl(self.wkv_impl, x.device),
        )
        return self.output(y), v_first


class ChannelMix(nn.Module):
    """x070 channel-mix: squared-ReLU FFN on the token-shifted input (own 2D shift conv)."""

    def __init__(self, cfg: RWKV7Config, layer: int):
        super().__init__()
        c = cfg.dim
        ddd = torch.arange(c, dtype=torch.float32) / c
        self.x_k = nn.Parameter((1.0 - ddd ** ((1.0 - layer / cfg.depth) ** 4)).view(1, 1, c))
        self.shift = GridShift(c, cfg.token_shift)  # PyTorch default conv init, as A-RWKV
        self.key = nn.Linear(c, c * cfg.ffn_mult, bias=cfg.ffn_bias)
        self.value = nn.Linear(c * cfg.ffn_mult, c, bias=cfg.ffn_bias)
        with torch.no_grad():
            self.key.weight.uniform_(-0.5 / math.sqrt(c), 0.5 / math.sqrt(c))
            self.value.weight.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # Same maths as value(relu(key(x + shift * x_k))^2), keeping only x, shift and key's output.
        h = lerp_matmul(x, self.shift(x, grid), self.x_k, self.key.weight.t())
        if self.key.bias is not None:
            h = h + self.key.bias
        return sqrelu_linear(h, self.value.weight, self.value.bias)


class Block(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer: int, drop_path: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.att = TimeMix(cfg, layer)
        self.ffn = ChannelMix(cfg, layer)
        self.drop = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, v_first: torch.Tensor | None, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        att, v_first = self.att(self.ln1(x), v_first, grid)
        x = x + self.drop(att)
        x = x + self.drop(self.ffn(self.ln2(x), grid))
        return x, v_first


class RWKV7Backbone(Backbone):
    """AudioRWKV backbone: position embedding, Bi-WKV RWKV-7 blocks, final LayerNorm."""

    name: ClassVar[str] = "rwkv7"
    Config: ClassVar[type] = RWKV7Config
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "t": {"dim": 192, "depth": 12, "head_size": 64},
        "s": {"dim": 384, "depth": 12, "head_size": 64},
        "b": {"dim": 768, "depth": 12, "head_size": 64},
    }
    presets.update({"tiny": presets["t"], "small": presets["s"], "base": presets["b"]})

    def __init__(self, config: RWKV7Config, grid: tuple[int, int], patch: tuple[int, int]):
        super().__init__(config, grid, patch)
        cfg = config
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1], cfg.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(cfg.pos_drop)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linspace(0, p, L)
        self.blocks = nn.ModuleList(Block(cfg, i, rates[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("pos_embed"):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return self.num_layers + 1

    def no_weight_decay(self) -> set[str]:
        # RWKV-LM's rule: weight decay only on matrices named ".weight" (Linear and conv weights);
        # not on the LoRA factors, the per-channel mixing/bias vectors, norms or the position embedding.
        return {n for n, p in self.named_parameters() if not (p.dim() >= 2 and n.endswith(".weight"))}

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        grid = (int(grid[0]), int(grid[1]))
        if x.dim() != 3 or x.shape[1] != grid[0] * grid[1] or x.shape[2] != self.dim:
            raise ValueError(
                f"rwkv7: expected tokens (batch, {grid[0] * grid[1]}, {self.dim}) for grid {grid}, "
                f"got {tuple(x.shape)}"
            )
        # The mask needs no handling here: the Encoder already put its mask embedding in place.
        pos = resize_pos_embed(self.pos_embed, self.grid, grid, mode=self.config.pos_resize)
        x = self.pos_drop(x + pos.to(x.dtype))
        v_first = None
        hidden: list[torch.Tensor] = []
        for block in self.blocks:
            x, v_first = self.run_block(block, x, v_first, grid)
            if output_hidden_states:
                hidden.append(x)
        return BackboneOutput(self.norm(x), None, hidden if output_hidden_states else None)


__all__ = ["RWKV7Backbone", "RWKV7Config", "lora_rank", "wkv7", "wkv7_bidirectional"]
