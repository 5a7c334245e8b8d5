"""The RWKV-7 WKV operator (generalized delta rule) in chunked, matmul-heavy pure PyTorch.

Per head, with the state ``S`` (value x key, ``S_0 = 0``) and per-step vectors in R^N::

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

RWKV-7 calls it with ``a = -kappa_hat`` and ``b = kappa_hat * alpha``. The decay is passed as its
logarithm ``log_w = log(w)``; RWKV-7's parameterization keeps it in ``[-e^-0.5, 0)`` (the "decay
floor" ``w >= 0.5452``), which is what makes the factorized chunk form below safe in fp32.

Chunked form (per chunk of ``C`` steps with incoming state ``S_0``; ``G`` = inclusive cumulative
sum of ``log_w`` inside the chunk). The pseudo-values ``u_t = S_{t-1} a_t`` solve a unit
lower-triangular system, after which everything is a matmul::

    U   = (I - A_ab)^-1 (A_ak V + (A * e^{G_prev}) S_0^T)                  (WY / UT step)
    Y   = A_rk V + A_rb U + (R * e^{G}) S_0^T
    S_C = S_0 diag(e^{G_C}) + V^T (K * e^{G_C - G}) + U^T (B * e^{G_C - G})

where ``A_xy[t, j] = sum_d x_t y_j e^{G_t - G_j}`` (inclusive ``j <= t`` for r, strict ``j < t``
with ``G_prev`` for a). Everything that does not depend on ``S_0`` is computed for all chunks at
once; the only sequential part is the chunk-to-chunk state recurrence ``S <- S M_c + D_c``
(one small batched matmul per chunk, never a Python loop per token).

Numerical safety: the intra-chunk products are factorized as ``(x e^{G_t - G_m})(y e^{G_m - G_j})``
around the chunk's middle step ``m``, so no factor exceeds ``e^{0.61 * C / 2}`` at the decay
floor (e^4.9 at C = 16, e^19.4 at C = 64); exponentials of cumulative sums over long spans are
never formed. All maths runs in fp32 (fp64 inputs stay fp64); the result is cast back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# log of RWKV-7's smallest decay: w = exp(-e^-0.5 * sigmoid(d)) >= exp(-e^-0.5) = 0.5452.
LOG_DECAY_FLOOR = -math.exp(-0.5)
# Largest chunk for which the factorized form stays well inside fp32 range at the decay floor
# (each factor <= e^{0.61 * 128 / 2} = e^38.8; fp32 overflows at e^88).
MAX_CHUNK_SIZE = 128


def _check_inputs(tensors: dict[str, torch.Tensor], chunk_size: int) -> None:
    ref = tensors["r"]
    if ref.dim() != 4:
        raise ValueError(f"wkv7: r must be (batch, time, heads, head_size), got shape {tuple(ref.shape)}")
    for name, t in tensors.items():
        if t.shape != ref.shape:
            raise ValueError(f"wkv7: {name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like r")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"wkv7: chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")


def _apply_unit_lower_inverse(a: torch.Tensor, rhs: torch.Tensor, size: int) -> torch.Tensor:
    """``(I - a)^-1 rhs`` for strictly lower-triangular ``a`` (nilpotent: ``a^size = 0``).

    Uses ``(I - a)^-1 = (I + a)(I + a^2)(I + a^4)...``: log2(size) batched matmuls, much faster
    on CPU than a batched triangular solve over thousands of 16x16 systems, and exact in exact
    arithmetic because the powers vanish."""
    out = rhs + a @ rhs
    power, span = a, 2
    while span < size:
        power = power @ power
        out = out + power @ out
        span *= 2
    return out


def wkv7(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    chunk_size: int = 16,
) -> torch.Tensor:
    """Causal RWKV-7 WKV scan. All inputs ``(B, T, H, N)``; returns ``y`` ``(B, T, H, N)``.

    ``log_w`` is the log-decay (``<= 0``, and ``>= LOG_DECAY_FLOOR`` for the numerical guarantees);
    any ``T`` works (padded internally to a multiple of ``chunk_size``). Differentiable by autograd.
    """
    _check_inputs({"r": r, "log_w": log_w, "k": k, "v": v, "a": a, "b": b}, chunk_size)
    # Autocast (bf16 training) must not push the chunk maths back to low precision.
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _wkv7_chunked(r, log_w, k, v, a, b, chunk_size)


def _wkv7_chunked(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    out_dtype = r.dtype
    calc = torch.float64 if out_dtype == torch.float64 else torch.float32
    bsz, length, heads, n = r.shape
    c = chunk_size
    pad = (-length) % c
    chunks = (length + pad) // c

    def prep(t: torch.Tensor) -> torch.Tensor:
        # (B, T, H, N) -> (B*H, chunks, C, N) in the compute dtype; padding steps are neutral
        # (log_w = 0 keeps the state, zero k/v/a/b add nothing, zero r reads nothing).
        t = t.to(calc).permute(0, 2, 1, 3)
        if pad:
            t = F.pad(t, (0, 0, 0, pad))
        return t.reshape(bsz * heads, chunks, c, n)

    r_, g, k_, v_, a_, b_ = (prep(t) for t in (r, log_w, k, v, a, b))

    cum = g.cumsum(dim=2)  # G_t, inclusive
    cum_prev = cum - g  # G_{t-1}
    last = cum[:, :, -1:, :]  # G_C
    mid = cum[:, :, (c - 1) // 2 : (c - 1) // 2 + 1, :]  # reference point for the factorization

    # Queries (r at G_t, a at G_{t-1}) and keys (k, b at G_j), factorized around the middle step.
    queries = torch.cat([r_ * torch.exp(cum - mid), a_ * torch.exp(cum_prev - mid)], dim=2)
    keys = torch.cat([k_ * torch.exp(mid - cum), b_ * torch.exp(mid - cum)], dim=2)
    scores = queries @ keys.transpose(-1, -2)  # (BH, chunks, 2C, 2C)
    incl = torch.ones(c, c, dtype=torch.bool, device=r.device).tril()
    strict = incl.tril(-1)
    zero = scores.new_zeros(())
    a_rk = torch.where(incl, scores[..., :c, :c], zero)
    a_rb = torch.where(incl, scores[..., :c, c:], zero)
    a_ak = torch.where(strict, scores[..., c:, :c], zero)
    a_ab = torch.where(strict, scores[..., c:, c:], zero)

    # U = W + A' S_0^T with W, A' independent of the incoming state.
    solved = _apply_unit_lower_inverse(a_ab, torch.cat([a_ak @ v_, a_ * torch.exp(cum_prev)], dim=-1), c)
    w_part, a_state = solved[..., :n], solved[..., n:]
    y_intra = a_rk @ v_ + a_rb @ w_part  # (BH, chunks, C, N)
    q_state = r_ * torch.exp(cum) + a_rb @ a_state  # Y = y_intra + q_state S_0^T

    # Chunk transition S_C = S_0 M + D.
    tail = torch.exp(last - cum)
    k_tail, b_tail = k_ * tail, b_ * tail
    trans = torch.diag_embed(torch.exp(last.squeeze(2))) + a_state.transpose(-1, -2) @ b_tail
    drive = v_.transpose(-1, -2) @ k_tail + w_part.transpose(-1, -2) @ b_tail

    # Sequential part: one (N x N) matmul per chunk. states[c] is the state entering chunk c.
    # unbind (not trans[:, i]): indexing inside the loop would make autograd build a full-size
    # zero gradient per chunk in backward, i.e. quadratic time in the number of chunks.
    state = r_.new_zeros(bsz * heads, n, n)
    states = []
    for i, (d_i, m_i) in enumerate(zip(drive.unbind(1), trans.unbind(1))):
        states.append(state)
        if i + 1 < chunks:
            state = torch.baddbmm(d_i, state, m_i)
    s_in = torch.stack(states, dim=1)  # (BH, chunks, N_v, N_k)
    y = y_intra + q_state @ s_in.transpose(-1, -2)

    y = y.reshape(bsz, heads, chunks * c, n)[:, :, :length].permute(0, 2, 1, 3)
    return y.to(out_dtype).contiguous()


def wkv7_bidirectional(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gate: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> torch.Tensor:
    """AudioRWKV's Bi-WKV: a forward and a time-reversed scan with the same inputs, combined.

    ``y = gate * y_fwd + (1 - gate) * y_bwd`` with ``gate`` ``(B, T, H)`` (per token and head), where
    ``y_bwd = flip(wkv7(flip(inputs)))``; both scans include the current token. ``gate=None`` gives
    the plain sum ``y_fwd + y_bwd`` (then the current token's own term is counted twice).
    Both directions run as one batched call, as the released AudioRWKV code does.
    """
    bsz = r.shape[0]
    both = [torch.cat([t, t.flip(1)], dim=0) for t in (r, log_w, k, v, a, b)]
    y = wkv7(*both, chunk_size=chunk_size)
    y_fwd, y_bwd = y[:bsz], y[bsz:].flip(1)
    if gate is None:
        return y_fwd + y_bwd
    if gate.shape != r.shape[:3]:
        raise ValueError(
            f"wkv7_bidirectional: gate must have shape {tuple(r.shape[:3])}, got {tuple(gate.shape)}"
        )
    gate = gate.unsqueeze(-1).to(y.dtype)
    return gate * y_fwd + (1.0 - gate) * y_bwd
