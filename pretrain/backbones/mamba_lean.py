"""The bidirectional Mamba mixer's middle as one autograd node that keeps little for backward.

Between ``in_proj`` and ``out_proj`` a mixer makes about a dozen ``(L, E)``-sized tensors per direction
(conv output, its SiLU, Δ before and after softplus, the concatenated scan inputs, D·u, SiLU(z), the
gated output...). Plain autograd keeps nearly all of them: ~1 MB per token for SSAMBA-tiny, 6-7x
ViT-tiny's training memory. Only the selective scan's forward is expensive to redo; everything that
feeds it is a few elementwise passes and two thin projections.

So :class:`_LeanScanBlock` saves the ``in_proj`` output ``xz`` (2E per token), the scan's output
before the gate (E per token and direction) and the scan's chunk-entry states (``1/Q`` of a state
history), and its backward:

1. recomputes the scan's inputs from ``xz`` with autograd on (the very code the forward ran),
2. runs the scan's own hand-written backward from the saved chunk states (no second scan forward),
3. hands the gradients of the scan's inputs back through the recomputed graph.

Results equal plain autograd's (``tests/test_mamba.py`` checks values and gradients in fp64).

The price is the recompute: ~20% more time per mixer, 10-15% per SSAMBA-tiny step (bench/RESULTS.md).
So ``lean_backward="auto"`` (the default) takes this path only for calls of at least
:data:`AUTO_MIN_ELEMENTS` ``batch · length · E`` numbers, where plain autograd would keep over ~120 MB for the
one mixer (~2.9 GB over SSAMBA-tiny's 24 layers): there memory is what runs out first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .layers import autocast_state
from .selective_scan import ScanTerms, chunked_scan_backward, chunked_scan_forward

# "auto" goes lean from this many batch · length · E numbers per mixer call: ~3.9k tokens of SSAMBA-tiny (E = 384),
# ~1k of SSAMBA-base, where plain autograd keeps ~20 floats per number, ~120 MB, for the one mixer.
AUTO_MIN_ELEMENTS = 1_500_000


def use_lean_backward(mode: str, xz: torch.Tensor, kernel: bool) -> bool:
    """Whether a training call takes :func:`lean_scan_block` (never with the ``mamba_ssm`` kernel, which keeps
    its own lean state); ``xz`` is the ``in_proj`` output, ``(B, L, 2E)``."""
    if kernel or mode == "never":
        return False
    return mode == "always" or xz.numel() // 2 >= AUTO_MIN_ELEMENTS


def merge_directions(y: torch.Tensor, directions: int, scale: float) -> torch.Tensor:
    """``(G·B, L, E) → (B, L, E)``: the forward rows plus the backward rows flipped back, times ``scale``."""
    if directions == 1:
        return y
    y_f, y_b = y.chunk(2)
    out = y_f + y_b.flip(1)
    return out * scale if scale != 1.0 else out


def _merge_grad(g: torch.Tensor, directions: int, scale: float) -> torch.Tensor:
    """The vector-Jacobian product of :func:`merge_directions` (it is linear)."""
    if directions == 1:
        return g
    g = g * scale if scale != 1.0 else g
    return torch.cat([g, g.flip(1)])


class _LeanScanBlock(torch.autograd.Function):
    """``out_proj(merge(scan terms of xz)))``; ``make_terms(xz) -> (ScanTerms, plan)`` rebuilds the scan's inputs."""

    @staticmethod
    def forward(ctx: Any, make_terms: Callable, merge: tuple[int, float], xz: torch.Tensor,  # type: ignore[override]
                weight: torch.Tensor, bias: torch.Tensor | None, *params: torch.Tensor) -> torch.Tensor:
        ctx.make_terms, ctx.merge, ctx.amp = make_terms, merge, autocast_state(xz)
        with torch.no_grad():
            terms, plan = make_terms(xz)
            y, starts = chunked_scan_forward(terms.u, terms.delta, terms.A, terms.B, terms.C, plan)
            merged = merge_directions(terms.finish(y), *merge)
            out = F.linear(merged.to(xz.dtype), weight, bias)
        ctx.save_for_backward(xz, starts, weight, bias, *params)
        return out

    @staticmethod
    def backward(ctx: Any, g_out: torch.Tensor):  # type: ignore[override]
        xz, starts, weight, bias, *params = ctx.saved_tensors
        dev, enabled, dtype = ctx.amp
        needs = ctx.needs_input_grad[2:]
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            g_merged = g_out @ weight  # out_proj's input gradient
            with torch.enable_grad():
                leaf = xz.detach().requires_grad_(needs[0])
                # The recomputed graph must start from the leaf, not the saved xz, to reach the caller's xz.
                terms, plan = ctx.make_terms(leaf)
        g_gated = _merge_grad(g_merged, *ctx.merge).to(terms.u.dtype)
        gate = None if terms.gate is None else terms.gate.detach()
        g_pre = g_gated if gate is None else g_gated * gate
        detached = [t.detach() for t in (terms.u, terms.delta, terms.A, terms.B, terms.C)]
        *grads, y = chunked_scan_backward(*detached, starts, plan, g_pre, with_output=True)
        y_pre = terms.pre_gate(y)  # backward runs without grad: no graph is built here
        if terms.D is not None:  # y_pre = y + D u: D's rows and u get their shares here
            grads[0] = torch.addcmul(grads[0], g_pre, terms.D.detach())
            grads.append((g_pre * detached[0]).sum(1, keepdim=True))
        if gate is not None:
            grads.append(g_gated * y_pre)
        d_weight = d_bias = None
        if needs[1]:  # out_proj's weight gradient needs its input: the merged output, rebuilt here
            merged = merge_directions(y_pre if gate is None else y_pre * gate, *ctx.merge)
            with torch.autocast(dev, dtype=dtype, enabled=enabled):
                d_weight = g_out.flatten(0, -2).transpose(0, 1) @ merged.to(xz.dtype).flatten(0, -2)
        if bias is not None and needs[2]:
            d_bias = g_out.flatten(0, -2).sum(0)
        inputs = ([leaf] if needs[0] else []) + [p for p, need in zip(params, needs[3:]) if need]
        found = iter(torch.autograd.grad(terms.plain(), inputs, grads, allow_unused=True) if inputs else ())
        d_xz = next(found) if needs[0] else None
        return (None, None, d_xz, d_weight, d_bias, *(next(found) if need else None for need in needs[3:]))


def lean_scan_block(make_terms: Callable[[torch.Tensor], tuple[ScanTerms, tuple[int, int, int]]],
                    xz: torch.Tensor, out_proj: torch.nn.Linear, params: list[torch.Tensor], directions: int,
                    scale: float) -> torch.Tensor:
    """``out_proj(merge_directions(make_terms(xz) scanned, directions, scale))``, saving for backward only
    ``xz`` and the scan's chunk-entry states; ``params`` are every tensor ``make_terms`` reads besides
    ``xz`` (so their gradients arrive)."""
    return _LeanScanBlock.apply(make_terms, (directions, scale), xz, out_proj.weight, out_proj.bias, *params)
