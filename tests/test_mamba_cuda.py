"""The Mamba GPU kernels against the pure-PyTorch path: ``mamba_ssm``'s selective scan and
``causal_conv1d``'s conv, dispatched by ``scan_impl="auto"``. Skipped without CUDA or without the
packages; on a GPU machine: ``python -m pytest tests/test_mamba_cuda.py``."""

from __future__ import annotations

import pytest
import torch

from pretrain.encoder import Encoder, EncoderConfig
from pretrain.masking import make_mask
from pretrain.patches import valid_patches

pytestmark = [
    pytest.mark.cuda,  # bench/gpu_check.py runs `pytest -m cuda`
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.timeout(300),
]
mamba_ssm = pytest.importorskip("mamba_ssm", reason="needs mamba_ssm (a CUDA build)")

from pretrain.backbones.selective_scan import selective_scan  # noqa: E402

# (forward, gradient) relative tolerances: fp32 differs in summation order only; bf16 inputs are rounded
# identically on both paths and both accumulate in fp32, but the kernel rounds its output to bf16.
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _scan_inputs(batch: int, length: int, channels: int, state: int, dtype: torch.dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dt).requires_grad_()

    return dict(
        u=rnd(2 * batch, length, channels), delta=rnd(2 * batch, length, channels, scale=0.5),
        A=(-torch.exp(torch.randn(2, channels, state, generator=g, device="cuda") * 0.5)).requires_grad_(),
        B=rnd(2 * batch, length, state), C=rnd(2 * batch, length, state),
        D=rnd(2, channels, dt=torch.float32), z=rnd(2 * batch, length, channels),
        delta_bias=rnd(2, channels, scale=0.5, dt=torch.float32),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 97, 513, 2048])
def test_kernel_scan_matches_pure_path_both_directions(dtype, length):
    """Two directions batched (A (2, E, N)), odd lengths: outputs and every gradient."""
    x = _scan_inputs(2, length, 64, 16, dtype, seed=length)
    names = list(x)
    outs, grads = {}, {}
    for impl in ("auto", "torch"):
        y = selective_scan(**x, delta_softplus=True, impl=impl)
        gy = torch.randn(y.shape, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
        outs[impl] = y
        grads[impl] = torch.autograd.grad(y, [x[n] for n in names], gy.to(y.dtype))
    assert outs["auto"].dtype == outs["torch"].dtype == dtype
    fwd_tol, grad_tol = TOLERANCES[dtype]
    assert _rel(outs["auto"], outs["torch"]) <= fwd_tol
    for name, got, want in zip(names, grads["auto"], grads["torch"]):
        assert _rel(got, want) <= grad_tol, name


def _encoders(bimamba: str) -> tuple[Encoder, Encoder]:
    torch.manual_seed(0)
    conf = dict(dim=64, depth=2, bimamba=bimamba, cls_position="start", drop_path=0.0)
    fused = Encoder(EncoderConfig(backbone="mamba", backbone_config=conf | {"scan_impl": "auto"},
                                  input_frames=256))
    pure = Encoder(EncoderConfig(backbone="mamba", backbone_config=conf | {"scan_impl": "torch"},
                                 input_frames=256))
    pure.load_state_dict(fused.state_dict())
    return fused.cuda(), pure.cuda()


@pytest.mark.parametrize("bimamba", ["v2", "v1", "none"])
@pytest.mark.parametrize("autocast", [False, True])
def test_encoder_kernels_match_pure_path_with_padding_and_mask(bimamba, autocast):
    """The whole encoder (scan and conv kernels) vs the pure path: padded clips, a cluster mask."""
    fused, pure = _encoders(bimamba)
    frames = torch.tensor([256, 200, 130])
    fbank = torch.randn(3, 256, 128, device="cuda")
    grid = (16, 8)
    valid = valid_patches(frames, grid, (16, 16), (16, 16))
    mask = make_mask("cluster", valid, grid, 60, generator=torch.Generator().manual_seed(0)).cuda()
    results = []
    for enc in (fused, pure):
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = enc(fbank, mask).patches
        out.float().square().mean().backward()
        results.append((out.float(), {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}))
    fwd_tol, grad_tol = TOLERANCES[torch.bfloat16 if autocast else torch.float32]
    assert _rel(results[0][0], results[1][0]) <= fwd_tol
    assert results[0][1].keys() == results[1][1].keys()
    for name in results[0][1]:
        assert _rel(results[0][1][name], results[1][1][name]) <= grad_tol, name


def test_scan_impl_torch_forces_the_pure_path(monkeypatch):
    """With scan_impl="torch" neither kernel is called, even on CUDA with both installed."""
    import pretrain.backbones.mamba as mamba_module
    import pretrain.backbones.selective_scan as scan_module

    def refuse(*args, **kwargs):
        raise AssertionError("kernel called")

    monkeypatch.setattr(scan_module, "_mamba_ssm_kernel", lambda: refuse)
    monkeypatch.setattr(mamba_module, "_causal_conv1d_kernel", lambda: refuse)
    _, pure = _encoders("v2")
    pure(torch.randn(2, 256, 128, device="cuda")).patches.sum().backward()
