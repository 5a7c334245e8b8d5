"""GPU path of the WKV-7 scan: flash-linear-attention's chunked RWKV-7 Triton kernel.

``fla.ops.rwkv7.chunk_rwkv7(r, w, k, v, a, b, scale)`` (package ``fla-core``, checked against its
0.6.0 sources) computes, per head, with its state ``S`` stored key x value (the transpose of ours)::

    S_t = diag(e^{w_t}) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,    o_t = scale * S_t^T r_t

(``fla/ops/generalized_delta_rule/dplr/naive.py::dplr_recurrence`` with ``q = r``, ``alpha = a``,
``beta = b``, ``gk = w``; the a-term reads the state *before* the decay, as RWKV-7's kernel does).
Transposed, that is exactly ``wkv7.py``'s ``S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T``
with ``y_t = S_t r_t``, so the mapping is one-to-one: ``w = log_w`` (fla takes the *log* decay, as
its own RWKV-7 layer passes ``-0.6065 * sigmoid(.)``), ``a = -kappa_hat``, ``b = kappa_hat * alpha``,
``scale = 1`` (RWKV-7 has no 1/sqrt(N)), zero initial state, the same ``(B, T, H, N)`` layout.
The bidirectional layer is one call on the batch ``[x; flip(x)]``.

``wkv7.py`` dispatches here when ``impl="auto"`` and the tensors are on CUDA and fla imports
(install the ``gpu`` extra); ``impl="pure"`` (recipe key ``model.backbone_config.wkv_impl``) forces
the pure path.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _kernel():
    """``chunk_rwkv7`` or None when fla (or Triton) cannot be imported here."""
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception:  # ImportError, or Triton failing to initialise without a GPU driver
        return None
    return chunk_rwkv7


def available() -> bool:
    """Whether flash-linear-attention's RWKV-7 kernel can be used in this environment."""
    return torch.cuda.is_available() and _kernel() is not None


def wkv7_fla(r, log_w, k, v, a, b, gate: torch.Tensor | None, dirs: int) -> torch.Tensor:
    """The WKV-7 scan through fla (causal ``dirs=1`` or bidirectional ``dirs=2``); ``(B, T, H, N)``."""
    if not available():
        raise RuntimeError(
            "wkv7: impl='fla' needs a CUDA device and flash-linear-attention "
            "(pip install 'ssl-audio[gpu]'); use wkv_impl='pure' or 'auto'"
        )
    if not r.is_cuda:
        raise ValueError(f"wkv7: impl='fla' needs CUDA tensors, got device {r.device}")
    if r.dtype == torch.float64:
        raise ValueError("wkv7: impl='fla' does not support float64; use impl='pure'")
    return run_kernel(_kernel(), r, log_w, k, v, a, b, gate, dirs)


def run_kernel(kernel, r, log_w, k, v, a, b, gate: torch.Tensor | None, dirs: int) -> torch.Tensor:
    """The WKV-7 scan through ``kernel``, a callable with ``chunk_rwkv7``'s signature and semantics (the
    Triton kernel on CUDA; in tests, fla's own reference recurrence on CPU): the dtype under autocast,
    the bidirectional batch ``[x; flip(x)]`` and the merge of the two directions. No device checks."""
    dev = r.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else r.dtype
    xs = [t.to(dtype) for t in (r, log_w, k, v, a, b)]
    bsz = r.shape[0]
    if dirs == 2:
        xs = [torch.cat([t, t.flip(1)], dim=0) for t in xs]
    with torch.autocast(dev, enabled=False):
        out = kernel(r=xs[0], w=xs[1], k=xs[2], v=xs[3], a=xs[4], b=xs[5], scale=1.0)
        y = out[0] if isinstance(out, tuple) else out
        if dirs == 1:
            return y
        y_f, y_b = y[:bsz], y[bsz:].flip(1)
        if gate is None:
            return y_f + y_b
        gm = gate.unsqueeze(-1).to(y.dtype)
        return y_b + gm * (y_f - y_b)
