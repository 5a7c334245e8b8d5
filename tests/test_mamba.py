"""Bidirectional Mamba backbone: the selective scan against a per-step oracle, the mixer variants
against the equations, the published parameter counts, and the Encoder contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.backbones import make_backbone_config, mamba_lean
from pretrain.backbones import selective_scan as scan_module
from pretrain.backbones.mamba import BiMambaMixer, MambaBackbone, MambaConfig
from pretrain.backbones.selective_scan import linear_scan, plan_chunks, selective_scan, softplus
from pretrain.encoder import Encoder, EncoderConfig
from pretrain.features import FeatureConfig


def naive_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written step by step from the equations (the oracle).

    h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t;  y_t = C_t · h_t + D u_t;  y_t *= SiLU(z_t).
    """
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _scan_inputs(batch, length, channels, state, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return dict(
        u=rnd(batch, length, channels), delta=rnd(batch, length, channels),
        A_log=(torch.randn(channels, state, generator=g, dtype=dtype) * 0.5).requires_grad_(),
        B=rnd(batch, length, state), C=rnd(batch, length, state), D=rnd(channels), z=rnd(batch, length, channels),
        bias=rnd(channels),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize(
    "batch,length,channels,state,block",
    [(2, 37, 5, 3, 8), (1, 100, 4, 16, None), (3, 53, 6, 4, 16), (2, 19, 3, 2, 1), (1, 130, 2, 5, 33)],
)
def test_selective_scan_matches_per_step_oracle(dtype, tol, batch, length, channels, state, block):
    x = _scan_inputs(batch, length, channels, state, dtype, seed=length)
    params = list(x.values())

    def args():
        return (x["u"], x["delta"], -torch.exp(x["A_log"]), x["B"], x["C"], x["D"], x["z"], x["bias"], True)

    y = selective_scan(*args(), block_tokens=block)
    y_ref = naive_selective_scan(*args())
    assert y.dtype == dtype
    assert _rel(y, y_ref) <= tol
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, gy)
    grads_ref = torch.autograd.grad(y_ref, params, gy)
    for name, got, want in zip(x, grads, grads_ref):
        assert _rel(got, want) <= tol, name


@pytest.mark.timeout(60)
def test_selective_scan_without_optional_terms_and_with_block_of_one():
    x = _scan_inputs(2, 23, 3, 4, torch.float64, seed=3)
    A = -torch.exp(x["A_log"])
    y = selective_scan(x["u"], x["delta"], A, x["B"], x["C"], block_tokens=1)
    assert _rel(y, naive_selective_scan(x["u"], x["delta"], A, x["B"], x["C"])) <= 1e-12


@pytest.mark.timeout(60)
def test_selective_scan_stable_for_long_inputs_and_large_delta():
    """22k tokens, Δ up to e^6 ≈ 400 (ΔA ≈ −6000 per step): finite, and equal to the oracle on a prefix."""
    g = torch.Generator().manual_seed(1)
    batch, length, channels, state = 1, 22_000, 2, 4
    u = torch.randn(batch, length, channels, generator=g)
    delta = torch.exp(torch.randn(batch, length, channels, generator=g) * 3).clamp(max=400.0)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1) * 4
    B = torch.randn(batch, length, state, generator=g)
    C = torch.randn(batch, length, state, generator=g)
    u.requires_grad_()
    y = selective_scan(u, delta, A, B, C, block_tokens=4096)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(u.grad).all()
    # The state forgets within a few steps here, so the last 300 tokens only depend on their own past.
    tail = slice(length - 300, length)
    ref = naive_selective_scan(u[:, tail].detach(), delta[:, tail], A, B[:, tail], C[:, tail])
    assert _rel(y[:, 50 - 300 :].detach(), ref[:, 50:]) <= 1e-5


@pytest.mark.timeout(30)
def test_linear_scan_matches_loop_for_every_length_up_to_70():
    for length in range(1, 71):
        a = torch.rand(2, length, 3, dtype=torch.float64)
        x = torch.randn(2, length, 3, dtype=torch.float64)
        h, ref = torch.zeros(2, 3, dtype=torch.float64), []
        for t in range(length):
            h = a[:, t] * h + x[:, t]
            ref.append(h)
        assert torch.allclose(linear_scan(a, x), torch.stack(ref, 1), rtol=1e-12, atol=1e-12), length


def test_fp32_softplus_matches_torch_values_and_gradients():
    """The scan's fp32 softplus (exp/log, Goldberg's log1p) against F.softplus in fp64, over the whole
    range Δ takes: underflow, the threshold at 20, zero, infinities and NaN."""
    special = torch.tensor([0.0, -0.0, 1e-8, -1e-8, 20.0, 20.5, -20.0, -87.0, -90.0, -104.0, -200.0, 200.0,
                            float("inf"), float("-inf")])
    x = torch.cat([torch.linspace(-40, 40, 20001), torch.randn(4096) * 6, special]).requires_grad_()
    y = softplus(x)
    ref = F.softplus(x.detach().double())
    assert y.dtype == torch.float32
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    err = (y.detach().double() - ref).abs()[finite]
    # a few fp32 ulps (torch's own fp32 softplus: ~1.2e-7), and fp32's denormal floor near e^-104
    assert (err <= 1e-6 * ref[finite] + 1e-44).all()
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.allclose(x.grad, g * torch.sigmoid(x.detach()), rtol=0, atol=0)
    assert softplus(torch.tensor([float("nan")])).isnan().all()
    x64 = torch.randn(64, dtype=torch.float64)  # other dtypes take F.softplus itself
    assert torch.equal(softplus(x64), F.softplus(x64))

def test_selective_scan_rejects_bad_shapes():
    u = torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, u, -torch.ones(4, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 2))
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, u, -torch.ones(3, 2), torch.randn(1, 5, 3), torch.randn(1, 5, 2))
    with pytest.raises(ValueError, match="block_tokens"):
        selective_scan(u, u, -torch.ones(3, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 2), block_tokens=0)
    with pytest.raises(ValueError, match="A must be"):  # 2 groups do not divide a batch of 1
        selective_scan(u, u, -torch.ones(2, 3, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 2))
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, u, -torch.ones(3, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 2), D=torch.ones(4))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("slab", [1, None])  # 1: one chunk per backward group (carried adjoint only)
@pytest.mark.parametrize("length,block", [(1, None), (23, 5), (64, 7), (130, None), (97, 16)])
def test_grouped_scan_matches_two_oracle_scans(length, block, slab, monkeypatch):
    """Both directions in one call (A (2, E, N), D and bias (2, E)), lengths not divisible by the chunk,
    chunk groups with and without a local-adjoint pass: values and every gradient, fp64."""
    if slab is not None:
        monkeypatch.setattr(scan_module, "SLAB_ELEMENTS", slab)
    g = torch.Generator().manual_seed(length)
    b, e, n = 2, 5, 3

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    u, delta, z = rnd(2 * b, length, e), rnd(2 * b, length, e), rnd(2 * b, length, e)
    B, C = rnd(2 * b, length, n), rnd(2 * b, length, n)
    A_log, D, bias = rnd(2, e, n), rnd(2, e), rnd(2, e)
    params = [u, delta, z, B, C, A_log, D, bias]
    y = selective_scan(u, delta, -torch.exp(A_log), B, C, D, z, bias, True, block_tokens=block, impl="torch")
    y_ref = torch.cat([
        naive_selective_scan(u[s], delta[s], -torch.exp(A_log[i]), B[s], C[s], D[i], z[s], bias[i], True)
        for i, s in enumerate((slice(0, b), slice(b, 2 * b)))
    ])
    assert _rel(y, y_ref) <= 1e-10
    gy = torch.randn_like(y)
    for name, got, want in zip(["u", "delta", "z", "B", "C", "A_log", "D", "bias"], torch.autograd.grad(y, params, gy),
                               torch.autograd.grad(y_ref, params, gy)):
        assert _rel(got, want) <= 1e-10, name


def test_scan_results_do_not_share_scratch_buffers():
    """A result stays valid after another call of the same shape (the scan reuses scratch buffers)."""
    x = _scan_inputs(2, 40, 3, 4, torch.float64, seed=7)
    A = -torch.exp(x["A_log"])
    first = selective_scan(x["u"], x["delta"], A, x["B"], x["C"], impl="torch")
    kept = first.detach().clone()
    selective_scan(x["u"] * 2, x["delta"], A, x["B"], x["C"], impl="torch").sum().backward()
    assert torch.equal(first.detach(), kept)


def test_plan_chunks_fills_the_slab_and_pads_little():
    q, k, j = plan_chunks(8, 513, 384, 16)  # SSAMBA-tiny, batch 4, both directions: one chunk fills a slab
    assert (j, q * k >= 513, q * k - 513 < k) == (1, True, True)
    q, k, j = plan_chunks(2, 16385, 384, 16)  # batch 1: chunks side by side
    assert j == scan_module.SLAB_ELEMENTS // (2 * 384 * 16) and k % j == 0 and q * k >= 16385
    assert plan_chunks(2, 100, 4, 2, block_tokens=7)[0] == 7


_PEAK_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from pretrain.backbones.selective_scan import selective_scan
channels, state = 64, 64
for length in map(int, sys.argv[1:]):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).requires_grad_()
    u, d, B, C = rnd(2, length, channels), rnd(2, length, channels), rnd(2, length, state), rnd(2, length, state)
    A = -torch.rand(2, channels, state, generator=g) - 0.5
    y = selective_scan(u, d, A, B, C, delta_softplus=True, impl="torch")
    gy = torch.randn_like(y)
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    y.backward(gy)
    # VmHWM, not ru_maxrss: Linux carries the (big) pytest parent's size into a child's ru_maxrss.
    peak = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")) * 1024
    print(peak - base, flush=True)
    del u, d, B, C, y, gy
"""


@pytest.mark.timeout(300)
def test_backward_peak_memory_grows_with_tokens_not_with_the_state_history():
    """Peak RSS of the backward at 4k and 16k tokens (2 rows, E = N = 64, fp32): what it adds per extra
    token must stay under half of what a kept state history costs (E·N floats per row and token)."""
    import subprocess
    import sys

    lengths = (4096, 16384)
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *map(str, lengths)], capture_output=True,
                         text=True, check=True)
    small, large = map(int, out.stdout.split())
    history = 2 * (lengths[1] - lengths[0]) * 64 * 64 * 4  # bytes of the states of the extra tokens
    assert large - small < history / 2, (small, large, history)
    assert large < 2 * lengths[1] * 64 * 64 * 4 / 2, large  # and in absolute terms


# ----- the mixer against the equations -----


def _direction(u_pre, z, conv, x_proj, dt_proj, A_log, D, rank, state):
    """One direction of the mixer, from the equations: causal depthwise conv, SiLU, projections, scan."""
    length = u_pre.shape[1]
    w = conv.weight[:, 0]  # (E, K)
    k = w.shape[1]
    padded = F.pad(u_pre, (0, 0, k - 1, 0))
    u = torch.stack([(padded[:, t : t + k] * w.T).sum(1) for t in range(length)], 1) + conv.bias
    u = F.silu(u)
    dt, B, C = torch.split(u @ x_proj.weight.T, [rank, state, state], dim=-1)
    delta = dt @ dt_proj.weight.T
    return naive_selective_scan(u, delta, -torch.exp(A_log), B, C, D, z, dt_proj.bias, True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bimamba", ["v2", "v1", "none"])
@pytest.mark.parametrize("divide", [True, False])
def test_mixer_matches_equations(bimamba, divide):
    torch.manual_seed(0)
    cfg = MambaConfig(dim=8, depth=2, d_state=4, bimamba=bimamba, if_divide_out=divide)
    mixer = BiMambaMixer(cfg).double()
    h = torch.randn(2, 11, 8, dtype=torch.float64)
    x, z = (h @ mixer.in_proj.weight.T).chunk(2, dim=-1)
    r, n = cfg.rank, cfg.d_state
    y = _direction(x, z, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D, r, n)
    if bimamba == "v2":
        y_b = _direction(x.flip(1), z.flip(1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                         mixer.D_b, r, n).flip(1)
        y = (y + y_b) / 2 if divide else y + y_b
    elif bimamba == "v1":
        # Fo-Bi: the forward conv output, flipped, scanned with A_b; everything else shared; no halving.
        length = x.shape[1]
        u = F.silu(mixer.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2))
        dt, B, C = torch.split(u @ mixer.x_proj.weight.T, [r, n, n], dim=-1)
        delta = dt @ mixer.dt_proj.weight.T
        y_b = naive_selective_scan(u.flip(1), delta.flip(1), -torch.exp(mixer.A_b_log), B.flip(1), C.flip(1),
                                   mixer.D, z.flip(1), mixer.dt_proj.bias, True).flip(1)
        y = y + y_b
    expected = y @ mixer.out_proj.weight.T
    assert _rel(mixer(h), expected) <= 1e-10


def _mixer_grads(mixer: BiMambaMixer, h: torch.Tensor, lean: bool) -> list[torch.Tensor]:
    """The mixer's output, then the gradients of a random projection of it for the input and every parameter."""
    mixer.config.lean_backward = "always" if lean else "never"
    leaf = h.detach().requires_grad_()
    y = mixer(leaf)
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
    params = list(mixer.parameters())
    return [y.detach(), *torch.autograd.grad((y * probe).sum(), [leaf, *params])]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bimamba,divide", [("v2", True), ("v2", False), ("v1", True), ("none", True)])
@pytest.mark.parametrize("length,block", [(11, None), (37, 5), (70, 8)])
def test_lean_backward_matches_plain_autograd(bimamba, divide, length, block):
    """mamba_lean's recompute-in-backward gives plain autograd's values and gradients (fp64, one and
    several chunks, every bidirectional variant)."""
    torch.manual_seed(0)
    cfg = MambaConfig(dim=8, depth=2, d_state=4, bimamba=bimamba, if_divide_out=divide, scan_block_tokens=block)
    mixer = BiMambaMixer(cfg).double()
    with torch.no_grad():  # a non-zero D_b and dt bias: every term reaches the gradients
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    h = torch.randn(3, length, 8, dtype=torch.float64)
    lean, plain = _mixer_grads(mixer, h, True), _mixer_grads(mixer, h, False)
    for got, ref in zip(lean, plain):
        assert _rel(got, ref) <= 1e-10


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("autocast", [False, True])
def test_lean_backward_matches_plain_autograd_on_cuda(autocast):
    """The pure path on a GPU (scan_impl="torch"), fp32 and under bf16 autocast: lean equals plain autograd."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(MambaConfig(dim=64, depth=2, d_state=16, scan_impl="torch")).cuda()
    h = torch.randn(2, 300, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        lean, plain = _mixer_grads(mixer, h, True), _mixer_grads(mixer, h, False)
    for got, ref in zip(lean, plain):
        assert _rel(got.double(), ref.double()) <= (1e-2 if autocast else 1e-5)


def test_lean_backward_with_frozen_parameters_and_no_grad():
    """Only the gradients asked for are made; inference (no_grad) takes the plain path."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(MambaConfig(dim=8, depth=2, d_state=4)).double()
    h = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    mixer.x_proj.weight.requires_grad_(False)
    mixer(h).sum().backward()
    assert mixer.x_proj.weight.grad is None and mixer.x_proj_b.weight.grad is not None and h.grad is not None
    with torch.no_grad():
        assert torch.equal(mixer(h), mixer(h))


def _saved_bytes_per_token(mode: str, length: int) -> float:
    """Bytes autograd keeps per token for one SSAMBA-tiny-wide mixer (saved tensors, storages counted once)."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(MambaConfig(dim=192, d_state=16, lean_backward=mode))
    h = torch.randn(1, length, 192, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(h)
    params = sum(p.numel() * 4 for p in mixer.parameters())
    return (sum(storages.values()) - params) / length


@pytest.mark.timeout(60)
def test_lean_backward_keeps_a_fraction_of_plain_autograds_activations():
    """The lean mixer keeps the in_proj input and output (D + 2E floats per token) and the chunk-entry states
    (2·E·N per chunk of ~50 tokens): ≤ 5 KB per token at E = 384, at every length; plain autograd keeps
    ~29 KB. "auto" is plain below AUTO_MIN_ELEMENTS numbers per call and lean from there."""
    dim, inner, state = 192, 384, 16
    bound = 4 * (dim + 2 * inner + 2 * inner * state / 48 + 64)
    for length in (512, 2048):
        lean, plain = _saved_bytes_per_token("always", length), _saved_bytes_per_token("never", length)
        assert lean <= bound, (length, lean, bound)
        assert plain > 5 * lean, (length, lean, plain)
    assert _saved_bytes_per_token("auto", 2048) == _saved_bytes_per_token("never", 2048)
    long = -(-mamba_lean.AUTO_MIN_ELEMENTS // inner)
    assert _saved_bytes_per_token("auto", long) == _saved_bytes_per_token("always", long)
    assert _saved_bytes_per_token("auto", long - 1) == _saved_bytes_per_token("never", long - 1)


def test_reference_initialization():
    torch.manual_seed(0)
    cfg = MambaConfig(dim=64, depth=4, bimamba="v2")
    backbone = MambaBackbone(cfg, grid=(4, 2), patch=(16, 16))
    mixer = backbone.layers[0].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = cfg.rank**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    assert torch.equal(mixer.A_b_log, mixer.A_log)
    assert torch.equal(mixer.D, torch.ones(128)) and torch.equal(mixer.D_b, torch.ones(128))
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None and mixer.x_proj.bias is None
    assert torch.count_nonzero(mixer.dt_proj_b.bias) == 0  # Vim: plain Linear, bias zeroed by the model init
    # out_proj: kaiming-uniform(a=√5) bound 1/√fan_in, divided by √depth
    assert mixer.out_proj.weight.abs().max() <= 1 / math.sqrt(128) / math.sqrt(4)
    assert mixer.out_proj.weight.abs().max() > 0.8 / math.sqrt(128) / math.sqrt(4)
    mamba_b = MambaBackbone(MambaConfig(dim=64, depth=2, backward_dt_init="mamba"), grid=(4, 2), patch=(16, 16))
    dt_b = F.softplus(mamba_b.layers[0].mixer.dt_proj_b.bias)
    assert dt_b.max() <= 0.1 * 1.001


# ----- published parameter counts (AuM's configuration) -----


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dim,bimamba,expected", [(768, "v1", 92_107_535), (384, "v2", 25_539_215)])
def test_parameter_count_matches_aum(dim, bimamba, expected):
    """AuM: RMSNorm, learned pos embed for 512 patches + 1 cls, Conv2d(1, D, 16, 16) patch embed,
    no mask embedding, plain Linear(D, 527) head with bias."""
    config = EncoderConfig(
        backbone="mamba", input_frames=1024, mask_embedding=False,
        backbone_config=dict(dim=dim, depth=24, bimamba=bimamba, norm="rmsnorm", cls_position="middle"),
    )
    encoder = Encoder(config)
    assert encoder.config.grid == (64, 8)
    head = nn.Linear(encoder.dim, 527)
    total = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in head.parameters())
    assert total == expected


# ----- backbone and Encoder contract -----


def _tiny_encoder(**overrides) -> Encoder:
    bconf = dict(dim=32, depth=2, d_state=4) | overrides
    features = FeatureConfig(num_mel_bins=32)  # an export must agree with its own fbank height
    return Encoder(EncoderConfig(backbone="mamba", backbone_config=bconf, input_frames=64, num_mel_bins=32,
                                 features=features))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cls_position": "middle", "norm": "rmsnorm", "bimamba": "v1", "residual_in_fp32": True},
        {"cls_position": "none", "bimamba": "none", "pos_embed": False},
        {"layer_pairing": "sum"},
        {"layer_pairing": "mean", "cls_position": "middle"},
    ],
)
def test_encoder_forward_backward_with_and_without_mask(overrides):
    torch.manual_seed(0)
    encoder = _tiny_encoder(**overrides)
    encoder.train()
    n_cls = encoder.num_cls
    for frames in (64, 96, 48):  # the config grid, longer (interpolated pos embed), shorter (cut)
        fbank = torch.randn(2, frames, 32)
        grid = encoder.grid_for(frames)
        n = grid[0] * grid[1]
        for mask in (None, torch.rand(2, n) < 0.5):
            out = encoder(fbank, mask=mask, output_hidden_states=True)
            assert out.patches.shape == (2, n, 32)
            assert (out.cls is None) == (n_cls == 0)
            if n_cls:
                assert out.cls.shape == (2, n_cls, 32)
            assert len(out.hidden_states) == 2 and all(h.shape == (2, n, 32) for h in out.hidden_states)
            loss = out.patches.square().mean() + (out.cls.sum() if n_cls else 0)
            loss.backward()
            assert encoder.patch_embed.weight.grad is not None
            if mask is not None:
                assert encoder.mask_embed.grad is not None and encoder.mask_embed.grad.abs().sum() > 0
            assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
            encoder.zero_grad()


def test_masked_tokens_change_outputs_and_bidirectionality():
    """Every output depends on tokens before and after it (bidirectional), and on the mask."""
    torch.manual_seed(0)
    encoder = _tiny_encoder(drop_path=0.0).eval()
    fbank = torch.randn(1, 64, 32, requires_grad=True)
    out = encoder(fbank)
    middle = out.patches.shape[1] // 2
    probe = torch.randn(32)  # not .sum(): a LayerNorm output sums to a constant
    (grad,) = torch.autograd.grad(out.patches[0, middle] @ probe, fbank)
    assert grad[0, :16].abs().sum() > 0 and grad[0, -16:].abs().sum() > 0
    causal = _tiny_encoder(bimamba="none", cls_position="none", drop_path=0.0).eval()
    out = causal(fbank)
    (grad,) = torch.autograd.grad(out.patches[0, 0] @ probe, fbank)
    assert grad[0, 16:].abs().sum() == 0  # a causal model's first token sees only the first patch row
    mask = torch.zeros(1, out.patches.shape[1], dtype=torch.bool)
    mask[0, 3] = True
    with torch.no_grad():
        assert not torch.allclose(encoder(fbank).patches, encoder(fbank, mask=mask).patches)


@pytest.mark.parametrize("lean", ["never", "always"])
def test_gradient_checkpointing_gives_the_same_gradients(lean):
    torch.manual_seed(0)
    encoder = _tiny_encoder(drop_path=0.0, lean_backward=lean)
    fbank = torch.randn(2, 64, 32)
    probe = torch.randn(32)
    params = [p for name, p in encoder.named_parameters() if name != "mask_embed"]  # unused without a mask
    ref = torch.autograd.grad((encoder(fbank).patches @ probe).sum(), params)
    encoder.set_gradient_checkpointing(True)
    got = torch.autograd.grad((encoder(fbank).patches @ probe).sum(), params)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)


def test_from_pretrained_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    encoder = _tiny_encoder(cls_position="middle", bimamba="v2").eval()
    fbank = torch.randn(2, 64, 32)
    mask = torch.rand(2, 8) < 0.5
    encoder.save_pretrained(tmp_path / "export")
    loaded = Encoder.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        a, b = encoder(fbank, mask=mask), loaded(fbank, mask=mask)
    assert torch.equal(a.patches, b.patches) and torch.equal(a.cls, b.cls)
    assert loaded.config.backbone_config == encoder.config.backbone_config


def test_optimizer_hooks():
    encoder = _tiny_encoder()
    backbone = encoder.backbone
    nwd = encoder.no_weight_decay()
    assert {"backbone.pos_embed", "backbone.cls_token", "mask_embed"} <= nwd
    assert "backbone.layers.0.mixer.A_log" in nwd and "backbone.layers.1.mixer.D_b" in nwd
    assert "backbone.layers.0.mixer.in_proj.weight" not in nwd
    assert backbone.layer_id("pos_embed") == 0 and backbone.layer_id("cls_token") == 0
    assert backbone.layer_id("layers.0.mixer.in_proj.weight") == 1
    assert backbone.layer_id("layers.1.norm.weight") == 2
    assert backbone.layer_id("norm_f.weight") == 3
    assert encoder.layer_id("patch_embed.weight") == 0


def test_presets_and_config_errors():
    cfg = make_backbone_config("mamba", "small", bimamba="v1")
    assert (cfg.dim, cfg.depth, cfg.d_state, cfg.expand, cfg.d_conv, cfg.rank) == (384, 24, 16, 2, 4, 24)
    assert make_backbone_config("mamba", "base").d_inner == 1536
    assert make_backbone_config("mamba", "tiny").num_cls == 1
    with pytest.raises(ValueError, match="bimamba='v3'"):
        MambaConfig(bimamba="v3")
    with pytest.raises(ValueError, match="cls_position"):
        MambaConfig(cls_position="end")
    with pytest.raises(ValueError, match="even depth"):
        MambaConfig(depth=3, layer_pairing="sum")
    with pytest.raises(ValueError, match="unknown mamba backbone option"):
        make_backbone_config("mamba", "tiny", d_model=3)
    backbone = MambaBackbone(MambaConfig(dim=16, depth=1, d_state=2), grid=(2, 2), patch=(16, 16))
    with pytest.raises(ValueError, match="expected tokens"):
        backbone(torch.randn(1, 5, 16), (2, 2))


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_ssamba_recipes_load_and_build_the_backbone_config(size):
    from pathlib import Path

    from pretrain.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / f"ssamba_{size}.toml")
    cfg = make_backbone_config(recipe.model.backbone, recipe.model.preset, **recipe.model.backbone_config)
    assert cfg.dim == {"tiny": 192, "small": 384, "base": 768}[size]
    assert (cfg.bimamba, cfg.norm, cfg.cls_position, cfg.layer_pairing) == ("v2", "layernorm", "start", "sum")
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.weight_decay) == ("adamw", 1e-4, 5e-8)
    assert (recipe.masking.kind, recipe.masking.count, recipe.train.batch_size) == ("cluster", 300, 64)
