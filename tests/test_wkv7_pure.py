"""The pure WKV-7 path of issue 16: the hand-written backward (segments, both directions, gate)
against autograd of the per-step oracle, the fused RWKV-7 block ops against plain autograd, and a
bound on the backward's peak memory that the plain-autograd path exceeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain.backbones.wkv7 as wkv7_mod
from pretrain.backbones.rwkv7_core import time_mix_core
from pretrain.backbones.rwkv7_ops import lerp_matmul, sqrelu_linear
from pretrain.backbones.wkv7 import wkv7, wkv7_bidirectional
from tests.test_rwkv7 import kernel_inputs, naive_wkv7, rel_err

ROOT = Path(__file__).resolve().parents[1]


def _grads(fn, inputs, probe):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    (out.double() * probe).sum().backward()
    return out, [t.grad for t in inputs]


def naive_bidirectional(r, log_w, k, v, a, b, gate):
    fwd = naive_wkv7(r, log_w, k, v, a, b)
    bwd = naive_wkv7(*[t.flip(1) for t in (r, log_w, k, v, a, b)]).flip(1)
    if gate is None:
        return fwd + bwd
    return gate.unsqueeze(-1) * fwd + (1 - gate.unsqueeze(-1)) * bwd


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rows", [8, 40, 100000])  # one chunk per segment, a few, one segment
@pytest.mark.parametrize("chunk", [8, 16])
@pytest.mark.parametrize("mode", ["causal", "gate", "sum"])
@pytest.mark.parametrize("keep_rows", [0, 10**9], ids=["recomputed", "kept"])  # the chunk terms in backward
def test_pure_backward_equals_oracle_gradients(monkeypatch, rows, chunk, mode, keep_rows):
    monkeypatch.setattr(wkv7_mod, "SEGMENT_ROWS", rows)
    monkeypatch.setattr(wkv7_mod, "KEEP_ROWS", keep_rows)
    monkeypatch.setattr(wkv7_mod, "PACK_ROWS", 150)  # rows 8 / 40: several packed blocks of several segments
    bsz, length, heads, n = 2, 53, 2, 8  # 53: ragged last chunk
    x = kernel_inputs(bsz, length, heads, n, torch.float64, seed=rows + chunk)
    g = torch.Generator().manual_seed(7)
    probe = torch.randn(bsz, length, heads, n, generator=g, dtype=torch.float64)
    gate = torch.rand(bsz, length, heads, generator=g, dtype=torch.float64) if mode == "gate" else None
    extra = [gate] if gate is not None else []
    if mode == "causal":
        ours, ref = (lambda *t: wkv7(*t, chunk_size=chunk, impl="pure")), naive_wkv7
    else:
        def ours(*t):
            return wkv7_bidirectional(*t[:6], gate=t[6] if len(t) > 6 else None, chunk_size=chunk, impl="pure")

        def ref(*t):
            return naive_bidirectional(*t[:6], t[6] if len(t) > 6 else None)

    y, got = _grads(ours, [*x, *extra], probe)
    y_ref, want = _grads(ref, [*x, *extra], probe)
    assert rel_err(y, y_ref) <= 1e-10
    for name, a, b in zip(["r", "log_w", "k", "v", "a", "b", "gate"], got, want):
        assert rel_err(a, b) <= 1e-10, name


@pytest.mark.timeout(60)
def test_pure_matches_autograd_in_fp32_and_under_no_grad():
    x = kernel_inputs(2, 300, 3, 64, torch.float32, seed=4)
    gate = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(2, 300, 3, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    runs = {}
    for impl in ("pure", "autograd"):
        runs[impl] = _grads(lambda *t, i=impl: wkv7_bidirectional(*t[:6], gate=t[6], impl=i), [*x, gate], probe)
    assert rel_err(runs["pure"][0], runs["autograd"][0]) <= 1e-6
    for a, b in zip(runs["pure"][1], runs["autograd"][1]):
        assert rel_err(a, b) <= 1e-4
    with torch.no_grad():
        assert torch.equal(wkv7_bidirectional(*x, gate=gate, impl="pure"), runs["pure"][0].detach())


@pytest.mark.timeout(60)
def test_fused_block_ops_match_autograd():
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    x, xx, mu, w = rnd(2, 7, 12), rnd(2, 7, 12), rnd(1, 1, 12), rnd(12, 5)
    h, w2, bias = rnd(2, 7, 20), rnd(6, 20), rnd(6)
    probe1, probe2 = torch.randn(2, 7, 5, dtype=torch.float64), torch.randn(2, 7, 6, dtype=torch.float64)
    leaves = [x, xx, mu, w, h, w2, bias]

    def run(fused: bool):
        for t in leaves:
            t.grad = None
        if fused:
            out1, out2 = lerp_matmul(x, xx, mu, w), sqrelu_linear(h, w2, bias)
        else:
            out1, out2 = (x + xx * mu) @ w, torch.nn.functional.linear(torch.relu(h).square(), w2, bias)
        ((out1 * probe1).sum() + (out2 * probe2).sum()).backward()
        return [out1.detach(), out2.detach()] + [t.grad.clone() for t in leaves]

    for a, b in zip(run(True), run(False)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def _core_inputs(layer0: bool, gated: bool, bsz=2, length=37, heads=2, n=8):
    """Random time-mix core inputs (fp64 leaves) in the ranges the block produces."""
    g = torch.Generator().manual_seed(3 + layer0 + 2 * gated)
    c = heads * n

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    x = {name: rnd(bsz, length, c) for name in ("r", "zw", "k0", "vp", "v_first", "zv", "za", "g")}
    x |= {"k_k": rnd(1, 1, c), "k_a": rnd(1, 1, c), "r_k": rnd(heads, n), "ln_w": rnd(c), "ln_b": rnd(c)}
    x["gate"] = torch.rand(bsz, length, heads, generator=g, dtype=torch.float64).requires_grad_() if gated else None
    if layer0:
        x["v_first"] = x["zv"] = None
    return x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layer0", [True, False])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("keep_rows", [0, 10**9], ids=["recomputed", "kept"])  # the WKV's chunk terms
def test_time_mix_core_matches_plain_autograd(monkeypatch, layer0, gated, keep_rows):
    """The fused core (saves its inputs, recomputes the chain) against plain autograd through the
    same ops (chunked WKV under autograd): output and every input gradient, fp64."""
    monkeypatch.setattr(wkv7_mod, "SEGMENT_ROWS", 40)  # several segments and segment-boundary states
    monkeypatch.setattr(wkv7_mod, "KEEP_ROWS", keep_rows)
    monkeypatch.setattr(wkv7_mod, "PACK_ROWS", 150)  # and several packed blocks
    names = ["r", "zw", "k0", "vp", "v_first", "zv", "za", "g", "gate", "k_k", "k_a", "r_k", "ln_w", "ln_b"]
    x = _core_inputs(layer0, gated)
    probe = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    runs = {}
    for impl in ("pure", "autograd"):
        for t in x.values():
            if t is not None:
                t.grad = None
        out = time_mix_core(*[x[k] for k in names], heads=2, eps=1e-5 * 64, chunk_size=8, impl=impl)
        (out * probe).sum().backward()
        runs[impl] = [out.detach()] + [None if x[k] is None else x[k].grad.clone() for k in names]
    for name, a, b in zip(["out", *names], runs["pure"], runs["autograd"]):
        if b is None:
            assert a is None, name
            continue
        assert rel_err(a, b) <= 1e-10, name


@pytest.mark.timeout(120)
def test_time_mix_core_under_autocast_matches_plain_autograd():
    """Under bf16 autocast the core recomputes its chain under autograd (the GroupNorm in autocast's
    precision): same output and gradients as plain autograd through the same ops, to bf16 accuracy."""
    names = ["r", "zw", "k0", "vp", "v_first", "zv", "za", "g", "gate", "k_k", "k_a", "r_k", "ln_w", "ln_b"]
    x = {k: None if t is None else t.detach().float().requires_grad_() for k, t in _core_inputs(False, True).items()}
    probe = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(9))
    runs = {}
    for impl in ("pure", "autograd"):
        for t in x.values():
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = time_mix_core(*[x[k] for k in names], heads=2, eps=1e-5 * 64, chunk_size=8, impl=impl)
        (out.float() * probe).sum().backward()
        runs[impl] = [out.detach()] + [x[k].grad.clone() for k in names]
    for name, a, b in zip(["out", *names], runs["pure"], runs["autograd"]):
        assert rel_err(a, b) <= 2e-2, name


_MEASURE = """
import json, sys, torch
from pretrain.backbones.wkv7 import wkv7_bidirectional
from tests.test_rwkv7 import kernel_inputs
torch.set_num_threads(1)
impl, length = sys.argv[1], int(sys.argv[2])
def run(n):
    x = [t.requires_grad_() for t in kernel_inputs(1, n, 3, 64, torch.float32, seed=1)]
    gate = torch.rand(1, n, 3, requires_grad=True)
    wkv7_bidirectional(*x, gate=gate, impl=impl).sum().backward()
    return x
run(64)  # page in the code and allocator state first, so only the call's own memory is measured
x = [t.requires_grad_() for t in kernel_inputs(1, length, 3, 64, torch.float32, seed=1)]
gate = torch.rand(1, length, 3, requires_grad=True)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base = rss()
wkv7_bidirectional(*x, gate=gate, impl=impl).sum().backward()
# VmHWM, not ru_maxrss: Linux carries the (big) pytest parent's size into a child's ru_maxrss.
peak = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")) * 1024
print(json.dumps({"peak": peak - base, "inputs": 6 * x[0].numel() * 4}))
"""


def _peak(impl: str, length: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, impl, str(length)], capture_output=True, text=True,
                          cwd=ROOT, timeout=240)
    assert proc.returncode == 0, f"measuring {impl} at {length} tokens failed: {proc.stderr[-1000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_backward_peak_memory_is_linear_and_bounded():
    """Peak resident memory of one fresh forward+backward (bidirectional, 3 heads x 64, A-RWKV-T layout)
    stays under 2x the inputs' bytes + 72 MB at every length (the six input gradients alone are 1x;
    the constant is one packed block of ``PACK_ROWS`` rows: inputs and results are packed into the
    chunk layout a block at a time, never whole; measured ~1.1x + 65 MB), plus the chunk terms kept
    for backward by calls of at most ``KEEP_ROWS`` rows (~4.9 KB per row: 1244 fp32 values; 2048
    tokens measured 95 MB against a bound of 150); plain autograd through the same forward (what the
    Function replaces) does not, so the bound can fail."""

    def bound(res: dict, length: int) -> float:
        rows = 2 * 3 * length  # directions x heads x tokens (batch 1; lengths are whole chunks)
        kept = rows * 5000 if wkv7_mod.keeps_terms(rows) else 0
        return 2 * res["inputs"] + 72 * 2**20 + kept

    for length in (1024, 2048, 4096, 8192):  # 1024, 2048: terms kept; 4096, 8192: recomputed
        res = _peak("pure", length)
        if res["peak"] > bound(res, length):
            # RSS can only be inflated from outside the call (code pages evicted by other processes on
            # this shared machine and faulted in again): a second fresh measurement must then pass;
            # a real regression fails both.
            res = min(res, _peak("pure", length), key=lambda r: r["peak"])
        assert res["peak"] <= bound(res, length), (length, res)
    res = _peak("autograd", 8192)
    assert res["peak"] > bound(res, 8192), res


def test_fla_impl_without_cuda_names_the_fix():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real kernel tests instead")
    x = kernel_inputs(1, 16, 1, 8, torch.float32)
    with pytest.raises(RuntimeError, match="gpu"):
        wkv7(*x, impl="fla")
    with pytest.raises(ValueError, match="impl"):
        wkv7(*x, impl="triton")
    # "auto" on CPU is the pure path
    assert torch.equal(wkv7(*x), wkv7(*x, impl="pure"))
