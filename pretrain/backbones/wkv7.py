"""The RWKV-7 WKV operator (generalized delta rule): chunked pure PyTorch with a hand-written backward.

Per head, with the state ``S`` (value x key, ``S_0 = 0``) and per-step vectors in R^N::

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

RWKV-7 calls it with ``a = -kappa_hat`` and ``b = kappa_hat * alpha``. The decay is passed as its
logarithm ``log_w = log(w)``; RWKV-7's parameterization keeps it in ``[-e^-0.5, 0)`` (the "decay
floor" ``w >= 0.5452``), which is what makes the factorized chunk form below safe in fp32.

Chunked form (per chunk of ``C`` steps with incoming state ``S_0``; ``G`` = inclusive cumulative
sum of ``log_w`` inside the chunk, ``G_p = G - log_w``). ``A_xy[t, j] = sum_d x_t y_j e^{G_t - G_j}``
(``j <= t`` for r, ``j < t`` with ``G_p`` for a) and ``T = (I - A_ab)^-1`` (unit lower-triangular)::

    U   = T A_ak V + (T (A e^{G_p})) S_0^T        pseudo-values u_t = S_{t-1} a_t
    Y   = A_rk V + A_rb U + (R e^G) S_0^T
    S_C = S_0 diag(e^{G_C}) + V^T (K e^{G_C - G}) + U^T (B e^{G_C - G})

Everything not involving ``S_0`` is computed for a segment of chunks at once (``SEGMENT_ROWS``
bounds the working set); the chunk-to-chunk state recurrence is two small batched matmuls per chunk. The intra-chunk products are factorized around
the chunk's middle step (``(x e^{G_t - G_m})(y e^{G_m - G_j})``), so no factor exceeds
``e^{0.61 C / 2}`` at the decay floor; exponentials of cumulative sums over long spans are never
formed. All maths runs in fp32 (fp64 inputs stay fp64); the result is cast back.

Inputs are packed into the chunk layout, and results added back to ``(B, T, H, N)``, one block of
segments at a time (``PACK_ROWS``): no full-length packed copy exists in forward or backward.

Training memory: ``_WKV7Chunked`` saves only its inputs and the state entering each segment, and, for
calls of at most ``KEEP_ROWS`` rows (a training step at batch 4 x 512 tokens), the chunk terms of the
forward (~4.9 KB per row), which saves their recomputation (~25% of the WKV's time, ~10% of the step). Its
backward walks the segments last to first: recomputes (or takes) the chunk terms and chunk-boundary states,
runs the state-gradient recurrence backwards, then forms every input gradient with batched matmuls
(the derivation is in the docstring of ``_backward_segment``; tested against autograd of the
per-step recurrence). Plain autograd through the same forward (``impl="autograd"``) keeps every
chunk intermediate (~2x the peak memory, tests/test_wkv7_pure.py).

On CUDA with flash-linear-attention installed, ``impl="auto"`` dispatches to its Triton kernel
(``wkv7_fla.py``); ``impl="pure"`` forces this implementation.
"""

from __future__ import annotations

import functools
import math

import torch

# log of RWKV-7's smallest decay: w = exp(-e^-0.5 * sigmoid(d)) >= exp(-e^-0.5) = 0.5452.
LOG_DECAY_FLOOR = -math.exp(-0.5)
# Largest chunk for which the factorized form stays well inside fp32 range at the decay floor
# (each factor <= e^{0.61 * 128 / 2} = e^38.8; fp32 overflows at e^88).
MAX_CHUNK_SIZE = 128
IMPLS = ("auto", "pure", "autograd", "fla")
# Rows (batch * heads * directions x tokens) of chunk maths done at once; bounds transient memory.
# CPU: 1024 keeps a segment's working set in cache (fastest in bench sweeps); GPU: large segments
# amortise kernel launches.
SEGMENT_ROWS = 1024
SEGMENT_ROWS_CUDA = 1 << 16
# Rows packed into the chunk layout at once (a whole number of segments): bounds the packed copies'
# memory at long lengths while keeping the number of packing ops per call small.
PACK_ROWS = 1 << 14
# Calls of at most this many rows keep their chunk terms (~1244 fp32 values per row at C = 16, N = 64: the
# intra-chunk products, the inverse, the states entering every chunk, the pseudo-values) from the forward for
# the backward instead of recomputing them: ~25% less WKV time, ~10% off issue 16's training step (batch 4 x
# 512 tokens, 12288 rows, ~60 MB per layer). Longer calls recompute, so the memory per token at long lengths
# is unchanged.
KEEP_ROWS = 1 << 14


def _check_inputs(tensors: dict[str, torch.Tensor], chunk_size: int, impl: str) -> None:
    ref = tensors["r"]
    if ref.dim() != 4:
        raise ValueError(f"wkv7: r must be (batch, time, heads, head_size), got shape {tuple(ref.shape)}")
    for name, t in tensors.items():
        if t.shape != ref.shape:
            raise ValueError(f"wkv7: {name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like r")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"wkv7: chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
    if impl not in IMPLS:
        raise ValueError(f"wkv7: impl {impl!r} is not one of {IMPLS}")


def _unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """``(I - a)^-1`` for strictly lower-triangular ``a`` (nilpotent): ``(I + a)(I + a^2)(I + a^4)...``.

    2 log2(C) batched C x C matmuls: on CPU much faster than a triangular solve over thousands of
    16 x 16 systems, and exact in exact arithmetic because the powers vanish."""
    size = a.shape[-1]
    out = a + torch.eye(size, dtype=a.dtype, device=a.device)
    power, span = a, 2
    while span < size:
        power = power @ power
        out = out + out @ power
        span *= 2
    return out


@functools.lru_cache(maxsize=16)
def _score_mask(c: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2C, 2C) 0/1 mask of the score blocks [[A_rk, A_rb], [A_ak, A_ab]]: inclusive for the r rows,
    strict for the a rows."""
    incl = torch.ones(c, c, device=device, dtype=dtype).tril()
    strict = incl.tril(-1)
    return torch.cat([torch.cat([incl, incl], 1), torch.cat([strict, strict], 1)], 0)


def _chunk_terms(ra: torch.Tensor, g: torch.Tensor, kb: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything of the chunked form that does not depend on the incoming states.

    ``ra = [r; a]`` and ``kb = [k; b]`` stacked per chunk ``(chunks, Z, 2C, N)``; ``g``, ``v``
    ``(chunks, Z, C, N)``. Query-side tensors keep the [r; a] row order, key-side ones [k; b]."""
    chunks, z, c, n = g.shape
    big_g = g.cumsum(dim=2)
    mid = big_g[:, :, (c - 1) // 2 : (c - 1) // 2 + 1]  # factorization reference (a constant shift)
    centred = big_g - mid
    e_q = torch.stack([centred, centred - g], dim=2).exp().view(chunks, z, 2 * c, n)  # e^{G-G_m}; e^{G_p-G_m}
    e_k = centred[:, :, None].neg().exp()  # e^{G_m - G}, broadcast over [k; b]
    e_mid = mid.exp()
    e_cm = (big_g[:, :, -1:] - mid).exp()  # e^{G_C - G_m}
    q = ra * e_q
    kq = (kb.view(chunks, z, 2, c, n) * e_k).view(chunks, z, 2 * c, n)
    scores = (q @ kq.transpose(-1, -2)) * _score_mask(c, g.device, g.dtype)  # (Z, n, 2C, 2C)
    tri = _unit_lower_inverse(scores[..., c:, c:])  # (I - A_ab)^-1
    full = q * e_mid  # [r e^G; a e^{G_p}]
    w_part = tri @ (scores[..., c:, :c] @ v)  # U's part independent of S_0
    a_state = tri @ full[:, :, c:]  # U = w_part + a_state S_0^T
    q_state = full[:, :, :c] + scores[..., :c, c:] @ a_state  # Y = y_intra + q_state S_0^T
    return {
        "q": q, "kq": kq, "e_q": e_q, "e_k": e_k, "e_mid": e_mid, "e_cm": e_cm, "scores": scores,
        "tri": tri, "full": full, "tails": kq * e_cm, "w_part": w_part,
        "qa_state": torch.cat([q_state, a_state], dim=2), "e_last": (e_cm * e_mid),  # e^{G_C}: key-column scale
    }  # fmt: skip


def _state_scan(t: dict[str, torch.Tensor], v: torch.Tensor, state: torch.Tensor | None, keep: bool):
    """Run the chunk-to-chunk recurrence from ``state`` (None = zero) over the chunks of ``t``.

    Returns ``(y_state, u, states, state_out)``: ``y_state = q_state S_in^T`` and ``u = w_part + a_state
    S_in^T`` per chunk ``(Z, n, C, N)``, the states entering each chunk ``(Z, n, N, N)`` (when
    ``keep``) and the state leaving the last chunk. Per chunk: one matmul for both products
    with the incoming state, one for ``S <- S diag(e^{G_C}) + [V; U]^T [K; B] e^{G_C - G}``. The loop is
    over chunks, never tokens. ``unbind`` (not ``x[:, i]``): indexing inside the loop would make
    autograd build a full-size zero gradient per chunk on the autograd path."""
    c = v.shape[2]
    qa, w_part, tails = t["qa_state"].unbind(0), t["w_part"].unbind(0), t["tails"].unbind(0)
    e_last, vs = t["e_last"].unbind(0), v.unbind(0)
    y_state, us = [], []
    states = v.new_zeros(len(vs), v.shape[1], v.shape[3], v.shape[3]) if keep else None
    for i in range(len(vs)):
        if state is None:  # S_in = 0
            y_state.append(torch.zeros_like(vs[i]))
            u = w_part[i]
        else:
            prod = qa[i] @ state.transpose(-1, -2)  # (Z, 2C, N_v)
            y_state.append(prod[:, :c])
            u = w_part[i] + prod[:, c:]
        us.append(u)
        if keep and state is not None:
            states[i] = state
        upd = torch.cat([vs[i], u], dim=1).transpose(-1, -2) @ tails[i]
        state = upd if state is None else torch.addcmul(upd, state, e_last[i])
    return torch.stack(y_state), torch.stack(us), states, state


def _segments(z: int, chunks: int, c: int, device: torch.device) -> list[tuple[int, int]]:
    """Chunk ranges processed together: about ``SEGMENT_ROWS`` (batch*heads*dirs x tokens) at a time,
    so the transient memory of the chunk maths stays bounded at any length."""
    rows = SEGMENT_ROWS_CUDA if device.type == "cuda" else SEGMENT_ROWS
    step = max(1, rows // (z * c))
    return [(s, min(s + step, chunks)) for s in range(0, chunks, step)]


def _blocks(z: int, chunks: int, c: int, device: torch.device) -> list[list[tuple[int, int]]]:
    """Segments grouped into blocks of about ``PACK_ROWS`` rows: the unit packed into (and added back
    from) the chunk layout at once, so no full-length packed copy ever exists."""
    segs = _segments(z, chunks, c, device)
    per = max(1, PACK_ROWS // (z * c * (segs[0][1] - segs[0][0])))
    return [segs[i : i + per] for i in range(0, len(segs), per)]


def _forward(src, gate, dirs: int, c: int, y: torch.Tensor, kept: list | None = None) -> list[torch.Tensor | None]:
    """Chunked WKV-7 over segments, differentiable by autograd as written; adds the (combined) output
    into ``y`` ``(B, T, H, N)`` and returns the states entering each segment (None = zero). ``kept``
    (a list, or None): extended with every segment's terms for the backward.

    ``src``: ``(r, log_w, k, v, a, b)`` as ``(B, H, T, N)`` views."""
    bsz, heads, length, _ = src[0].shape
    chunks, z, calc = -(-length // c), dirs * bsz * heads, y.dtype
    scales = _dir_scales(gate, dirs, calc)
    state, bounds = None, []
    for block in _blocks(z, chunks, c, y.device):
        b0, b1 = block[0][0], block[-1][1]
        ra, g, kb, v = _pack_block(src, dirs, c, calc, b0, b1)
        ys = []
        for s0, s1 in block:
            sl = slice(s0 - b0, s1 - b0)
            bounds.append(state)
            terms, state = _segment_forward(ra[sl], g[sl], kb[sl], v[sl], state, keep=kept is not None)
            ys.append(terms[-1])
            if kept is not None:
                kept += terms
        _add_block([y], ys[0] if len(ys) == 1 else torch.cat(ys), dirs, c, b0, scales)
    return bounds


# What the backward of a segment needs from its forward: these chunk terms, then the packed values, the
# pseudo-values, the states entering each chunk and the segment's output (kept, or recomputed in backward).
_KEPT_KEYS = ("q", "kq", "e_q", "e_k", "e_mid", "e_cm", "scores", "tri", "tails", "qa_state", "e_last")
_KEPT_PER_SEGMENT = len(_KEPT_KEYS) + 4


def _segment_forward(ra, g, kb, v, state, keep: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One segment's forward from its incoming ``state`` (None = zero): its terms (``_KEPT_KEYS`` order,
    then ``v, u, states, y``) and the state leaving it. ``keep``: record the states entering each chunk
    (the backward needs them; otherwise that slot is None)."""
    c = v.shape[2]
    t = _chunk_terms(ra, g, kb, v)
    y_state, u, states, state_out = _state_scan(t, v, state, keep=keep)
    y = t["scores"][..., :c, :] @ torch.cat([v, t["w_part"]], dim=2) + y_state
    return [t[key] for key in _KEPT_KEYS] + [v, u, states, y], state_out


def keeps_terms(rows: int) -> bool:
    """Whether a call over ``rows`` (directions x batch x heads x padded tokens) keeps its chunk terms."""
    return rows <= KEEP_ROWS


def saved_for_backward(bounds, kept) -> tuple[list[torch.Tensor], tuple[int, bool]]:
    """``pure_forward``'s ``bounds`` and ``kept`` as a flat tensor list for ``ctx.save_for_backward`` (so
    checkpointing's saved-tensor hooks see them), and the layout ``restore_saved`` splits it with."""
    states = bounds[1:]  # the first segment starts from the zero state (None)
    return [*states, *(kept or [])], (len(states), kept is not None)


def restore_saved(tensors, layout: tuple[int, bool]) -> tuple[list, list | None]:
    """``(bounds, kept)`` back from ``saved_for_backward``'s tensors and layout."""
    num_states, keeps = layout
    return [None, *tensors[:num_states]], (list(tensors[num_states:]) if keeps else None)


def _backward(src, gate, dirs: int, c: int, d_y, bounds, need_gate: bool, kept=None):
    """Gradients w.r.t. ``src`` (``(B, T, H, N)`` in the compute dtype) and the gate's ``(B, T, H, 1)``
    (or None), block by block and segment by segment from the end. ``src``, ``d_y``: ``(B, H, T, N)``.
    ``kept``: the forward's flat list of kept terms, or None to recompute them."""
    bsz, heads, length, n = src[0].shape
    chunks, z, calc = -(-length // c), dirs * bsz * heads, d_y.dtype
    scales = _dir_scales(gate, dirs, calc)
    grads = [torch.zeros(bsz, length, heads, n, dtype=calc, device=x.device) for x in src]
    d_gate = torch.zeros(bsz, length, heads, 1, dtype=calc, device=d_y.device) if need_gate else None
    blocks = _blocks(z, chunks, c, d_y.device)
    seg_bounds = iter(reversed(bounds))
    d_state = None
    for block in reversed(blocks):
        b0, b1 = block[0][0], block[-1][1]
        dys = _pack([d_y], dirs, c, calc, b0, b1, scales)
        packed = _pack_block(src, dirs, c, calc, b0, b1) if kept is None else None
        y = torch.empty_like(dys) if d_gate is not None else None  # per-direction output: the gate's gradient
        d_g, d_v = torch.empty_like(dys), torch.empty_like(dys)
        d_ra, d_kb = (dys.new_empty(b1 - b0, z, 2 * c, n) for _ in range(2))
        for s0, s1 in reversed(block):
            sl = slice(s0 - b0, s1 - b0)
            state = next(seg_bounds)
            if kept is None:
                terms = _segment_forward(*(x[sl] for x in packed), state, keep=True)[0]
            else:
                terms = kept[len(kept) - _KEPT_PER_SEGMENT :]
                del kept[len(kept) - _KEPT_PER_SEGMENT :]
            if y is not None:
                y[sl] = terms[-1]
            d_ra[sl], d_g[sl], d_kb[sl], d_v[sl], d_state = _backward_segment(terms, dys[sl], state, d_state)
            del terms
        del packed, dys
        r_, lw_, k_, v_, a_, b_ = grads
        for dests, packed in (([r_, a_], d_ra), ([lw_], d_g), ([k_, b_], d_kb), ([v_], d_v)):
            _add_block(dests, packed, dirs, c, b0)
        if d_gate is not None:  # d gamma = sum_n d_y (y_fwd - y_bwd)
            _add_block([d_gate], y, dirs, c, b0, [d_y, d_y], diff=True)
    return grads, d_gate


def _backward_segment(terms, d_y, state, d_state) -> tuple[torch.Tensor, ...]:
    """One segment's input gradients and the gradient of its incoming state, from its forward ``terms``
    (``_segment_forward``'s, kept or recomputed).

    ``state``/``d_state``: the state entering the segment and the gradient of the one leaving it
    (None = zero). With ``U = w_part + a_state S_in^T`` (the true pseudo-values):
    * state gradients, backwards over chunks: ``dS_in = dS_out diag(e^{G_C}) + (dS_out b_tail^T) a_state
      + d_y^T q_state``;
    * ``dU = A_rb^T d_y + b_tail dS_out^T``, ``dZ = T^T dU`` (through the unit-triangular solve);
    * score gradients ``[[dA_rk, dA_rb], [dA_ak, dA_ab]] = mask * ([d_y; dZ] [V, U]^T)``;
    * the exponential factors give the log-decay gradient (the centring constant G_m cancels).
    """
    t = dict(zip(_KEPT_KEYS, terms))
    v, u, states = terms[len(_KEPT_KEYS) : len(_KEPT_KEYS) + 3]
    chunks, z, c, n = v.shape
    qa, tails, e_last = t["qa_state"].unbind(0), t["tails"].unbind(0), t["e_last"].unbind(0)
    dys = d_y.unbind(0)
    zero = d_y.new_zeros(z, n, n)
    d_out = torch.empty(chunks, z, n, n, dtype=d_y.dtype, device=d_y.device)
    s_in = states
    d_last = d_y.new_zeros(chunks, z, n)
    for i in range(chunks - 1, -1, -1):
        d_out[i] = zero if d_state is None else d_state
        if d_state is not None:
            d_last[i] = (d_state * s_in[i]).sum(1) * e_last[i].squeeze(1)
        if state is None and i == 0:
            break  # nothing flows into a zero initial state
        # dS_in = [d_y; b_tail dS_out^T]^T [q_state; a_state] + dS_out diag(e^{G_C})
        if d_state is None:
            d_state = dys[i].transpose(-1, -2) @ qa[i][:, :c]
        else:
            left = torch.cat([dys[i], tails[i][:, c:] @ d_state.transpose(-1, -2)], dim=1)
            d_state = torch.addcmul(left.transpose(-1, -2) @ qa[i], d_state, e_last[i])

    tails_all, scores = t["tails"], t["scores"]
    d_tail_state = tails_all @ d_out.transpose(-1, -2)  # [k_tail dS_out^T; b_tail dS_out^T]
    d_u = scores[..., :c, c:].transpose(-1, -2) @ d_y + d_tail_state[:, :, c:]
    d_z = t["tri"].transpose(-1, -2) @ d_u
    yz = torch.cat([d_y, d_z], dim=2)  # (Z, n, 2C, N_v)
    vu = torch.cat([v, u], dim=2)
    d_scores = (yz @ vu.transpose(-1, -2)) * _score_mask(c, v.device, v.dtype)
    d_q = d_scores @ t["kq"] + (yz @ s_in) * t["e_mid"]  # d[r e^{G-G_m}; a e^{G_p-G_m}] incl. the S_in terms
    d_tails = vu @ d_out  # [d k_tail; d b_tail]
    del s_in, d_out
    d_kq = d_scores.transpose(-1, -2) @ t["q"] + d_tails * t["e_cm"]
    d_v = scores[..., :, :c].transpose(-1, -2) @ yz + d_tail_state[:, :, :c]

    d_ra = d_q * t["e_q"]
    d_kb = (d_kq.view(chunks, z, 2, c, n) * t["e_k"]).view(chunks, z, 2 * c, n)
    qd = (t["q"] * d_q).view(chunks, z, 2, c, n)
    d_big_g = qd[:, :, 0] - (t["kq"] * d_kq).view(chunks, z, 2, c, n).sum(2)
    d_prev = qd[:, :, 1]
    d_big_g[:, :, -1] += (tails_all * d_tails).sum(2) + d_last  # G_C: the tails and the state's decay
    # G = cumsum(g), G_p = G - g: dg_s = sum_{t >= s} (dG_t + dG_p,t) - dG_p,s.
    total = d_big_g + d_prev
    d_g = total.sum(2, keepdim=True) - total.cumsum(2) + total - d_prev
    return d_ra, d_g, d_kb, d_v, d_state


# ----------------------------------------------------------------------------------------------
# Layout: (B, H, T, N) per input <-> (chunks, Z = dirs * B * H, P * C, N) in the compute dtype
# (chunk-major, so a segment of chunks is one contiguous slice), one block of chunks at a time.


def _dir_times(length: int, c: int, s0: int, d: int, nch: int) -> tuple[int, int]:
    """Original time steps ``[t0, t1)`` covered by chunks ``[s0, s0 + nch)`` of direction ``d``
    (direction 1 runs over the time-reversed sequence)."""
    j0, j1 = s0 * c, min((s0 + nch) * c, length)
    return (j0, j1) if d == 0 else (length - j1, length - j0)


def _dir_scales(gate, dirs: int, calc: torch.dtype):
    """Per-direction output weights ``(B, H, T, 1)``: ``gate`` and ``1 - gate``, or None (sum / causal)."""
    if dirs == 1 or gate is None:
        return None
    gm = gate.permute(0, 2, 1).unsqueeze(-1).to(calc)
    return [gm, 1 - gm]


def _pack(sources, dirs: int, c: int, calc: torch.dtype, s0: int, s1: int, scales=None) -> torch.Tensor:
    """Chunks ``[s0, s1)`` of the packed layout ``(s1 - s0, Z, P * C, N)`` in the compute dtype.

    ``sources[p]``: ``(B, H, T, N)`` in forward time order, the same for every direction; direction 1
    is time-reversed here; ``scales[d]`` (optional) multiplies direction ``d``. Within a chunk the P
    inputs are stacked along the row axis (e.g. ``[r; a]``), so one matmul serves both. Padding steps
    are neutral (log_w = 0 keeps the state, zero k/v/a/b add nothing, zero r reads nothing)."""
    bsz, heads, length, n = sources[0].shape
    nch = s1 - s0
    out = sources[0].new_empty((nch, dirs, bsz, heads, len(sources), c, n), dtype=calc)
    for d in range(dirs):
        t0, t1 = _dir_times(length, c, s0, d, nch)
        full, rem = divmod(t1 - t0, c)
        for p, x in enumerate(sources):
            x = x[:, :, t0:t1].to(calc)
            x = x if scales is None else x * scales[d][:, :, t0:t1]
            x = x.flip(2) if d == 1 else x
            dest = out[:, d, :, :, p]  # (chunks, B, H, C, N)
            dest[:full] = x[:, :, : full * c].unflatten(2, (full, c)).permute(2, 0, 1, 3, 4)
            if rem:
                dest[full, :, :, :rem] = x[:, :, full * c :]
                dest[full, :, :, rem:] = 0
    return out.view(nch, dirs * bsz * heads, len(sources) * c, n)


def _pack_block(src, dirs: int, c: int, calc: torch.dtype, s0: int, s1: int):
    """``(r, log_w, k, v, a, b)`` -> ``ra, g, kb, v`` for chunks ``[s0, s1)``."""
    r, log_w, k, v, a, b = src
    return tuple(_pack(parts, dirs, c, calc, s0, s1) for parts in ([r, a], [log_w], [k, b], [v]))


def _add_block(dests, packed: torch.Tensor, dirs: int, c: int, s0: int, scales=None, diff=False) -> None:
    """Add packed chunks starting at ``s0`` into ``dests[p]`` ``(B, T, H, N)`` (inverse of ``_pack``),
    summing the directions; ``scales[d]`` ``(B, H, T, 1 or N)`` multiplies direction ``d``. ``diff``: add
    direction 0 minus direction 1, summed over N (``dests`` then ``(B, T, H, 1)``), for the gate's
    gradient. Writes into slices of the base tensors, which autograd can follow (impl="autograd")."""
    bsz, length, heads = dests[0].shape[:3]
    nch, z, pc, n = packed.shape
    packed = packed.view(nch, dirs, bsz, heads, len(dests), c, n)
    for d in range(dirs):
        t0, t1 = _dir_times(length, c, s0, d, nch)
        for p, dest in enumerate(dests):
            x = packed[:, d, :, :, p].permute(1, 2, 0, 3, 4).reshape(bsz, heads, nch * c, n)[:, :, : t1 - t0]
            x = x.flip(2) if d == 1 else x
            if scales is not None:
                x = x * scales[d][:, :, t0:t1]
            if diff:
                x = x.sum(-1, keepdim=True) * (1 - 2 * d)
            dest[:, t0:t1] += x.transpose(1, 2)


def _run_forward(r, log_w, k, v, a, b, gate, dirs: int, c: int, for_backward: bool = False):
    """``(y, bounds, kept)``: the (B, T, H, N) output, the states entering each segment and, when
    ``for_backward`` and the call is small enough (``keeps_terms``), the flat list of kept chunk terms
    (else None)."""
    calc = torch.float64 if r.dtype == torch.float64 else torch.float32
    y = torch.zeros(r.shape, dtype=calc, device=r.device)
    bsz, length, heads, _ = r.shape
    keep = for_backward and keeps_terms(dirs * bsz * heads * -(-length // c) * c)
    kept = [] if keep else None
    bounds = _forward([t.permute(0, 2, 1, 3) for t in (r, log_w, k, v, a, b)], gate, dirs, c, y, kept)
    return y.to(r.dtype), bounds, kept


def pure_forward(r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int):
    """``(y, bounds, kept)``: the pure path's output (B, T, H, N), the states entering each segment
    (the first is None) and the kept chunk terms (a list of tensors, or None where the call is too long
    to keep them), which is all ``pure_backward`` needs besides the inputs. Runs in fp32 even under
    autocast."""
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _run_forward(r, log_w, k, v, a, b, gate, dirs, chunk_size, for_backward=True)


def pure_backward(inputs, bounds, d_y: torch.Tensor, dirs: int, chunk_size: int, need_gate: bool, kept=None):
    """Gradients ``(d_r, d_log_w, d_k, d_v, d_a, d_b, d_gate)`` of the pure path from its inputs
    ``(r, log_w, k, v, a, b, gate)`` and the ``bounds`` and ``kept`` of ``pure_forward``."""
    with torch.autocast(device_type=d_y.device.type, enabled=False):
        return _pure_grads(inputs, bounds, d_y, dirs, chunk_size, need_gate, kept)


def _pure_grads(inputs, bounds, d_y, dirs: int, c: int, need_gate: bool, kept=None):
    *xs, gate = inputs
    calc = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    src = [t.permute(0, 2, 1, 3) for t in xs]
    d_yp = d_y.permute(0, 2, 1, 3).to(calc)
    kept = None if kept is None else list(kept)  # consumed from the end, segment by segment
    grads, d_gate = _backward(src, gate, dirs, c, d_yp, bounds, gate is not None and need_gate, kept)
    out = [gr.to(t.dtype) for gr, t in zip(grads, xs)]
    if d_gate is not None:
        d_gate = d_gate.squeeze(-1).to(gate.dtype)
    return (*out, d_gate)


class _WKV7Chunked(torch.autograd.Function):
    """Causal or bidirectional WKV-7 that saves only its inputs (see ``_backward``)."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int):
        y, bounds, kept = _run_forward(r, log_w, k, v, a, b, gate, dirs, chunk_size, for_backward=True)
        # Segment-boundary states: (N x N) per (batch, head, direction) every SEGMENT_ROWS rows; then the
        # kept chunk terms of short calls.
        wkv_saved, ctx.wkv_layout = saved_for_backward(bounds, kept)
        ctx.save_for_backward(r, log_w, k, v, a, b, gate, *wkv_saved)
        ctx.dirs, ctx.chunk_size = dirs, chunk_size
        return y

    @staticmethod
    def backward(ctx, d_y):
        r, log_w, k, v, a, b, gate, *rest = ctx.saved_tensors
        bounds, kept = restore_saved(rest, ctx.wkv_layout)
        grads = _pure_grads(
            (r, log_w, k, v, a, b, gate), bounds, d_y, ctx.dirs, ctx.chunk_size, ctx.needs_input_grad[6], kept
        )
        return (*grads, None, None)


def _wkv7_pure(r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int, impl: str) -> torch.Tensor:
    inputs = (r, log_w, k, v, a, b)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, gate) if t is not None)
    # Autocast (bf16 training) must not push the chunk maths back to low precision.
    with torch.autocast(device_type=r.device.type, enabled=False):
        if impl == "autograd" or not needs_grad:
            return _run_forward(r, log_w, k, v, a, b, gate, dirs, chunk_size)[0]
        return _WKV7Chunked.apply(r, log_w, k, v, a, b, gate, dirs, chunk_size)


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation ``impl`` runs on ``device``: "fla", "pure" or "autograd"."""
    if impl == "auto" and device.type == "cuda":
        from . import wkv7_fla

        return "fla" if wkv7_fla.available() else "pure"
    return "pure" if impl == "auto" else impl


def _dispatch(r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int, impl: str) -> torch.Tensor:
    impl = resolve_impl(impl, r.device)
    if impl == "fla":
        from . import wkv7_fla

        return wkv7_fla.wkv7_fla(r, log_w, k, v, a, b, gate, dirs)
    return _wkv7_pure(r, log_w, k, v, a, b, gate, dirs, chunk_size, impl)


def wkv7(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    chunk_size: int = 16,
    impl: str = "auto",
) -> torch.Tensor:
    """Causal RWKV-7 WKV scan. All inputs ``(B, T, H, N)``; returns ``y`` ``(B, T, H, N)``.

    ``log_w`` is the log-decay (``<= 0``, and ``>= LOG_DECAY_FLOOR`` for the numerical guarantees);
    any ``T`` works (padded internally to a multiple of ``chunk_size``). ``impl``: "auto" (the fla
    kernel on CUDA when importable, else pure), "pure" (chunked, hand-written backward),
    "autograd" (the same forward under plain autograd; reference for tests), "fla" (the kernel).
    """
    _check_inputs({"r": r, "log_w": log_w, "k": k, "v": v, "a": a, "b": b}, chunk_size, impl)
    return _dispatch(r, log_w, k, v, a, b, None, 1, chunk_size, impl)


def wkv7_bidirectional(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gate: torch.Tensor | None = None,
    chunk_size: int = 16,
    impl: str = "auto",
) -> torch.Tensor:
    """AudioRWKV's Bi-WKV: a forward and a time-reversed scan with the same inputs, combined.

    ``y = gate * y_fwd + (1 - gate) * y_bwd`` with ``gate`` ``(B, T, H)`` (per token and head), where
    ``y_bwd = flip(wkv7(flip(inputs)))``; both scans include the current token. ``gate=None`` gives
    the plain sum ``y_fwd + y_bwd`` (then the current token's own term is counted twice).
    Both directions run as one batched call, as the released AudioRWKV code does.
    """
    _check_inputs({"r": r, "log_w": log_w, "k": k, "v": v, "a": a, "b": b}, chunk_size, impl)
    if gate is not None and gate.shape != r.shape[:3]:
        raise ValueError(
            f"wkv7_bidirectional: gate must have shape {tuple(r.shape[:3])}, got {tuple(gate.shape)}"
        )
    return _dispatch(r, log_w, k, v, a, b, gate, 2, chunk_size, impl)
