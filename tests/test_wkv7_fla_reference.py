"""The GPU path's mapping onto flash-linear-attention, checked on CPU against fla's own reference.

``wkv7_fla.py`` maps our WKV-7 onto ``chunk_rwkv7(r, w, k, v, a, b, scale)`` (log decay, a/b as passed,
scale 1, bidirectional as one batch ``[x; flip(x)]``). That mapping was first derived by reading fla's
sources (and an earlier test checked its forward only). Here it is executed: ``wkv7_fla.run_kernel``
runs with fla's pure-PyTorch reference recurrence (``fla/ops/generalized_delta_rule/dplr/naive.py::
dplr_recurrence``, which the Triton kernel is tested against upstream) in place of the kernel, and must
equal our pure path in values and gradients, causal and bidirectional, with and without the gate.

Needs fla-core's sources and einops importable (the ``gpu`` extra); the Triton kernel itself is not
imported (fla's package ``__init__`` needs Triton), only the reference module, loaded by file path.
Skipped otherwise, as in CI. On a GPU machine ``bench/gpu_check.py`` runs it with the CUDA tests.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from pretrain.backbones import wkv7_fla
from pretrain.backbones.wkv7 import wkv7, wkv7_bidirectional
from tests.test_rwkv7 import kernel_inputs, rel_err
from tests.test_wkv7_cuda import _run  # (output, input gradients) of fn for a fixed upstream gradient


def _fla_reference():
    """fla's ``dplr_recurrence``, or None when fla-core or einops is not installed."""
    spec = importlib.util.find_spec("fla")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("einops") is None:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "ops/generalized_delta_rule/dplr/naive.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_fla_dplr_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.dplr_recurrence


DPLR_RECURRENCE = _fla_reference()
pytestmark = [
    pytest.mark.gpu_extra,
    pytest.mark.skipif(DPLR_RECURRENCE is None, reason="needs fla-core's sources and einops (the gpu extra)"),
]


def chunk_rwkv7_reference(r, w, k, v, a, b, scale):
    """``chunk_rwkv7``'s contract (fla 0.6: ``chunk_dplr_delta_rule(q=r, k, v, a, b, gk=w, scale)``, layout
    ``(B, T, H, N)``) through fla's reference recurrence, which takes ``(B, H, T, N)`` and scales ``q`` by
    ``1/sqrt(N)`` itself (so ``r`` is pre-multiplied to leave exactly ``scale``)."""
    n = r.shape[-1]
    q = r * (scale * math.sqrt(n))
    o, _ = DPLR_RECURRENCE(*(t.transpose(1, 2) for t in (q, k, v, a, b, w)))
    return o.transpose(1, 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["causal", "sum", "gate"])
def test_fla_mapping_matches_pure_path(mode):
    # fla's reference computes in fp32 (it casts q, k, v, b and the decay), so the tolerance is fp32's.
    x = kernel_inputs(2, 37, 2, 16, torch.float32, seed=3)
    gen = torch.Generator().manual_seed(4)
    probe = torch.randn(2, 37, 2, 16, generator=gen)
    extra = [torch.rand(2, 37, 2, generator=gen)] if mode == "gate" else []
    dirs = 1 if mode == "causal" else 2

    def through_fla(*t):
        gate = t[6] if len(t) > 6 else None
        return wkv7_fla.run_kernel(chunk_rwkv7_reference, *t[:6], gate, dirs)

    def pure(*t):
        if mode == "causal":
            return wkv7(*t, impl="pure")
        return wkv7_bidirectional(*t[:6], gate=t[6] if len(t) > 6 else None, impl="pure")

    y_ref, g_ref = _run(through_fla, [*x, *extra], probe)
    y, g = _run(pure, [*x, *extra], probe)
    assert rel_err(y, y_ref) <= 1e-5
    for name, got, want in zip(["r", "log_w", "k", "v", "a", "b", "gate"], g, g_ref):
        assert rel_err(got, want) <= 1e-4, name
