"""GPU kernels vs the pure path (issue 16): flash-linear-attention's RWKV-7 kernel against
``wkv7.py``'s pure implementation, fp32 and bf16, forward and gradients, both directions, ragged
lengths, and through a masked encoder. Marked ``cuda``; skipped without CUDA or without fla.

    pytest -m cuda            # on a GPU machine with the gpu extra installed
"""

from __future__ import annotations

import pytest
import torch

from pretrain.backbones import wkv7_fla
from pretrain.backbones.wkv7 import wkv7, wkv7_bidirectional
from pretrain.encoder import Encoder, EncoderConfig
from tests.test_rwkv7 import kernel_inputs, rel_err

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not wkv7_fla.available(), reason="needs flash-linear-attention (the gpu extra)"),
]

# fp32: Triton's dot products may use TF32; bf16: inputs and kernel maths in bfloat16.
TOL = {torch.float32: 5e-3, torch.bfloat16: 5e-2}


def _run(fn, inputs, probe):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    (out.float() * probe).sum().backward()
    return out.float(), [t.grad.float() for t in inputs]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [64, 100, 496])  # 100, 496: not multiples of fla's chunk of 64
@pytest.mark.parametrize("mode", ["causal", "gate", "sum"])
def test_fla_matches_pure(dtype, length, mode):
    x = [t.cuda() for t in kernel_inputs(2, length, 3, 64, torch.float32, seed=length)]
    gen = torch.Generator().manual_seed(1)
    probe = torch.randn(2, length, 3, 64, generator=gen).cuda()
    gate = torch.rand(2, length, 3, generator=gen).cuda() if mode == "gate" else None
    extra = [gate] if gate is not None else []

    def call(impl):
        def fn(*t):
            if mode == "causal":
                return wkv7(*t, impl=impl)
            return wkv7_bidirectional(*t[:6], gate=t[6] if len(t) > 6 else None, impl=impl)

        return fn

    low = [t.to(dtype) for t in (*x, *extra)]
    y_k, g_k = _run(call("fla"), low, probe)
    y_p, g_p = _run(call("pure"), [t.float() for t in low], probe)  # same rounded inputs, fp32 maths
    assert torch.isfinite(y_k).all()
    assert rel_err(y_k, y_p) <= TOL[dtype]
    for name, a, b in zip(["r", "log_w", "k", "v", "a", "b", "gate"], g_k, g_p):
        assert rel_err(a, b) <= TOL[dtype], name


@pytest.mark.timeout(120)
def test_auto_dispatches_to_fla_on_cuda_and_pure_key_forces_pure(monkeypatch):
    x = [t.cuda() for t in kernel_inputs(1, 64, 3, 64, torch.float32, seed=3)]
    calls = []
    real = wkv7_fla.wkv7_fla

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(wkv7_fla, "wkv7_fla", spy)
    wkv7_bidirectional(*x)
    assert calls == [1]
    wkv7_bidirectional(*x, impl="pure")
    assert calls == [1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("autocast", [False, True])
def test_encoder_with_mask_fla_vs_pure(autocast):
    """A masked tiny A-RWKV encoder step on CUDA: kernel and pure paths agree (outputs and grads)."""
    results = {}
    fbank = torch.randn(2, 96, 128, generator=torch.Generator().manual_seed(0)).cuda()
    mask = torch.zeros(2, 48, dtype=torch.bool, device="cuda")
    mask[:, ::3] = True
    for impl in ("fla", "pure"):
        torch.manual_seed(0)
        cfg = {"dim": 128, "depth": 2, "head_size": 64, "wkv_impl": impl}
        enc = Encoder(EncoderConfig(backbone="rwkv7", backbone_config=cfg, input_frames=96)).cuda()
        with torch.no_grad():  # W_o = 0 at init would hide the time-mix from the output
            for blk in enc.backbone.blocks:
                blk.att.output.weight.normal_(std=0.05)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = enc(fbank, mask=mask).patches
        out.float().square().mean().backward()
        results[impl] = (out.float(), {n: p.grad.float() for n, p in enc.named_parameters() if p.grad is not None})
    tol = 5e-2 if autocast else 5e-3
    assert rel_err(results["fla"][0], results["pure"][0]) <= tol
    for name, g in results["pure"][1].items():
        assert rel_err(results["fla"][1][name], g) <= 10 * tol, name
