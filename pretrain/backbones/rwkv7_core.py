"""RWKV-7's time-mix core as one memory-lean autograd.Function (pure PyTorch, CPU and GPU).

From the projections to the output projection's input: decay ``log w = -e^-0.5 sigmoid(zw)``,
in-context rate ``alpha = sigmoid(za)``, removal key ``kappa = normalize(k * k_k)``, key
``k * (1 + (alpha - 1) k_a)``, value residual ``v + (v_first - v) sigmoid(zv)``, the Bi-WKV,
GroupNorm per head, bonus ``(r . (k * r_k)) v`` and the output gate ``g``.

Under plain autograd this chain keeps ~20 C-vectors per token. ``time_mix_core`` keeps only the
tensors it starts from and the WKV's output (8), recomputes the rest in backward and runs a
hand-written backward of the chain (the derivation is inline), so also no autograd graph is built
in backward. Under autocast it recomputes the chain under autograd instead (the GroupNorm then runs
in autocast's precision, which the hand-written path does not replay). Checked against plain
autograd of ``time_mix_pre`` / ``time_mix_post`` in ``tests/test_wkv7_pure.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import wkv7 as wkv
from .layers import autocast_state

_NORM_EPS = 1e-12  # F.normalize's default


def time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads: int):
    """x070's per-token maths from the projections to the WKV inputs ``(log_w, k, v, a, b)``, each
    ``(B, L, H, N)``. ``zw``, ``za``, ``zv``: the decay, in-context rate and value-residual LoRA
    outputs before their sigmoid; ``zv``/``v_first`` None in layer 0 (no value residual)."""
    bsz, length, c = k0.shape
    shape = (bsz, length, heads, c // heads)
    log_w = wkv.LOG_DECAY_FLOOR * torch.sigmoid(zw)  # log w = -e^-0.5 sigmoid(d)
    v = vp if zv is None else vp + (v_first - vp) * torch.sigmoid(zv)
    alpha = torch.sigmoid(za)
    kappa = F.normalize((k0 * k_k).view(shape), dim=-1, p=2.0, eps=_NORM_EPS)
    k = k0 * (1 + (alpha - 1) * k_a)
    return log_w.view(shape), k.view(shape), v.view(shape), -kappa, kappa * alpha.view(shape)


def time_mix_post(y, r, k, v, g, r_k, ln_w, ln_b, eps: float):
    """GroupNorm of the WKV output ``y`` per head, plus the bonus ``(r . (k * r_k)) v``, times the
    gate ``g``. ``y``, ``r``, ``k``, ``v``: ``(B, L, H, N)``; ``g``: ``(B, L, C)``."""
    bsz, length, h, n = y.shape
    y = F.group_norm(y.reshape(bsz * length, h * n), h, ln_w, ln_b, eps).view(bsz, length, h, n)
    bonus = (r * k * r_k).sum(-1, keepdim=True) * v
    return (y + bonus).reshape(bsz, length, h * n) * g


def _pre_values(zw, k0, vp, v_first, zv, za, k_k, k_a, heads: int) -> dict[str, torch.Tensor | None]:
    """``time_mix_pre``'s outputs (same values) plus the intermediates its backward needs; no autograd."""
    bsz, length, c = k0.shape
    shape = (bsz, length, heads, c // heads)
    s_w = torch.sigmoid(zw)
    alpha = torch.sigmoid(za)
    s_v = None if zv is None else torch.sigmoid(zv)
    v = vp if zv is None else (v_first - vp).mul_(s_v).add_(vp)
    kk = (k0 * k_k).view(shape)
    nrm = kk.norm(dim=-1, keepdim=True)
    kappa = kk.div_(nrm.clamp_min(_NORM_EPS))
    fac = (alpha - 1).mul_(k_a).add_(1)
    return {
        "log_w": (s_w * wkv.LOG_DECAY_FLOOR).view(shape), "k": (k0 * fac).view(shape), "v": v.view(shape),
        "a": -kappa, "b": kappa * alpha.view(shape), "s_w": s_w, "alpha": alpha, "s_v": s_v, "kappa": kappa,
        "nrm": nrm, "fac": fac,
    }  # fmt: skip


class _TimeMixCore(torch.autograd.Function):
    # inputs: r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b (tensors), then cfg
    @staticmethod
    def forward(ctx, *args):
        *tensors, cfg = args
        heads, eps, chunk = cfg
        r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b = tensors
        p = _pre_values(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
        r_h = r.view(p["k"].shape)
        y, bounds, kept = wkv.pure_forward(r_h, p["log_w"], p["k"], p["v"], p["a"], p["b"], gate, 2, chunk)
        out = time_mix_post(y, r_h, p["k"], p["v"], g, r_k, ln_w, ln_b, eps)
        wkv_saved, ctx.wkv_layout = wkv.saved_for_backward(bounds, kept)
        ctx.save_for_backward(*tensors, y, *wkv_saved)
        ctx.cfg, ctx.amp = cfg, autocast_state(r)
        return out

    @staticmethod
    def backward(ctx, d_out):
        dev, enabled, dtype = ctx.amp
        if not enabled:
            return (*_core_grads(ctx, d_out), None)
        with torch.autocast(dev, dtype=dtype, enabled=True):
            return (*_core_grads_autograd(ctx, d_out), None)


def _post_grads(d_out, y, r_h, k, v, g, r_k, ln_w, ln_b, eps: float, heads: int):
    """Backward of ``time_mix_post``: ``(d_y, d_r, d_k, d_v, d_g, d_r_k, d_ln_w, d_ln_b)``."""
    bsz, length, c = g.shape
    rows, shape = bsz * length, k.shape
    y2 = y.reshape(rows, c)
    yn, mean, rstd = torch.native_group_norm(y2, ln_w, ln_b, rows, c, 1, heads, eps)
    rk = (r_h * k * r_k).sum(-1, keepdim=True)  # bonus = rk * v
    d_g = (yn.view(shape) + rk * v).view(bsz, length, c).mul_(d_out)
    del yn
    d_pre = (d_out * g).view(shape)  # d(GroupNorm out + bonus)
    d_y, d_ln_w, d_ln_b = torch.ops.aten.native_group_norm_backward(
        d_pre.reshape(rows, c), y2, mean, rstd, ln_w, rows, c, 1, heads, [True, True, True]
    )
    d_rk = (d_pre * v).sum(-1, keepdim=True)
    d_r_k = (r_h * k).mul_(d_rk).sum((0, 1))
    d_r = (k * r_k).mul_(d_rk)
    d_k = (r_h * r_k).mul_(d_rk)
    d_v = d_pre.mul_(rk)
    return d_y.view(shape), d_r, d_k, d_v, d_g, d_r_k, d_ln_w, d_ln_b


def _core_grads(ctx, d_out):
    """Hand-written backward of the core: post-chain, the WKV's own backward, then the pre-chain."""
    heads, eps, chunk = ctx.cfg
    saved = ctx.saved_tensors  # once: checkpointing's saved-tensor hooks allow a single unpack
    r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b, y = saved[:15]
    bounds, kept = wkv.restore_saved(saved[15:], ctx.wkv_layout)
    p = _pre_values(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
    k, v = p["k"], p["v"]
    r_h = r.view(k.shape)
    d_y, d_r, d_k, d_v, d_g, d_r_k, d_ln_w, d_ln_b = _post_grads(d_out, y, r_h, k, v, g, r_k, ln_w, ln_b, eps, heads)
    need_gate = gate is not None and ctx.needs_input_grad[8]
    d_wkv = wkv.pure_backward((r_h, p["log_w"], k, v, p["a"], p["b"], gate), bounds, d_y, 2, chunk, need_gate, kept)
    del d_y
    d_r += d_wkv[0]
    d_k += d_wkv[2]
    d_v += d_wkv[3]
    pre = _pre_grads(p, d_wkv[1], d_k, d_v, d_wkv[4], d_wkv[5], k0, vp, v_first, k_k, k_a)
    grads = (d_r, *pre[:6], d_g, d_wkv[6], *pre[6:], d_r_k, d_ln_w, d_ln_b)
    return tuple(gr.view(t.shape) if need else None for gr, t, need in zip(grads, saved, ctx.needs_input_grad))


def _pre_grads(p, d_log_w, d_k, d_v, d_a, d_b, k0, vp, v_first, k_k, k_a):
    """Backward of ``time_mix_pre``: ``(d_zw, d_k0, d_vp, d_v_first, d_zv, d_za, d_k_k, d_k_a)``."""
    shape, flat = d_k.shape, k0.shape
    alpha, kappa, s_w, s_v = p["alpha"], p["kappa"], p["s_w"], p["s_v"]
    # a = -kappa, b = kappa * alpha
    d_kappa = (d_b * alpha.view(shape)).sub_(d_a)
    d_alpha = (d_b * kappa).view(flat)
    # k = k0 * fac, fac = 1 + (alpha - 1) * k_a
    d_k = d_k.view(flat)
    d_fac = d_k * k0
    d_k_a = (d_fac * (alpha - 1)).sum((0, 1), keepdim=True)
    d_alpha.addcmul_(d_fac, k_a)
    del d_fac
    d_k0 = d_k.mul_(p["fac"])
    # kappa = kk / max(|kk|, eps), kk = k0 * k_k: d_kk = (d_kappa - kappa <d_kappa, kappa>) / |kk|
    nrm = p["nrm"]
    proj = (d_kappa * kappa).sum(-1, keepdim=True).mul_(nrm > _NORM_EPS)
    d_kk = d_kappa.sub_(kappa * proj).div_(nrm.clamp_min(_NORM_EPS)).view(flat)
    d_k_k = (d_kk * k0).sum((0, 1), keepdim=True)
    d_k0.addcmul_(d_kk, k_k)
    del d_kk
    # sigmoids: alpha = s(za), log_w = F s(zw), v = vp + (v_first - vp) s(zv)
    d_za = d_alpha.mul_(alpha).mul_(1 - alpha)
    d_zw = d_log_w.reshape(flat) * s_w * (1 - s_w) * wkv.LOG_DECAY_FLOOR
    d_v = d_v.view(flat)
    if s_v is None:
        return d_zw, d_k0, d_v, None, None, d_za, d_k_k, d_k_a
    d_vf = d_v * s_v
    d_zv = d_v * (v_first - vp) * s_v * (1 - s_v)
    return d_zw, d_k0, d_v.sub_(d_vf), d_vf, d_zv, d_za, d_k_k, d_k_a


def _core_grads_autograd(ctx, d_out):
    """Autocast fallback: recompute the chain under autograd (one layer's graph at a time)."""
    heads, eps, chunk = ctx.cfg
    saved = ctx.saved_tensors
    leaves = [None if t is None else t.detach().requires_grad_() for t in saved[:14]]
    y = saved[14]
    bounds, kept = wkv.restore_saved(saved[15:], ctx.wkv_layout)
    r, zw, k0, vp, v_first, zv, za, g, gate, k_k, k_a, r_k, ln_w, ln_b = leaves
    with torch.enable_grad():
        log_w, k, v, a, b = time_mix_pre(zw, k0, vp, v_first, zv, za, k_k, k_a, heads)
        y_in = y.detach().requires_grad_()
        r_h = r.view(k.shape)
        out = time_mix_post(y_in, r_h, k, v, g, r_k, ln_w, ln_b, eps)
        d_y, d_k, d_v, d_r, d_g, d_rk, d_lnw, d_lnb = torch.autograd.grad(
            out, [y_in, k, v, r, g, r_k, ln_w, ln_b], d_out
        )
        del out, y_in
        d_wkv = wkv.pure_backward(
            (r_h.detach(), log_w.detach(), k.detach(), v.detach(), a.detach(), b.detach(), gate), bounds, d_y, 2,
            chunk, gate is not None and ctx.needs_input_grad[8], kept,
        )
        d_r = d_r + d_wkv[0].reshape(d_r.shape)
        pre_leaves = [t for t in (zw, k0, vp, v_first, zv, za, k_k, k_a) if t is not None]
        pre = iter(torch.autograd.grad(
            [log_w, k, v, a, b], pre_leaves, [d_wkv[1], d_k + d_wkv[2], d_v + d_wkv[3], d_wkv[4], d_wkv[5]]
        ))
    d_zw, d_k0, d_vp = next(pre), next(pre), next(pre)
    d_vf, d_zv = (None, None) if zv is None else (next(pre), next(pre))
    d_za, d_kk, d_ka = next(pre), next(pre), next(pre)
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
