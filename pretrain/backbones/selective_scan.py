"""Mamba-1 selective scan in pure PyTorch: blocked, work-efficient, stable, with a hand-written backward.

The recurrence (per batch b, channel e, state n; ``Δ`` already biased and softplus'ed)::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t          y_t = Σ_n C_t[n] h_t[n] + D u_t,   y_t *= SiLU(z_t)

How it runs (layout ``(batch, length, channels)``, the layout the mixer produces):

* The sequence is cut into blocks of ``block_tokens`` tokens (sized so that one block's
  ``(B, Lb, E, N)`` working tensors stay small); the state is carried from block to block, so
  memory is bounded whatever the length and there is no Python loop over tokens.
* Inside a block the linear recurrence is an associative scan over the affine maps
  ``h ↦ a h + x``, computed by recursive pairing (reduce pairs, scan the half-length sequence,
  fill the even positions): O(L) work, O(log L) vectorized steps, and a ≤ 16-step loop at the
  coarsest level. Only decays ``a = exp(Δ A) ∈ (0, 1]`` are ever multiplied together, so nothing
  can overflow for long inputs or large Δ (no ``exp`` of a cumulative sum, no division by a
  decay); underflow to 0 is the exact limit.
* The backward pass recomputes each block's states from the saved block-boundary states and runs
  the adjoint recurrence ``g_t = C_t gy_t + a_{t+1} g_{t+1}`` with the same scan, in reverse block
  order, so training memory is O(B·L·E) plus one block's O(B·Lb·E·N) workspace (the
  reference ``selective_scan_ref`` keeps O(B·L·E·N) for autograd).
* Accumulation is in fp32 (fp64 inputs stay fp64); the output is cast back to ``u``'s dtype.

``selective_scan`` optionally dispatches to the ``mamba_ssm`` CUDA kernel (``impl="auto"`` with
CUDA tensors and ``mamba_ssm`` installed); the pure path is the default and the tested one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Elements of one (B, Lb, E, N) working tensor per block: 2^21 fp32 = 8 MiB, a few of them live.
DEFAULT_BLOCK_ELEMENTS = 1 << 21
# The recursive pairing stops when the sequence is this short; the rest is a short Python loop.
_BASE_LENGTH = 16


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _scan_levels(length: int) -> tuple[int, int]:
    """``(levels, padded length)``: halvings until at most ``_BASE_LENGTH`` remain, and the padded size."""
    levels = 0
    while (length + (1 << levels) - 1) >> levels > _BASE_LENGTH:
        levels += 1
    return levels, -(-length // (1 << levels)) << levels


def linear_scan(a: torch.Tensor, x: torch.Tensor, overwrite_x: bool = False) -> torch.Tensor:
    """Inclusive scan of ``h_t = a_t * h_{t-1} + x_t`` along dim 1, ``h_{-1} = 0``.

    ``a`` and ``x`` have the same shape ``(B, L, ...)``; ``a`` should lie in [0, 1] for stability
    (it is only ever multiplied with other decays). Work-efficient recursive pairing; with
    ``overwrite_x`` the result is written into ``x`` when no padding is needed.
    """
    length = a.shape[1]
    levels, padded = _scan_levels(length)
    if padded != length:  # identity maps (a = 1, x = 0) at the end change nothing before them
        pad = padded - length
        a = torch.cat([a, a.new_ones((a.shape[0], pad) + a.shape[2:])], dim=1)
        x = torch.cat([x, x.new_zeros((x.shape[0], pad) + x.shape[2:])], dim=1)
    elif not overwrite_x:
        x = x.clone()
    stack = []
    for _ in range(levels):  # up-sweep: compose neighbouring pairs of affine maps
        stack.append((a, x))
        a_even, a_odd = a[:, 0::2], a[:, 1::2]
        x = torch.addcmul(x[:, 1::2], a_odd, x[:, 0::2])
        a = a_odd * a_even
    for t in range(1, x.shape[1]):  # at most _BASE_LENGTH sequential steps, in place
        x[:, t].addcmul_(a[:, t], x[:, t - 1])
    h = x
    for a_l, x_l in reversed(stack):  # down-sweep: odd positions are known, fill the even ones in place
        x_l[:, 2::2].addcmul_(a_l[:, 2::2], h[:, :-1])
        x_l[:, 1::2] = h
        h = x_l
    return h[:, :length] if padded != length else h


def _block_states(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decays ``exp(Δ A)`` and states ``h`` of one block, ``(b, l, E, N)`` each."""
    decay = delta.unsqueeze(-1) * A
    decay.exp_()
    x = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    if h0 is not None:
        x[:, 0].addcmul_(decay[:, 0], h0)
    return decay, linear_scan(decay, x, overwrite_x=True)


def _block_size(batch: int, channels: int, state: int, block_tokens: int | None) -> int:
    if block_tokens is not None:
        if block_tokens < 1:
            raise ValueError(f"selective scan block_tokens must be >= 1, got {block_tokens}")
        return int(block_tokens)
    tokens = max(16, DEFAULT_BLOCK_ELEMENTS // max(1, batch * channels * state))
    return 1 << (tokens.bit_length() - 1)  # a power of two: no padding inside the scan but in the last block


class _SelectiveScan(torch.autograd.Function):
    """``y_t = Σ_n C_t[n] h_t[n]`` (no D, no gate); inputs already in the compute dtype."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, block: int):  # type: ignore[override]
        batch, length, channels = u.shape
        y = u.new_empty(batch, length, channels)
        h = None
        starts = list(range(0, length, block))
        boundaries = []  # state entering each block, needed to recompute it in backward
        for s in starts:
            e = min(s + block, length)
            boundaries.append(h)
            _, states = _block_states(u[:, s:e], delta[:, s:e], A, B[:, s:e], h)
            y[:, s:e] = torch.einsum("blen,bln->ble", states, C[:, s:e])  # batched matmul, not mul + sum
            h = states[:, -1].clone()
            del states
        ctx.block = block
        ctx.save_for_backward(u, delta, A, B, C, *boundaries[1:])
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor):  # type: ignore[override]
        u, delta, A, B, C, *boundaries = ctx.saved_tensors
        boundaries = [None] + list(boundaries)
        block = ctx.block
        length = u.shape[1]
        gy = gy.to(u.dtype)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = None  # dLoss/d(state leaving the block) through later blocks
        starts = list(range(0, length, block))
        for i in reversed(range(len(starts))):
            s = starts[i]
            e = min(s + block, length)
            h0 = boundaries[i]
            u_b, d_b, B_b, C_b, gy_b = u[:, s:e], delta[:, s:e], B[:, s:e], C[:, s:e], gy[:, s:e]
            decay, states = _block_states(u_b, d_b, A, B_b, h0)
            # Adjoint recurrence g_t = C_t gy_t + a_{t+1} g_{t+1}: a forward scan on the reversed block.
            direct = gy_b.unsqueeze(-1) * C_b.unsqueeze(2)
            if carry is not None:
                direct[:, -1] += carry
            shifted = torch.empty_like(decay)
            shifted[:, 0] = 1.0
            shifted[:, 1:] = decay.flip(1)[:, :-1]
            g = linear_scan(shifted, direct.flip(1), overwrite_x=True).flip(1)
            del shifted, direct
            dC[:, s:e] = torch.einsum("blen,ble->bln", states, gy_b)
            # d/d(Δ A) of exp(Δ A) h_{t-1} is g_t a_t h_{t-1}.
            w = g * decay
            del decay
            carry = w[:, 0].clone()
            w[:, 1:] *= states[:, :-1]
            if h0 is not None:
                w[:, 0] *= h0
            else:
                w[:, 0] = 0.0
            del states
            dA += torch.einsum("blen,ble->en", w, d_b)
            g_b = torch.einsum("blen,bln->ble", g, B_b)  # Σ_n g B
            ddelta[:, s:e] = torch.einsum("blen,en->ble", w, A) + g_b * u_b
            del w
            du[:, s:e] = g_b * d_b
            dB[:, s:e] = torch.einsum("blen,ble->bln", g, d_b * u_b)
            del g
        return du, ddelta, dA, dB, dC, None


def _mamba_ssm_kernel() -> Any:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    block_tokens: int | None = None,
    impl: str = "torch",
) -> torch.Tensor:
    """Mamba-1 selective scan, ``(batch, length, channels)`` layout.

    u, delta, z: ``(B, L, E)``; A: ``(E, N)`` (negative); B, C: ``(B, L, N)``; D, delta_bias: ``(E,)``.
    Returns ``y`` ``(B, L, E)`` in ``u``'s dtype. ``impl``: ``"torch"`` (default, pure PyTorch) or
    ``"auto"`` (the ``mamba_ssm`` CUDA kernel when installed and the tensors are on CUDA).
    """
    if impl not in ("torch", "auto"):
        raise ValueError(f"selective scan impl must be 'torch' or 'auto', got {impl!r}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, length, channels); got {tuple(u.shape)}, "
                         f"{tuple(delta.shape)}")
    batch, length, channels = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, length, state):
            raise ValueError(f"{name} must be (batch, length, d_state)={(batch, length, state)}, got {tuple(t.shape)}")
    if impl == "auto" and u.is_cuda and (kernel := _mamba_ssm_kernel()) is not None:
        out = kernel(
            u.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(), A.float(),
            B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            None if D is None else D.float(), None if z is None else z.transpose(1, 2).contiguous(),
            None if delta_bias is None else delta_bias.float(), delta_softplus,
        )
        return out.transpose(1, 2)
    out_dtype = u.dtype
    dtype = _compute_dtype(u, delta, A, B, C)
    u_c, delta_c = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(dtype)
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    block = _block_size(batch, channels, state, block_tokens)
    y = _SelectiveScan.apply(
        u_c.contiguous(), delta_c.contiguous(), A.to(dtype), B.to(dtype).contiguous(), C.to(dtype).contiguous(), block
    )
    if D is not None:
        y = y + u_c * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(out_dtype)
