"""Mamba-1 selective scan in pure PyTorch: chunk-parallel, cache-sized, stable, with a hand-written backward.

The recurrence (per batch b, channel e, state n; ``Δ`` already biased and softplus'ed)::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t          y_t = Σ_n C_t[n] h_t[n] + D u_t,   y_t *= SiLU(z_t)

How it runs (inputs in the ``(batch, length, channels)`` layout the mixer produces):

* The sequence is cut into ``K`` chunks of ``Q`` tokens (the last one padded with ``Δ = 0``: identity
  steps). The recurrence then steps through the ``Q`` positions of *all* chunks at once: every step
  is a handful of in-place ops on one ``(groups, batch·K, N, E)`` state slab sized to stay in cache
  (E contiguous, so the contractions over ``n`` and ``e`` are plain matrix-vector products). ``K``
  is chosen so the slab holds about ``DEFAULT_SLAB_ELEMENTS`` numbers: the Python loop is ``Q`` steps
  long, not ``L``.
* Chunks start from zero in a first pass; the exact state entering each chunk then follows from a
  short linear recurrence over chunk ends, ``H_k = P_k H_{k-1} + h_k`` with the chunk decay
  ``P_k = exp(A Σ_chunk Δ)`` (solved by :func:`linear_scan`), and a second pass produces the outputs.
  Only decays ``exp(Δ A) ∈ (0, 1]`` are formed and multiplied (no ``exp`` of a growing cumulative sum,
  no division by a decay), so nothing overflows for long inputs or large Δ; underflow to 0 is the
  exact limit. ``exp`` is computed as ``exp2(Δ · A log2 e)`` (several times faster on CPU).
* The backward pass saves only the inputs and the chunk-entry states: it recomputes the states
  chunk-group by chunk-group in a bounded buffer, gets the adjoint entering each chunk from the mirror
  recurrence over chunk starts, and runs ``g_t = C_t gy_t + a_{t+1} g_{t+1}`` backwards through the
  ``Q`` positions. Training memory is O(B·L·E) plus O(B·K·E·N) states.
* Several independent scans with their own ``A`` (the two directions of a bidirectional layer) run
  as one call: ``A`` is ``(G, E, N)`` and the batch is ``G`` groups of equal size, group-major.
* Accumulation is in fp32 (fp64 inputs stay fp64); the output is cast back to ``u``'s dtype.

``selective_scan`` dispatches to the ``mamba_ssm`` CUDA kernel with ``impl="auto"`` (the default)
when the tensors are on CUDA and ``mamba_ssm`` is installed; ``impl="torch"`` forces this path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Chunk length when none is given: the spacing of the states saved for the backward (their memory is
# 1/CHECKPOINT_TOKENS of a full state history) and the length of the backward's recompute buffer. 16 keeps
# that buffer (16 states and decays of a (groups, batch, N, E) slab: 6 MB at SSAMBA-tiny's batch-4 step)
# in cache: the scan's backward takes 1.83 s of that step instead of 2.22 s at 64 (bench/RESULTS.md), for
# 2·E·N/16 more floats per token kept (~10% of what plain autograd keeps for the mixer anyway).
CHECKPOINT_TOKENS = 16
# The lean mixer's (mamba_lean.py, taken for long inputs, where memory runs out first): 1/64 of a history.
LEAN_CHECKPOINT_TOKENS = 64
# Chunks run side by side until one (groups, batch·chunks, N, E) slab holds this many numbers (256 KiB
# in fp32, cache-resident): enough work per op to hide PyTorch's per-op overhead.
SLAB_ELEMENTS = 1 << 16
# The recursive pairing in linear_scan stops when the sequence is this short; the rest is a short loop.
_BASE_LENGTH = 16
_LOG2E = 1.0 / math.log(2.0)


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _softplus_values(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) = max(x, 0) + log1p(exp(-|x|))`` with ``log1p(y)`` as ``log(1 + y) · y / ((1 + y) - 1)``
    (Goldberg's form: within a few ulps of ``log1p``, and ``y`` itself where ``1 + y`` rounds to 1)."""
    y = x.abs().neg_().exp_()
    u = y + 1
    d = u - 1
    return torch.where(d > 0, u.log_().mul_(y).div_(d), y).add_(x.clamp(min=0))


class _Softplus(torch.autograd.Function):
    """fp32 softplus from ``exp`` and ``log``. This torch build's CPU ``softplus`` and ``log1p`` are not
    vectorized: 16 ms for one layer's Δ at batch 4 x 512 tokens (10% of a SSAMBA-tiny step); this takes
    ~5 ms. The backward is ``g · sigmoid(x)``, as softplus's own."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _softplus_values(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus(x)`` (beta 1), through :class:`_Softplus` for fp32 CPU tensors (other dtypes and
    devices: ``F.softplus``). Agrees with ``F.softplus`` to ~2e-7 relative in fp32."""
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return _Softplus.apply(x)
    return F.softplus(x)


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


def plan_chunks(batch: int, length: int, channels: int, state: int, block_tokens: int | None = None,
                checkpoint_tokens: int | None = None) -> tuple[int, int, int]:
    """``(Q, K, J)``: tokens per chunk, chunks (padded to a multiple of J), chunks per backward group.

    ``block_tokens`` fixes ``Q``; otherwise chunks of about ``checkpoint_tokens`` (default
    :data:`CHECKPOINT_TOKENS`) are balanced so that little padding is needed. ``J`` chunks run side by
    side so that one ``(groups, batch·J, N, E)`` slab holds about ``SLAB_ELEMENTS`` numbers (small
    batches otherwise pay Python overhead per position).
    """
    per_row = max(1, batch * channels * state)
    k0 = -(-length // (block_tokens or checkpoint_tokens or CHECKPOINT_TOKENS))
    j = max(1, min(k0, SLAB_ELEMENTS // per_row))
    k = -(-k0 // j) * j
    return (block_tokens or -(-length // k)), k, j


class _Layout:
    """``(Bt, L, F)`` ↔ ``(Q, G, M, F)``: ``chunks`` chunks of ``chunk`` positions (the end padded with
    zeros), ``M = (Bt / G)·chunks``, position-major: one step of the loop reads one contiguous slice."""

    def __init__(self, batch: int, length: int, groups: int, chunk: int, chunks: int):
        self.batch, self.length, self.groups, self.chunk, self.chunks = batch, length, groups, chunk, chunks
        self.m = batch // groups * chunks

    def split(self, t: torch.Tensor) -> torch.Tensor:
        pad = self.chunks * self.chunk - self.length
        if pad:
            t = F.pad(t, (0, 0, 0, pad))
        f = t.shape[-1]
        return t.reshape(self.batch, self.chunks, self.chunk, f).permute(2, 0, 1, 3).reshape(
            self.chunk, self.groups, self.m, f).contiguous()

    def merge(self, t: torch.Tensor) -> torch.Tensor:
        f = t.shape[-1]
        out = t.reshape(self.chunk, self.batch, self.chunks, f).permute(1, 2, 0, 3)
        return out.reshape(self.batch, self.chunks * self.chunk, f)[:, : self.length]

    def by_chunk(self, t: torch.Tensor) -> torch.Tensor:
        """``(G, M, N, E)`` slab → ``(Bt, K, N, E)``, chunk index on dim 1 (a view)."""
        return t.view(self.batch, self.chunks, *t.shape[2:])


class _GroupLayout:
    """``(Bt, L, F)`` ↔ ``(K/J, Q, G, b·J, F)``: backward groups of ``J`` consecutive chunks."""

    def __init__(self, batch: int, length: int, groups: int, chunk: int, chunks: int, per_group: int):
        self.batch, self.length, self.groups = batch, length, groups
        self.chunk, self.chunks, self.j = chunk, chunks, per_group
        self.n = chunks // per_group

    def split(self, t: torch.Tensor) -> torch.Tensor:
        pad = self.chunks * self.chunk - self.length
        if pad:
            t = F.pad(t, (0, 0, 0, pad))
        f = t.shape[-1]
        t = t.reshape(self.batch, self.n, self.j, self.chunk, f).permute(1, 3, 0, 2, 4)
        return t.reshape(self.n, self.chunk, self.groups, self.batch // self.groups * self.j, f).contiguous()

    def merge(self, t: torch.Tensor) -> torch.Tensor:
        f = t.shape[-1]
        out = t.reshape(self.n, self.chunk, self.batch, self.j, f).permute(2, 0, 3, 1, 4)
        return out.reshape(self.batch, self.chunks * self.chunk, f)[:, : self.length]


_WORKSPACE: dict[str, torch.Tensor] = {}


def _workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reused scratch buffer: fresh multi-MB allocations cost a page fault per 4 KiB on first touch,
    which made the per-position loops several times slower. One buffer per name is kept (the latest
    shape); callers never hold two uses of one name at once."""
    buf = _WORKSPACE.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = _WORKSPACE[name] = like.new_empty(shape)
    return buf


def _decay(d_q: torch.Tensor, a2t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(Δ A)`` for one position of every chunk: ``(G, M, E) × (G, 1, N, E) → (G, M, N, E)``."""
    return torch.mul(d_q.unsqueeze(2), a2t, out=out).exp2_()


def _local_ends(d, x, Bq, a2t) -> torch.Tensor:
    """States at the end of each chunk when every chunk starts from zero, ``(G, M, N, E)``."""
    q_len, groups, m, channels = d.shape
    h = d.new_zeros(groups, m, a2t.shape[2], channels)
    a = torch.empty_like(h)
    for q in range(q_len):
        h.mul_(_decay(d[q], a2t, a)).addcmul_(Bq[q].unsqueeze(-1), x[q].unsqueeze(2))
    return h


def _entry_states(lay: _Layout, d, x, Bq, a2t) -> torch.Tensor | None:
    """Exact state entering each chunk (None for a single chunk), ``(G, M, N, E)``."""
    if lay.chunks == 1:
        return None
    ends = lay.by_chunk(_local_ends(d, x, Bq, a2t))
    decay = lay.by_chunk(torch.mul(d.sum(0).unsqueeze(2), a2t).exp2_())
    full = linear_scan(decay, ends, overwrite_x=True)  # H_k = P_k H_{k-1} + h_k
    h_in = torch.zeros_like(full)
    h_in[:, 1:] = full[:, :-1]
    return h_in.view(lay.groups, lay.m, *h_in.shape[2:])


def chunked_scan_forward(u, delta, A, B, C, plan: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, starts)``: ``y_t = Σ_n C_t[n] h_t[n]`` (no D, no gate) and the state entering each backward
    chunk, ``(Bt, K, N, E)`` (all :func:`chunked_scan_backward` needs besides the inputs).

    Inputs already in the compute dtype. u, delta: ``(Bt, L, E)``; A: ``(G, E, N)``; B, C: ``(Bt, L, N)``;
    ``plan = (Q, K, J)`` from :func:`plan_chunks`.
    """
    q_b, k_b, j = plan
    batch, length, channels = u.shape
    groups, state = A.shape[0], A.shape[2]
    k_f = j  # forward chunks side by side: as many as the backward runs, each K/J backward chunks long
    lay = _Layout(batch, length, groups, k_b // k_f * q_b, k_f)
    a2t = (A * _LOG2E).transpose(1, 2).unsqueeze(1).contiguous()  # (G, 1, N, E), E contiguous
    d, x, Bq, Cq = lay.split(delta), lay.split(delta * u), lay.split(B), lay.split(C)
    h_in = _entry_states(lay, d, x, Bq, a2t)
    h = d.new_zeros(groups, lay.m, state, channels) if h_in is None else h_in.clone()
    starts = d.new_empty(batch, k_f, k_b // k_f, state, channels)  # state entering each backward chunk
    h_rows, h_mat = lay.by_chunk(h), h.view(-1, state, channels)
    gm = h_mat.shape[0]
    a = torch.empty_like(h)
    y = d.new_empty(lay.chunk, groups, lay.m, channels)  # not a workspace: the result may be a view of it
    # Per-position views made once (unbind) rather than by indexing inside the loop: fewer Python ops.
    steps = zip(d.unsqueeze(3).unbind(0), Bq.unsqueeze(-1).unbind(0), x.unsqueeze(3).unbind(0),
                Cq.view(-1, gm, 1, state).unbind(0), y.view(-1, gm, 1, channels).unbind(0))
    for q, (d_q, b_q, x_q, c_q, y_q) in enumerate(steps):
        if q % q_b == 0:
            starts[:, :, q // q_b] = h_rows
        h.mul_(torch.mul(d_q, a2t, out=a).exp2_()).addcmul_(b_q, x_q)
        torch.bmm(c_q, h_mat, out=y_q)
    return lay.merge(y), starts.view(batch, k_b, state, channels)


def chunked_scan_backward(u, delta, A, B, C, starts, plan: tuple[int, int, int], gy: torch.Tensor,
                          with_output: bool = False):
    """Gradients ``(du, dΔ, dA, dB, dC)`` of :func:`chunked_scan_forward`'s ``y`` for the upstream ``gy``;
    ``with_output`` appends ``y`` itself, from the states the backward recomputes anyway (one batched
    matmul per chunk group: cheaper than keeping ``y`` from the forward when memory is what counts)."""
    q_b, k_b, j = plan
    batch, length, channels = u.shape
    groups, state = A.shape[0], A.shape[2]
    lay = _GroupLayout(batch, length, groups, q_b, k_b, j)
    at = A.transpose(1, 2).unsqueeze(1).contiguous()
    a2t = at * _LOG2E
    ins = [lay.split(t) for t in (delta, delta * u, B, C, gy.to(u.dtype))]
    outs = [torch.empty_like(t) for t in ins[:4]]  # dΔ (decay part), d(Δu), dB, dC
    ys = torch.empty_like(ins[0]) if with_output else None
    acc = ins[0].new_zeros(groups, ins[0].shape[3], state, channels)
    carry = None
    for i in reversed(range(lay.n)):  # later chunks first: their adjoint flows into earlier ones
        h0 = starts[:, i * j : (i + 1) * j].reshape(groups, -1, state, channels)
        carry = _backward_group([t[i] for t in ins], at, a2t, h0, carry, j, [t[i] for t in outs], acc,
                                None if ys is None else ys[i])
    dd, dx, dB, dC = (lay.merge(t) for t in outs)
    dA = acc.sum(1).transpose(1, 2)
    grads = (dx * delta, dd + dx * u, dA, dB, dC)
    return grads if ys is None else (*grads, lay.merge(ys))


class _ChunkedScan(torch.autograd.Function):
    """:func:`chunked_scan_forward` with :func:`chunked_scan_backward` as its backward."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, q_b: int, k_b: int, j: int):  # type: ignore[override]
        ctx.plan = (q_b, k_b, j)
        y, starts = chunked_scan_forward(u, delta, A, B, C, ctx.plan)
        ctx.save_for_backward(u, delta, A, B, C, starts)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor):  # type: ignore[override]
        u, delta, A, B, C, starts = ctx.saved_tensors
        return (*chunked_scan_backward(u, delta, A, B, C, starts, ctx.plan, gy), None, None, None)


def _group_entry_adjoints(d, Cq, gyq, a2t, decays, carry, j) -> torch.Tensor:
    """dLoss/d(state at the end of each of the group's J chunks), ``(G, b·J, N, E)``.

    Local adjoints from zero give each chunk's "leaving its start" adjoint ``g_k``; then
    ``G_k = g_{k+1} + P_{k+1} G_{k+1}`` from the last chunk, whose value is the carry from later groups.
    """
    q_len, groups, m, channels = d.shape
    state = a2t.shape[2]
    g_in = d.new_zeros(groups, m // j, j, state, channels)
    if carry is not None:
        g_in[:, :, j - 1] = carry
    if j == 1:
        return g_in.view(groups, m, state, channels)
    g = d.new_zeros(groups, m, state, channels)
    for q in reversed(range(q_len)):
        g.addcmul_(Cq[q].unsqueeze(-1), gyq[q].unsqueeze(2)).mul_(decays[q])
    g = g.view(groups, m // j, j, state, channels)
    decay = torch.mul(d.sum(0).unsqueeze(2), a2t).exp2_().view(groups, m // j, j, state, channels)
    for k in range(j - 2, -1, -1):
        torch.addcmul(g[:, :, k + 1], decay[:, :, k + 1], g_in[:, :, k + 1], out=g_in[:, :, k])
    return g_in.view(groups, m, state, channels)


def _backward_group(ins, at, a2t, h0, carry, j, outs, acc, y=None) -> torch.Tensor:
    """One group of J consecutive chunks: recompute its states (and, given ``y``, write the scan's output
    ``C·h`` there), run the adjoint backwards through its positions, write ``(dΔ_decay, d(Δu), dB, dC)``
    into ``outs``, add Σ Δ ⊙ dLoss/d(ΔA) into ``acc``; returns the adjoint leaving the group's first
    chunk backwards, ``(G, b, N, E)``."""
    d, x, Bq, Cq, gyq = ins
    dd, dx, dB, dC = outs
    q_len, groups, m, channels = d.shape
    state = at.shape[2]
    gm = groups * m
    hs = _workspace("states", (q_len, groups, m, state, channels), d)  # states and decays of every position
    decays = _workspace("decays", hs.shape, d)
    prev = h0
    for d_q, b_q, x_q, a_q, h_q in zip(d.unsqueeze(3).unbind(0), Bq.unsqueeze(-1).unbind(0),
                                       x.unsqueeze(3).unbind(0), decays.unbind(0), hs.unbind(0)):
        torch.mul(torch.mul(d_q, a2t, out=a_q).exp2_(), prev, out=h_q).addcmul_(b_q, x_q)
        prev = h_q
    if y is not None:
        torch.bmm(Cq.reshape(-1, 1, state), hs.view(-1, state, channels), out=y.view(-1, 1, channels))
    g = _group_entry_adjoints(d, Cq, gyq, a2t, decays, carry, j)
    g_mat, g_t = g.view(gm, state, channels), g.view(gm, state, channels).transpose(1, 2)
    w = torch.empty_like(g)
    prevs = (h0, *hs.unbind(0)[:-1])
    steps = zip(Cq.unsqueeze(-1).unbind(0), gyq.unsqueeze(3).unbind(0), gyq.view(-1, gm, 1, channels).unbind(0),
                hs.view(-1, gm, state, channels).transpose(2, 3).unbind(0), dC.view(-1, gm, 1, state).unbind(0),
                Bq.view(-1, gm, 1, state).unbind(0), dx.view(-1, gm, 1, channels).unbind(0),
                x.view(-1, gm, 1, channels).unbind(0), dB.view(-1, gm, 1, state).unbind(0), decays.unbind(0),
                prevs, d.unsqueeze(3).unbind(0), dd.unbind(0))
    for c_q, gy_q, gy_row, h_t, dc_q, b_row, dx_q, x_row, db_q, a_q, h_prev, d_q, dd_q in reversed(list(steps)):
        g.addcmul_(c_q, gy_q)  # g = dLoss/dh_q
        # Contractions over e as (1 x E) @ (E x N) on the transposed state: MKL's fast batched form.
        torch.bmm(gy_row, h_t, out=dc_q)
        torch.bmm(b_row, g_mat, out=dx_q)
        torch.bmm(x_row, g_t, out=db_q)
        g.mul_(a_q)  # a_q ⊙ g: the adjoint leaving position q backwards
        torch.mul(g, h_prev, out=w)  # dLoss/d(Δ_q A) = g_q ⊙ a_q ⊙ h_{q-1}
        acc.addcmul_(w, d_q)
        torch.sum(w.mul_(at), dim=2, out=dd_q)
    return g.view(groups, m // j, j, state, channels)[:, :, 0]


def _mamba_ssm_kernel() -> Any:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore
    except ImportError:
        return None
    return selective_scan_fn


def _per_group(p: torch.Tensor | None, groups: int, channels: int, name: str) -> torch.Tensor | None:
    """A per-channel parameter as ``(G, E)``: ``(E,)`` is shared by every group."""
    if p is None:
        return None
    if p.shape == (channels,):
        return p.expand(groups, channels)
    if p.shape != (groups, channels):
        raise ValueError(f"{name} must be (channels={channels},) or (groups={groups}, channels), "
                         f"got {tuple(p.shape)}")
    return p


def scan_kernel_applies(impl: str, t: torch.Tensor) -> bool:
    """Whether :func:`selective_scan` with this ``impl`` dispatches ``t``'s scan to the ``mamba_ssm`` kernel."""
    return impl == "auto" and t.is_cuda and _mamba_ssm_kernel() is not None


def _kernel_scan(kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """mamba_ssm's ``selective_scan_fn`` (``(B, E, L)`` layout, one ``A`` per call), group by group."""
    groups = A.shape[0]
    # The kernel wants delta, B, C and z in u's dtype (under autocast they can differ).
    delta, B, C = (t.to(u.dtype) for t in (delta, B, C))
    outs = []
    for i, rows in enumerate(zip(*(t.chunk(groups) for t in (u, delta, B, C)))):
        u_i, d_i, b_i, c_i = (t.transpose(1, 2).contiguous() for t in rows)
        z_i = None if z is None else z.chunk(groups)[i].to(u.dtype).transpose(1, 2).contiguous()
        outs.append(kernel(
            u_i, d_i, A[i].float(), b_i, c_i, None if D is None else D[i].float(), z_i,
            None if delta_bias is None else delta_bias[i].float(), delta_softplus,
        ).transpose(1, 2))
    return torch.cat(outs)


@dataclass
class ScanTerms:
    """The selective scan's operands in the compute dtype, and the terms around the chunked recurrence:
    ``y = (scan(u, Δ, A, B, C) + D u) · gate`` (``D`` as ``(batch, 1, E)`` rows, ``gate = SiLU(z)``; None when
    absent)."""

    u: torch.Tensor
    delta: torch.Tensor  # biased and softplus'ed when asked
    A: torch.Tensor  # (G, E, N)
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    gate: torch.Tensor | None

    def plain(self) -> tuple[torch.Tensor, ...]:
        """The tensors autograd may flow through, in a fixed order (absent terms left out)."""
        return tuple(t for t in (self.u, self.delta, self.A, self.B, self.C, self.D, self.gate) if t is not None)

    def pre_gate(self, y: torch.Tensor) -> torch.Tensor:
        """The recurrence's output plus the D skip."""
        return y if self.D is None else torch.addcmul(y, self.u, self.D)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """The recurrence's output with the D skip and the SiLU(z) gate applied."""
        y = self.pre_gate(y)
        return y if self.gate is None else y * self.gate


def scan_terms(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> ScanTerms:
    """:class:`ScanTerms` of a pure-PyTorch scan, for the arguments of :func:`selective_scan` (``A`` as
    ``(G, E, N)``, ``D`` and ``delta_bias`` as ``(G, E)``): the part of the scan autograd records."""
    batch, _, channels = u.shape
    groups = A.shape[0]
    dtype = _compute_dtype(u, delta, A, B, C)

    def rows(p: torch.Tensor) -> torch.Tensor:  # (G, E) -> (batch, 1, E), group-major
        return p.to(dtype).unsqueeze(1).expand(groups, batch // groups, channels).reshape(batch, 1, channels)

    u_c, delta_c = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta_c = delta_c + rows(delta_bias)
    if delta_softplus:
        delta_c = softplus(delta_c)
    return ScanTerms(
        u_c.contiguous(), delta_c.contiguous(), A.to(dtype), B.to(dtype).contiguous(), C.to(dtype).contiguous(),
        None if D is None else rows(D), None if z is None else F.silu(z.to(dtype)),
    )


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
    impl: str = "auto",
) -> torch.Tensor:
    """Mamba-1 selective scan, ``(batch, length, channels)`` layout.

    u, delta, z: ``(B, L, E)``; B, C: ``(B, L, N)``. A: ``(E, N)`` (negative), or ``(G, E, N)`` for
    ``G`` independent scans batched together (the batch is ``G`` equal groups, group-major); D,
    delta_bias: ``(E,)`` or ``(G, E)``. ``block_tokens``: tokens per chunk (None: sized from a cache
    budget). Returns ``y`` ``(B, L, E)`` in ``u``'s dtype. ``impl``: ``"auto"`` (the ``mamba_ssm`` CUDA
    kernel when installed and the tensors are on CUDA, else pure PyTorch) or ``"torch"`` (always pure).
    """
    if impl not in ("torch", "auto"):
        raise ValueError(f"selective scan impl must be 'torch' or 'auto', got {impl!r}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, length, channels); got {tuple(u.shape)}, "
                         f"{tuple(delta.shape)}")
    batch, length, channels = u.shape
    A = A.unsqueeze(0) if A.dim() == 2 else A
    if A.dim() != 3 or A.shape[1] != channels or batch % A.shape[0]:
        raise ValueError(f"A must be (channels={channels}, d_state) or (groups dividing batch={batch}, "
                         f"channels, d_state), got {tuple(A.shape)}")
    groups, state = A.shape[0], A.shape[2]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, length, state):
            raise ValueError(f"{name} must be (batch, length, d_state)={(batch, length, state)}, got {tuple(t.shape)}")
    if block_tokens is not None and block_tokens < 1:
        raise ValueError(f"selective scan block_tokens must be >= 1, got {block_tokens}")
    D = _per_group(D, groups, channels, "D")
    delta_bias = _per_group(delta_bias, groups, channels, "delta_bias")
    if scan_kernel_applies(impl, u):
        return _kernel_scan(_mamba_ssm_kernel(), u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    terms = scan_terms(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y = _ChunkedScan.apply(terms.u, terms.delta, terms.A, terms.B, terms.C,
                           *plan_chunks(batch, length, channels, state, block_tokens))
    return terms.finish(y).to(u.dtype)
