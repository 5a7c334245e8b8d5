"""AudioRWKV backbone: the chunked WKV-7 kernel against a per-step oracle, the time-mix against a
naive re-statement of the equations, parameter counts, and the Encoder contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.backbones import build_backbone, make_backbone_config
from pretrain.backbones.rwkv7 import RWKV7Backbone, RWKV7Config, lora_rank
from pretrain.backbones.wkv7 import LOG_DECAY_FLOOR, wkv7, wkv7_bidirectional
from pretrain.encoder import Encoder, EncoderConfig

# ----------------------------------------------------------------------------------------------
# Oracles, written from the equations (backbones.md §1.4 step 8), one token at a time.


def naive_wkv7(r, log_w, k, v, a, b):
    """S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T;  y_t = S_t r_t  (S: value x key)."""
    bsz, length, heads, n = r.shape
    state = r.new_zeros(bsz, heads, n, n)
    w = log_w.exp()
    out = []
    for t in range(length):
        sa = torch.einsum("bhij,bhj->bhi", state, a[:, t])
        state = (
            state * w[:, t, :, None, :]
            + sa[..., :, None] * b[:, t, :, None, :]
            + v[:, t, :, :, None] * k[:, t, :, None, :]
        )
        out.append(torch.einsum("bhij,bhj->bhi", state, r[:, t]))
    return torch.stack(out, dim=1)


def kernel_inputs(bsz, length, heads, n, dtype, floor=False, seed=0):
    """RWKV-7-like inputs: unit removal key kappa, alpha in (0,1), decay in [floor, 0)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    shape = (bsz, length, heads, n)
    r, k, v = rnd(*shape), rnd(*shape), rnd(*shape)
    kappa = F.normalize(rnd(*shape), dim=-1)
    alpha = torch.rand(*shape, generator=g, dtype=torch.float64)
    if floor:
        log_w = torch.full(shape, LOG_DECAY_FLOOR, dtype=torch.float64)
    else:
        log_w = LOG_DECAY_FLOOR * torch.rand(*shape, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (r, log_w, k, v, -kappa, kappa * alpha)]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# ----------------------------------------------------------------------------------------------
# Kernel


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [16, 32, 64])
@pytest.mark.parametrize("floor", [False, True])
def test_chunked_equals_naive_forward(chunk, floor):
    # 150 is not a multiple of any chunk size: exercises the internal padding.
    x = kernel_inputs(2, 150, 2, 16, torch.float64, floor=floor, seed=chunk)
    ref = naive_wkv7(*x)
    assert rel_err(wkv7(*x, chunk_size=chunk), ref) <= 1e-10
    x32 = [t.float() for t in x]
    y32 = wkv7(*x32, chunk_size=chunk)
    assert y32.dtype == torch.float32
    assert rel_err(y32, ref) <= 1e-4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("impl", ["pure", "autograd"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("floor", [False, True])
def test_chunked_equals_naive_gradients(dtype, tol, floor, impl):
    base = kernel_inputs(1, 70, 2, 16, dtype, floor=floor, seed=3)
    probe = torch.randn(1, 70, 2, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def grads(fn, inputs):
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        (fn(*inputs).double() * probe).sum().backward()
        return [t.grad for t in inputs]

    ref = grads(naive_wkv7, [t.double() for t in base])
    got = grads(lambda *t: wkv7(*t, chunk_size=16, impl=impl), base)
    for name, g_ref, g_got in zip(["r", "log_w", "k", "v", "a", "b"], ref, got):
        assert rel_err(g_got, g_ref) <= tol, name


@pytest.mark.timeout(30)
@pytest.mark.parametrize("length", [1, 5, 16, 33])
def test_short_and_ragged_lengths(length):
    x = kernel_inputs(1, length, 1, 8, torch.float64, seed=length)
    assert rel_err(wkv7(*x, chunk_size=16), naive_wkv7(*x)) <= 1e-10


@pytest.mark.timeout(30)
def test_bidirectional_gate_one_is_causal_and_backward_half_is_flipped_scan():
    x = kernel_inputs(2, 40, 2, 8, torch.float64, seed=5)
    causal = wkv7(*x, chunk_size=16)
    ones = torch.ones(2, 40, 2, dtype=torch.float64)
    assert torch.allclose(wkv7_bidirectional(*x, gate=ones, chunk_size=16), causal, rtol=0, atol=1e-12)
    backward_half = wkv7_bidirectional(*x, gate=torch.zeros_like(ones), chunk_size=16)
    flipped = wkv7(*[t.flip(1) for t in x], chunk_size=16).flip(1)
    assert torch.allclose(backward_half, flipped, rtol=0, atol=1e-12)
    # ... and the backward half is a true anti-causal scan: the oracle on reversed time.
    assert rel_err(backward_half, naive_wkv7(*[t.flip(1) for t in x]).flip(1)) <= 1e-10
    gate = torch.rand(2, 40, 2, dtype=torch.float64)
    mixed = wkv7_bidirectional(*x, gate=gate, chunk_size=16)
    g = gate.unsqueeze(-1)
    assert torch.allclose(mixed, g * causal + (1 - g) * flipped, rtol=0, atol=1e-12)
    assert torch.allclose(wkv7_bidirectional(*x, chunk_size=16), causal + flipped, rtol=0, atol=1e-12)


@pytest.mark.timeout(30)
def test_fp32_at_the_decay_floor_long_sequence_is_finite_and_accurate():
    x = kernel_inputs(1, 600, 1, 16, torch.float64, floor=True, seed=11)
    ref = naive_wkv7(*x)
    for chunk in (16, 64, 128):
        y = wkv7(*[t.float() for t in x], chunk_size=chunk)
        assert torch.isfinite(y).all()
        assert rel_err(y, ref) <= 1e-4, chunk


def test_kernel_computes_in_fp32_under_autocast_and_for_bf16_inputs():
    x = kernel_inputs(1, 40, 1, 16, torch.float32, seed=2)
    ref = wkv7(*x, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = wkv7(*x, chunk_size=16)
    assert y.dtype == torch.float32 and rel_err(y, ref) <= 1e-6
    xb = [t.bfloat16() for t in x]
    yb = wkv7(*xb, chunk_size=16)
    assert yb.dtype == torch.bfloat16
    assert rel_err(yb, wkv7(*[t.float() for t in xb], chunk_size=16)) <= 1e-2  # only the output rounding


def test_kernel_rejects_bad_inputs():
    x = kernel_inputs(1, 8, 1, 4, torch.float32)
    with pytest.raises(ValueError, match="log_w has shape"):
        wkv7(x[0], x[1][:, :4], *x[2:])
    with pytest.raises(ValueError, match="chunk_size"):
        wkv7(*x, chunk_size=0)
    with pytest.raises(ValueError, match="gate must have shape"):
        wkv7_bidirectional(*x, gate=torch.ones(1, 8))


# ----------------------------------------------------------------------------------------------
# Time-mix against the equations (naive 2D shift by explicit neighbours, per-step scans)


def naive_grid_shift(x, weight, grid):
    """sum over the 3x3 neighbourhood (zero outside the grid) of weight * x, minus x."""
    nt, nf = grid
    bsz, n, c = x.shape
    img = x.view(bsz, nt, nf, c)
    out = torch.zeros_like(img)
    for t in range(nt):
        for f in range(nf):
            for dt in (-1, 0, 1):
                for df in (-1, 0, 1):
                    if 0 <= t + dt < nt and 0 <= f + df < nf:
                        out[:, t, f] += weight[:, 0, dt + 1, df + 1] * img[:, t + dt, f + df]
    return (out - img).view(bsz, n, c)


def naive_time_mix(tm, x, v_first, grid):
    h, n = tm.heads, tm.head_size
    bsz, length, c = x.shape
    xx = naive_grid_shift(x, tm.shift.depthwise.weight, grid)
    lerp = {name: x + xx * getattr(tm, "x_" + name) for name in "rwkvag"}
    r = lerp["r"] @ tm.receptance.weight.T
    d = tm.w0 + torch.tanh(lerp["w"] @ tm.w1) @ tm.w2
    w = torch.exp(-math.exp(-0.5) * torch.sigmoid(d))  # backbones.md §1.4 step 3
    k = lerp["k"] @ tm.key.weight.T
    v = lerp["v"] @ tm.value.weight.T
    if tm.layer == 0:
        v_first = v
    else:
        mix = torch.sigmoid(tm.v0 + (lerp["v"] @ tm.v1) @ tm.v2)
        v = (1 - mix) * v + mix * v_first
    alpha = torch.sigmoid(tm.a0 + (lerp["a"] @ tm.a1) @ tm.a2)
    g = torch.sigmoid(lerp["g"] @ tm.g1) @ tm.g2
    kk = (k * tm.k_k).view(bsz, length, h, n)
    kappa = kk / kk.norm(dim=-1, keepdim=True)
    k = k * (1 + (alpha - 1) * tm.k_a)

    def hd(t):
        return t.reshape(bsz, length, h, n)

    args = (hd(r), hd(w).log(), hd(k), hd(v), -kappa, kappa * hd(alpha))
    y_f = naive_wkv7(*args)
    y_b = naive_wkv7(*[t.flip(1) for t in args]).flip(1)
    gamma = torch.sigmoid(torch.einsum("blhn,hn->blh", hd(xx), tm.bi_gate)).unsqueeze(-1)
    y = gamma * y_f + (1 - gamma) * y_b
    mean = y.mean(-1, keepdim=True)
    var = y.var(-1, unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + 1e-5 * 64) * tm.ln_x.weight.view(h, n) + tm.ln_x.bias.view(h, n)
    y = y + (hd(r) * hd(k) * tm.r_k).sum(-1, keepdim=True) * hd(v)
    return (y.reshape(bsz, length, c) * g) @ tm.output.weight.T, v_first


@pytest.mark.timeout(60)
def test_time_mix_matches_equations():
    torch.manual_seed(0)
    cfg = RWKV7Config(dim=32, depth=3, head_size=16, chunk_size=16)
    model = RWKV7Backbone(cfg, grid=(5, 4), patch=(16, 16)).double()
    with torch.no_grad():  # zero-initialized pieces would hide mistakes: randomize everything
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    grid = (5, 4)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    v_first = None
    for layer in (0, 1):
        tm = model.blocks[layer].att
        got, got_vf = tm(x, v_first, grid)
        ref, ref_vf = naive_time_mix(tm, x, v_first, grid)
        assert rel_err(got, ref) <= 1e-10, layer
        assert torch.equal(got_vf, ref_vf) or rel_err(got_vf, ref_vf) <= 1e-12
        v_first = got_vf


def test_initialization_follows_x070():
    cfg = RWKV7Config(dim=128, depth=4, head_size=64)
    model = RWKV7Backbone(cfg, grid=(4, 8), patch=(16, 16))
    tm = model.blocks[1].att
    c = 128
    # w in (0.5452, 1); the decay at init is the x070 w0 formula
    lin = torch.arange(c) / (c - 1) - 0.5
    assert torch.allclose(tm.v0.flatten(), 0.73 - 0.4 * lin, atol=1e-6)
    assert torch.allclose(tm.k_k.flatten(), 0.71 - 0.1 * lin, atol=1e-6)
    assert torch.all(tm.k_a == 1.02) and torch.all(tm.r_k == -0.04)
    assert torch.all(tm.w1 == 0) and torch.all(tm.a1 == 0) and torch.all(tm.output.weight == 0)
    # second LoRA matrices: orthogonal rows scaled by 0.1
    assert torch.allclose(tm.w2 @ tm.w2.T, 0.01 * torch.eye(tm.w2.shape[0]), atol=1e-6)
    assert tm.key.weight.abs().max() <= 0.05 / math.sqrt(c)
    assert tm.shift.depthwise.weight.abs().max() <= 0.5 / math.sqrt(c)
    assert tm.bi_gate.numel() == c and tm.bi_gate.abs().max() < 1e-3  # gate starts at sigma = 0.5
    assert tm.ln_x.eps == pytest.approx(6.4e-4)
    assert torch.all(model.blocks[0].ffn.value.weight == 0)
    ddd = torch.arange(c) / c
    assert torch.allclose(tm.x_r.flatten(), 1 - ddd ** (0.2 * (1 - 1 / 4)), atol=1e-6)


def test_lora_ranks_and_parameter_counts():
    """A-RWKV counts with its 527-class bias-free head, Conv2d(1, C, 16) stem, pos embed for 496 tokens."""
    assert [lora_rank(384, f, p) for f, p in ((1.8, 0.5), (1.3, 0.5), (0.6, 0.8))] == [32, 32, 64]
    assert [lora_rank(768, f, p) for f, p in ((1.8, 0.5), (1.3, 0.5), (0.6, 0.8))] == [64, 32, 128]
    expected = {"t": 6.24e6, "s": 23.4e6, "b": 91.6e6}
    for preset, count in expected.items():
        with torch.device("meta"):
            model = build_backbone(
                "rwkv7", make_backbone_config("rwkv7", preset), grid=(62, 8), patch=(16, 16)
            )
        dim = model.dim
        assert model.pos_embed.shape == (1, 496, dim)
        total = sum(p.numel() for p in model.parameters()) + 527 * dim + (256 * dim + dim)
        print(f"A-RWKV-{preset.upper()}: {total:,} parameters (with 527-class head and stem)")
        assert round(total / 1e6, 2 if preset == "t" else 1) == pytest.approx(count / 1e6), preset
    assert make_backbone_config("rwkv7", "small").dim == 384


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="token_shift"):
        RWKV7Config(token_shift="shift1d")
    with pytest.raises(ValueError, match="bi_combine"):
        RWKV7Config(bi_combine="max")
    with pytest.raises(ValueError, match="head_size"):
        RWKV7Config(dim=100, head_size=64)
    with pytest.raises(ValueError, match="unknown rwkv7 backbone option"):
        make_backbone_config("rwkv7", "t", heads=3)


def test_dwsep_starts_as_depthwise_and_sum_option_runs():
    torch.manual_seed(0)
    a = RWKV7Backbone(RWKV7Config(dim=32, depth=2, head_size=16), grid=(3, 4), patch=(16, 16))
    b = RWKV7Backbone(
        RWKV7Config(dim=32, depth=2, head_size=16, token_shift="dwsep"), grid=(3, 4), patch=(16, 16)
    )
    b.load_state_dict(a.state_dict(), strict=False)  # the extra pointwise convs keep their identity init
    x = torch.randn(2, 12, 32)
    assert torch.allclose(a(x, (3, 4)).patches, b(x, (3, 4)).patches, atol=1e-6)
    s = RWKV7Backbone(
        RWKV7Config(dim=32, depth=2, head_size=16, bi_combine="sum"), grid=(3, 4), patch=(16, 16)
    )
    assert s.blocks[0].att.bi_gate is None
    assert torch.isfinite(s(x, (3, 4)).patches).all()


def test_layer_ids_and_weight_decay_groups():
    model = RWKV7Backbone(RWKV7Config(dim=32, depth=3, head_size=16), grid=(2, 4), patch=(16, 16))
    assert model.layer_id("pos_embed") == 0
    assert model.layer_id("blocks.0.att.w1") == 1
    assert model.layer_id("blocks.2.ffn.key.weight") == 3
    assert model.layer_id("norm.weight") == 4
    nwd = model.no_weight_decay()
    assert {"pos_embed", "blocks.0.att.w0", "blocks.0.att.w1", "blocks.1.ln1.weight"} <= nwd
    assert "blocks.0.att.key.weight" not in nwd and "blocks.0.att.shift.depthwise.weight" not in nwd


# ----------------------------------------------------------------------------------------------
# Through the Encoder

TINY = {"dim": 64, "depth": 2, "head_size": 32, "chunk_size": 16}


def tiny_encoder(frames=64) -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig(backbone="rwkv7", backbone_config=dict(TINY), input_frames=frames))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("frames", [64, 96])
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_forward_backward(frames, masked):
    enc = tiny_encoder(64)
    grid = enc.grid_for(frames)
    fbank = torch.randn(2, frames, 128)
    mask = None
    if masked:
        mask = torch.zeros(2, grid[0] * grid[1], dtype=torch.bool)
        mask[:, ::3] = True
    out = enc(fbank, mask=mask, output_hidden_states=True)
    assert out.patches.shape == (2, grid[0] * grid[1], 64) and out.cls is None
    assert len(out.hidden_states) == 2 and out.grid == grid
    out.patches.square().mean().backward()
    assert enc.backbone.pos_embed.grad is not None and torch.isfinite(enc.backbone.pos_embed.grad).all()
    # Every time-mix parameter gets a gradient (zero-initialized W_o still passes one to itself).
    assert enc.backbone.blocks[1].att.output.weight.grad.abs().sum() > 0
    if masked:
        assert enc.mask_embed.grad.abs().sum() > 0


@pytest.mark.timeout(60)
def test_bidirectional_context_reaches_every_token():
    """A change at the last patch must move the first patch's features (Bi-WKV + 2D shift)."""
    enc = tiny_encoder(64).eval()
    with torch.no_grad():  # W_o = 0 at init would silence the time-mix
        for blk in enc.backbone.blocks:
            blk.att.output.weight.normal_(std=0.1)
    fbank = torch.randn(1, 64, 128)
    base = enc(fbank).patches
    bumped = fbank.clone()
    bumped[:, -16:, -16:] += 1.0
    assert (enc(bumped).patches[0, 0] - base[0, 0]).abs().max() > 1e-6


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bi_combine", ["gate", "sum"])
def test_backbone_gradients_equal_plain_autograd(bi_combine):
    """The lean block (time-mix core, block-wise WKV packing, channels-last shift) against the same
    backbone with wkv_impl="autograd" (every op under plain autograd): every parameter gradient, fp64."""
    torch.manual_seed(0)
    grads = {}
    for impl in ("pure", "autograd"):
        cfg = RWKV7Config(dim=32, depth=3, head_size=16, chunk_size=8, wkv_impl=impl, bi_combine=bi_combine)
        torch.manual_seed(0)
        model = RWKV7Backbone(cfg, grid=(6, 4), patch=(16, 16)).double()
        with torch.no_grad():  # zero-initialized pieces (W_o, LoRA) would hide mistakes: randomize all
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
        x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        probe = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        (model(x, (6, 4)).patches * probe).sum().backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    for n, g in grads["autograd"].items():
        if g is None:  # layer 0 has no value residual: its v0/v1/v2 get no gradient on either path
            assert grads["pure"][n] is None and n.startswith("blocks.0.att.v"), n
            continue
        assert rel_err(grads["pure"][n], g) <= 1e-10, n


@pytest.mark.timeout(60)
def test_gradient_checkpointing_gives_the_same_gradients():
    enc = tiny_encoder(64)
    fbank = torch.randn(2, 64, 128)
    enc(fbank).patches.sum().backward()
    ref = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad()
    enc.set_gradient_checkpointing(True)
    enc(fbank).patches.sum().backward()
    for n, p in enc.named_parameters():
        if n in ref:
            assert torch.allclose(p.grad, ref[n], atol=1e-6), n


@pytest.mark.timeout(60)
def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    enc = tiny_encoder(64).eval()
    fbank = torch.randn(2, 64, 128)
    with torch.no_grad():
        ref = enc(fbank).patches
    enc.save_pretrained(tmp_path / "export")
    loaded = Encoder.from_pretrained(tmp_path / "export").eval()
    assert loaded.config.backbone == "rwkv7"
    assert loaded.config.backbone_config == enc.config.backbone_config
    with torch.no_grad():
        assert torch.equal(loaded(fbank).patches, ref)


@pytest.mark.parametrize("size,dim", [("t", 192), ("s", 384), ("b", 768)])
def test_recipes_load_and_name_the_preset(size, dim):
    from pathlib import Path

    from pretrain.config import load_recipe

    path = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / f"arwkv_{size}.toml"
    recipe = load_recipe(path)
    assert recipe.model.backbone == "rwkv7" and recipe.optim.name == "adamw"
    cfg = make_backbone_config("rwkv7", recipe.model.preset, **recipe.model.backbone_config)
    assert (cfg.dim, cfg.depth, cfg.head_size) == (dim, 12, 64)
