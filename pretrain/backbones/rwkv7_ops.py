"""Memory-lean fused ops for the RWKV-7 blocks (pure PyTorch, CPU and GPU).

Plain autograd keeps every intermediate a block makes. Two patterns dominate A-RWKV's training
memory besides the WKV itself, and both are cheap to recompute in backward:

* ``lerp_matmul(x, xx, mu, w) = (x + xx * mu) @ w``: RWKV's token-shift interpolation feeding a
  projection. Autograd saves each of the six interpolated inputs (one C-vector per token each);
  this saves only ``x`` and ``xx`` (shared by all six) and recomputes the interpolation.
* ``sqrelu_linear(h, w, bias) = relu(h)^2 @ w^T + bias``: the channel-mix's squared-ReLU FFN.
  Autograd saves both ``relu(h)`` and ``relu(h)^2`` (4C each); this saves only ``h``.

The time-mix's elementwise chain around the WKV is the third: ``time_mix_core`` runs the decay,
in-context learning rate, removal key, value residual, WKV, GroupNorm, bonus and output gate as one
Function that keeps only the projections it starts from and the WKV's output (8 C-vectors per token
instead of ~20), and recomputes the rest in backward (autograd over one layer's elementwise ops).

All are checked against plain autograd of the same ops in ``tests/test_wkv7_pure.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import wkv7 as wkv


def _amp_state(t: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """Autocast state at forward time, replayed in backward (what ``torch.amp.custom_bwd`` does)."""
    dev = t.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (a per-channel parameter)."""
    return t.reshape(-1, t.shape[-1]).sum(0).view(shape)


class _LerpMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, xx, mu, w):
        ctx.save_for_backward(x, xx, mu, w)
        ctx.amp = _amp_state(x)
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
        ctx.amp = _amp_state(h)
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


# ----------------------------------------------------------------------------------------------
# The time-mix core: projections -> WKV inputs -> WKV -> GroupNorm, bonus, gate.


def time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads: int):
    """x070's per-token maths from the projections to the WKV inputs ``(log_w, k, v, a, b)``, each
    ``(B, L, H, N)``. ``zw``, ``za``, ``zv``: the decay, in-context rate and value-residual LoRA
    outputs before their sigmoid; ``zv``/``v_first`` None in layer 0 (no value residual)."""
    bsz, length, c = k0.shape
    shape = (bsz, length, heads, c // heads)
    log_w = wkv.LOG_DECAY_FLOOR * torch.sigmoid(zw)  # log w = -e^-0.5 sigmoid(d)
    v = vp if zv is None else vp + (v_first - vp) * torch.sigmoid(zv)
    alpha = torch.sigmoid(za)
    kappa = F.normalize((k0 * k_k).view(shape), dim=-1, p=2.0)
    k = k0 * (1 + (alpha - 1) * k_a)
    return log_w.view(shape), k.view(shape), v.view(shape), -kappa, kappa * alpha.view(shape)


def time_mix_post(y, r, k, v, g, r_k, ln_w, ln_b, eps: float):
    """GroupNorm of the WKV output ``y`` per head, plus the bonus ``(r . (k * r_k)) v``, times the
    gate ``g``. ``y``, ``r``, ``k``, ``v``: ``(B, L, H, N)``; ``g``: ``(B, L, C)``."""
    bsz, length, h, n = y.shape
    y = F.group_norm(y.reshape(bsz * length, h * n), h, ln_w, ln_b, eps).view(bsz, length, h, n)
    bonus = (r * k * r_k).sum(-1, keepdim=True) * v
    return (y + bonus).reshape(bsz, length, h * n) * g


class _TimeMixCore(torch.autograd.Function):
    # inputs: r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b (tensors), then cfg
    @staticmethod
    def forward(ctx, *args):
        *tensors, cfg = args
        heads, eps, chunk = cfg
        r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b = tensors
        log_w, k, v, a, b = time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
        r_h = r.view(k.shape)
        y, bounds = wkv.pure_forward(r_h, log_w, k, v, a, b, gate, 2, chunk)
        y = y.to(r.dtype)
        out = time_mix_post(y, r_h, k, v, g, r_k, ln_w, ln_b, eps)
        ctx.save_for_backward(*tensors, y, *bounds[1:])
        ctx.cfg, ctx.amp = cfg, _amp_state(r)
        return out

    @staticmethod
    def backward(ctx, d_out):
        dev, enabled, dtype = ctx.amp
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return (*_time_mix_core_grads(ctx, d_out), None)


def _time_mix_core_grads(ctx, d_out):
    """Recompute the elementwise chain under autograd; the WKV's own backward in between."""
    heads, eps, chunk = ctx.cfg
    saved = ctx.saved_tensors
    leaves = [None if t is None else t.detach().requires_grad_() for t in saved[:14]]
    y, bounds = saved[14], [None, *saved[15:]]
    r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b = leaves
    with torch.enable_grad():
        log_w, k, v, a, b = time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
        y_in = y.detach().requires_grad_()
        r_h = r.view(k.shape)
        out = time_mix_post(y_in, r_h, k, v, g, r_k, ln_w, ln_b, eps)
        # Phase 1: through GroupNorm, bonus and gate (frees that part of the graph).
        d_y, d_k, d_v, d_r, d_g, d_rk, d_lnw, d_lnb = torch.autograd.grad(
            out, [y_in, k, v, r, g, r_k, ln_w, ln_b], d_out
        )
        del out, y_in
        d_wkv = wkv.pure_backward(
            (r_h.detach(), log_w.detach(), k.detach(), v.detach(), a.detach(), b.detach(), gate), bounds, d_y, 2,
            chunk, gate is not None and ctx.needs_input_grad[8],
        )
        d_r = d_r + d_wkv[0].reshape(d_r.shape)
        # Phase 2: from the WKV inputs back to the projections.
        pre_leaves = [t for t in (zw, k0, vp, v_first, zv, za, k_k, k_a) if t is not None]
        pre = torch.autograd.grad(
            [log_w, k, v, a, b], pre_leaves, [d_wkv[1], d_k + d_wkv[2], d_v + d_wkv[3], d_wkv[4], d_wkv[5]]
        )
    it = iter(pre)
    d_zw, d_k0, d_vp = next(it), next(it), next(it)
    d_vf, d_zv = (None, None) if zv is None else (next(it), next(it))
    d_za, d_kk, d_ka = next(it), next(it), next(it)
    grads = (d_r, d_zw, d_k0, d_vp, d_vf, d_zv, d_za, d_g, d_wkv[6], d_kk, d_ka, d_rk, d_lnw, d_lnb)
    return tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad))


def time_mix_core(r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b, heads: int, eps: float,
                  chunk_size: int, impl: str = "pure") -> torch.Tensor:
    """The time-mix from its projections to the output projection's input, ``(B, L, C)``.

    ``r``, ``zw``, ``k0``, ``vp``, ``zv``, ``za``, ``g``: ``(B, L, C)``; ``gate`` ``(B, L, H)`` or
    None (sum); ``k_k``, ``k_a``: ``(1, 1, C)``; ``r_k``: ``(H, N)``; ``ln_w``, ``ln_b``: ``(C,)``.
    ``impl="pure"`` uses the memory-lean Function; any other WKV impl runs the same ops under plain
    autograd with ``wkv7_bidirectional(impl=impl)``."""
    if impl == "pure":
        return _TimeMixCore.apply(
            r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b, (heads, eps, chunk_size)
        )
    log_w, k, v, a, b = time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
    r_h = r.view(k.shape)
    y = wkv.wkv7_bidirectional(r_h, log_w, k, v, a, b, gate=gate, chunk_size=chunk_size, impl=impl)
    return time_mix_post(y, r_h, k, v, g, r_k, ln_w, ln_b, eps)
