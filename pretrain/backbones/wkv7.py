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

Training memory: ``_WKV7Chunked`` saves only its inputs and the state entering each segment. Its
backward walks the segments last to first: recomputes the chunk terms and chunk-boundary states,
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


def _forward(ra, g, kb, v) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Chunked WKV-7 over segments; differentiable by autograd as written.

    Returns ``y`` and the states entering each segment (None = zero)."""
    chunks, z, c, _ = g.shape
    state, ys, bounds = None, [], []
    for s0, s1 in _segments(z, chunks, c, g.device):
        bounds.append(state)
        t = _chunk_terms(ra[s0:s1], g[s0:s1], kb[s0:s1], v[s0:s1])
        y_state, _, _, state = _state_scan(t, v[s0:s1], state, keep=False)
        ys.append(t["scores"][..., :c, :] @ torch.cat([v[s0:s1], t["w_part"]], dim=2) + y_state)
    return (ys[0] if len(ys) == 1 else torch.cat(ys)), bounds


def _backward(ra, g, kb, v, d_y, bounds) -> tuple[torch.Tensor, ...]:
    """Recomputed output and gradients w.r.t. (ra, g, kb, v), segment by segment from the end."""
    chunks, z, c, n = g.shape
    y, d_ra, d_g, d_kb, d_v = (torch.empty_like(x) for x in (d_y, ra, g, kb, v))
    d_state = None
    for (s0, s1), state in reversed(list(zip(_segments(z, chunks, c, g.device), bounds))):
        sl = slice(s0, s1)
        y[sl], d_ra[sl], d_g[sl], d_kb[sl], d_v[sl], d_state = _backward_segment(
            ra[sl], g[sl], kb[sl], v[sl], d_y[sl], state, d_state
        )
    return y, d_ra, d_g, d_kb, d_v


def _backward_segment(ra, g, kb, v, d_y, state, d_state) -> tuple[torch.Tensor, ...]:
    """One segment's recomputed output, input gradients and the gradient of its incoming state.

    ``state``/``d_state``: the state entering the segment and the gradient of the one leaving it
    (None = zero). With ``U = w_part + a_state S_in^T`` (the true pseudo-values):
    * state gradients, backwards over chunks: ``dS_in = dS_out diag(e^{G_C}) + (dS_out b_tail^T) a_state
      + d_y^T q_state``;
    * ``dU = A_rb^T d_y + b_tail dS_out^T``, ``dZ = T^T dU`` (through the unit-triangular solve);
    * score gradients ``[[dA_rk, dA_rb], [dA_ak, dA_ab]] = mask * ([d_y; dZ] [V, U]^T)``;
    * the exponential factors give the log-decay gradient (the centring constant G_m cancels).
    """
    chunks, z, c, n = g.shape
    t = _chunk_terms(ra, g, kb, v)
    y_state, u, states, _ = _state_scan(t, v, state, keep=True)
    y = t["scores"][..., :c, :] @ torch.cat([v, t["w_part"]], dim=2) + y_state
    del y_state
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
    d_scores = (yz @ vu.transpose(-1, -2)) * _score_mask(c, g.device, g.dtype)
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
    return y, d_ra, d_g, d_kb, d_v, d_state


# ----------------------------------------------------------------------------------------------
# Layout: (B, T, H, N) per direction <-> (chunks, Z = dirs * B * H, C, N) in the compute dtype
# (chunk-major, so a segment of chunks is one contiguous slice).


def _pack(sources: list[list[torch.Tensor]], c: int, calc: torch.dtype) -> torch.Tensor:
    """Packed chunk layout ``(chunks, Z = dirs * B * H, P * C, N)`` in the compute dtype, one copy.

    ``sources[p][d]`` is input ``p`` for direction ``d``, ``(B, H, T, N)`` in forward time order;
    direction 1 is time-reversed here. Within a chunk the P inputs are stacked along the row axis
    (e.g. ``[r; a]``), so one matmul serves both. Padding steps are neutral (log_w = 0 keeps the
    state, zero k/v/a/b add nothing, zero r reads nothing)."""
    dirs = len(sources[0])
    bsz, heads, length, n = sources[0][0].shape
    full, rem = divmod(length, c)
    chunks = full + (rem > 0)
    out = sources[0][0].new_empty((chunks, dirs, bsz, heads, len(sources), c, n), dtype=calc)
    for p, per_dir in enumerate(sources):
        for d, x in enumerate(per_dir):
            x = x.flip(2) if d == 1 else x
            dest = out[:, d, :, :, p]  # (chunks, B, H, C, N)
            dest[:full] = x[:, :, : full * c].unflatten(2, (full, c)).permute(2, 0, 1, 3, 4)
            if rem:
                dest[full, :, :, :rem] = x[:, :, full * c :]
                dest[full, :, :, rem:] = 0
    return out.view(chunks, dirs * bsz * heads, len(sources) * c, n)


def _unpack(y: torch.Tensor, dirs: int, bsz: int, length: int, parts: int) -> list[list[torch.Tensor]]:
    """Inverse of ``_pack``: ``[p][d]`` -> ``(B, H, T, N)`` in forward time order."""
    chunks, z, pc, n = y.shape
    c, heads = pc // parts, z // (dirs * bsz)
    y = y.view(chunks, dirs, bsz, heads, parts, c, n)
    out = []
    for p in range(parts):
        x = y[:, :, :, :, p].permute(1, 2, 3, 0, 4, 5).reshape(dirs, bsz, heads, chunks * c, n)[:, :, :, :length]
        out.append([x[0]] + ([x[1].flip(2)] if dirs == 2 else []))
    return out


def _pack_inputs(r, log_w, k, v, a, b, dirs: int, c: int):
    """(B, T, H, N) inputs -> ``ra, g, kb, v`` in the packed layout."""
    calc = torch.float64 if r.dtype == torch.float64 else torch.float32

    def src(t: torch.Tensor) -> list[torch.Tensor]:
        return [t.permute(0, 2, 1, 3)] * dirs

    return (
        _pack([src(r), src(a)], c, calc),
        _pack([src(log_w)], c, calc),
        _pack([src(k), src(b)], c, calc),
        _pack([src(v)], c, calc),
    )


def _combine(parts: list[torch.Tensor], gate: torch.Tensor | None) -> torch.Tensor:
    """(B, H, T, N) per direction -> one (B, H, T, N): causal, gated mix, or sum."""
    if len(parts) == 1:
        return parts[0]
    if gate is None:
        return parts[0] + parts[1]
    gm = gate.permute(0, 2, 1).unsqueeze(-1).to(parts[0].dtype)  # (B, H, T, 1)
    return parts[1] + gm * (parts[0] - parts[1])


def _run_forward(r, log_w, k, v, a, b, gate, dirs: int, c: int):
    """(B, T, H, N) output and the states entering each segment."""
    y, bounds = _forward(*_pack_inputs(r, log_w, k, v, a, b, dirs, c))
    y = _combine(_unpack(y, dirs, r.shape[0], r.shape[1], 1)[0], gate)
    return y.permute(0, 2, 1, 3).to(r.dtype).contiguous(), bounds


def pure_forward(r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int):
    """``(y, bounds)``: the pure path's output (B, T, H, N) and the states entering each segment
    (the first is None), which is all ``pure_backward`` needs besides the inputs. Runs in fp32 even
    under autocast."""
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _run_forward(r, log_w, k, v, a, b, gate, dirs, chunk_size)


def pure_backward(inputs, bounds, d_y: torch.Tensor, dirs: int, chunk_size: int, need_gate: bool):
    """Gradients ``(d_r, d_log_w, d_k, d_v, d_a, d_b, d_gate)`` of the pure path from its inputs
    ``(r, log_w, k, v, a, b, gate)`` and the ``bounds`` of ``pure_forward``."""
    with torch.autocast(device_type=d_y.device.type, enabled=False):
        return _pure_grads(inputs, bounds, d_y, dirs, chunk_size, need_gate)


def _pure_grads(inputs, bounds, d_y, dirs: int, c: int, need_gate: bool):
    r, log_w, k, v, a, b, gate = inputs
    bsz, length = r.shape[:2]
    packed = _pack_inputs(r, log_w, k, v, a, b, dirs, c)
    d_yp = d_y.to(packed[0].dtype).permute(0, 2, 1, 3)  # (B, H, T, N)
    if dirs == 2 and gate is not None:
        gm = gate.to(d_yp.dtype).permute(0, 2, 1).unsqueeze(-1)
        d_f = d_yp * gm
        d_parts = [d_f, d_yp - d_f]
    else:
        d_parts = [d_yp] * dirs
    y, d_ra, d_g, d_kb, d_v = _backward(*packed, _pack([d_parts], c, d_yp.dtype), list(bounds))
    del packed
    d_gate = None
    if gate is not None and need_gate:
        y_f, y_b = _unpack(y, dirs, bsz, length, 1)[0]
        d_gate = (d_yp * (y_f - y_b)).sum(-1).permute(0, 2, 1).to(gate.dtype)
    del y
    grads = {}
    for name, packed_grad in (("ra", d_ra), ("g", d_g), ("kb", d_kb), ("v", d_v)):
        for p, per_dir in enumerate(_unpack(packed_grad, dirs, bsz, length, len(name))):
            total = per_dir[0] + per_dir[1] if dirs == 2 else per_dir[0]
            grads[name[p]] = total.permute(0, 2, 1, 3)
    out = [grads[x].to(t.dtype) for x, t in zip("rgkvab", (r, log_w, k, v, a, b))]
    return (*out, d_gate)


class _WKV7Chunked(torch.autograd.Function):
    """Causal or bidirectional WKV-7 that saves only its inputs (see ``_backward``)."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, a, b, gate, dirs: int, chunk_size: int):
        y, bounds = _run_forward(r, log_w, k, v, a, b, gate, dirs, chunk_size)
        # Segment-boundary states: (N x N) per (batch, head, direction) every SEGMENT_ROWS rows.
        ctx.save_for_backward(r, log_w, k, v, a, b, gate, *[s for s in bounds if s is not None])
        ctx.dirs, ctx.chunk_size = dirs, chunk_size
        return y

    @staticmethod
    def backward(ctx, d_y):
        r, log_w, k, v, a, b, gate, *bounds = ctx.saved_tensors
        grads = _pure_grads(
            (r, log_w, k, v, a, b, gate), [None, *bounds], d_y, ctx.dirs, ctx.chunk_size, ctx.needs_input_grad[6]
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
