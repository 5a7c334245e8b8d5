"""Memory-lean fused ops for the RWKV-7 blocks (pure PyTorch, CPU and GPU).

Plain autograd keeps every intermediate a block makes. Two patterns dominate A-RWKV's training
memory besides the WKV itself, and both are cheap to recompute in backward:

* ``lerp_matmul(x, xx, mu, w) = (x + xx * mu) @ w``: RWKV's token-shift interpolation feeding a
  projection. Autograd saves each of the six interpolated inputs (one C-vector per token each);
  this saves only ``x`` and ``xx`` (shared by all six) and recomputes the interpolation.
* ``sqrelu_linear(h, w, bias) = relu(h)^2 @ w^T + bias``: the channel-mix's squared-ReLU FFN.
  Autograd saves both ``relu(h)`` and ``relu(h)^2`` (4C each); this saves only ``h``.

The time-mix's elementwise chain around the WKV is the third (``rwkv7_core.py``).

Both are checked against plain autograd in ``tests/test_wkv7_pure.py``.
"""

from __future__ import annotations

import torch

from .layers import autocast_state


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (a per-channel parameter)."""
    return t.reshape(-1, t.shape[-1]).sum(0).view(shape)


class _LerpMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, xx, mu, w):
        ctx.save_for_backward(x, xx, mu, w)
        ctx.amp = autocast_state(x)
        return torch.addcmul(x, xx, mu) @ w

    @staticmethod
    def backward(ctx, d_out):
        dev, enabled, dtype = ctx.amp
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _LerpMatmul._grads(ctx, d_out)

    @staticmethod
    def _grads(ctx, d_out):
        x, xx, mu, w = ctx.saved_tensors
        d_mixed = d_out @ w.transpose(0, 1)
        d_w = None
        if ctx.needs_input_grad[3]:
            mixed = torch.addcmul(x, xx, mu)
            d_w = mixed.reshape(-1, mixed.shape[-1]).transpose(0, 1) @ d_out.reshape(-1, d_out.shape[-1])
        d_mu = _sum_to(d_mixed * xx, mu.shape) if ctx.needs_input_grad[2] else None
        return d_mixed, d_mixed * mu, d_mu, d_w


class _SqReLULinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, bias):
        ctx.save_for_backward(h, w)
        ctx.has_bias = bias is not None
        ctx.amp = autocast_state(h)
        act = torch.relu(h).square_()
        return torch.nn.functional.linear(act, w, bias)

    @staticmethod
    def backward(ctx, d_out):
        dev, enabled, dtype = ctx.amp
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _SqReLULinear._grads(ctx, d_out)

    @staticmethod
    def _grads(ctx, d_out):
        h, w = ctx.saved_tensors
        relu = torch.relu(h)
        flat = d_out.reshape(-1, d_out.shape[-1])
        d_w = flat.transpose(0, 1) @ relu.square().reshape(-1, h.shape[-1]) if ctx.needs_input_grad[1] else None
        d_bias = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        d_h = (d_out @ w).mul_(relu).mul_(2.0)
        return d_h, d_w, d_bias


def lerp_matmul(x: torch.Tensor, xx: torch.Tensor, mu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(x + xx * mu) @ w`` saving only ``x``, ``xx`` (and the parameters) for backward.

    ``x``, ``xx``: ``(..., C)``; ``mu``: broadcastable per-channel ``(1, 1, C)``; ``w``: ``(C, D)``."""
    return _LerpMatmul.apply(x, xx, mu, w)


def sqrelu_linear(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(relu(h)^2, w, bias)`` saving only ``h`` for backward (``w``: ``(out, in)`` as nn.Linear)."""
    return _SqReLULinear.apply(h, w, bias)
