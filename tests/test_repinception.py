"""AudioRepInceptionNeXt: architecture, re-parameterization, masked BN, no-leakage, Encoder integration."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pretrain.backbones import make_backbone_config
from pretrain.backbones.repinception import (
    MaskedBatchNorm2d,
    MultiBranchDWConv,
    RepInceptionClassifier,
    RepInceptionConfig,
    RepInceptionNeXt,
    reparameterize_encoder,
    visibility_masks,
)
from pretrain.encoder import Encoder, EncoderConfig

TINY = {"preset": "tiny"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run single-threaded: on the shared 2-core machine two intra-op threads mostly spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_encoder(frames: int = 64, **overrides) -> Encoder:
    torch.manual_seed(0)
    return Encoder(
        EncoderConfig(backbone="repinception", backbone_config={**TINY, **overrides}, input_frames=frames)
    )


def randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN parameters and statistics (zero-init and unit stats would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def expected_param_count(widths, depths, kernels=(21, 11, 3), ratio=4, stem=(5, 7), classes=309, fused=False):
    """Parameter count written from the §3.3-3.4 equations (BN = weight + bias per channel)."""
    n = stem[0] * stem[1] * widths[0] + 2 * widths[0]
    cin = widths[0]
    for i, (c, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            stride = 2 if (i > 0 and j == 0) else 1
            src = cin if j == 0 else c
            n += src * c + 2 * c  # head 1x1 + BN
            per_cascade = (max(kernels) * c + c) if fused else sum(k * c + 2 * c for k in kernels)
            n += 2 * per_cascade  # time and frequency cascades
            n += c * ratio * c + 2 * ratio * c + ratio * c * c + 2 * c  # MLP 1x1s + BNs
            if src != c or stride != 1:
                n += src * c + 2 * c  # projection shortcut + BN
        cin = c
    return n + widths[-1] * classes + classes


# ---------------------------------------------------------------- architecture


@pytest.mark.timeout(60)
def test_base_parameter_count_and_output_map():
    model = RepInceptionClassifier(RepInceptionConfig(), num_classes=309)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_param_count((64, 128, 256, 512), (3, 4, 6, 3))
    assert round(n / 1e6, 2) == 11.83  # reference/backbones.md §0 (derived from the official code)
    with torch.no_grad():
        assert model.feature_map(torch.zeros(1, 512, 128)).shape == (1, 512, 16, 4)
    model.reparameterize()
    n_fused = sum(p.numel() for p in model.parameters())
    assert n_fused == expected_param_count((64, 128, 256, 512), (3, 4, 6, 3), fused=True)
    assert round(n_fused / 1e6, 2) == 11.69


def test_reference_init_settings():
    model = RepInceptionClassifier(RepInceptionConfig(widths=(8, 16, 16, 32), depths=(1, 2, 1, 1)), 5)
    blocks = [b for stage in model.trunk.stages for b in stage]
    assert all(torch.all(b.project_bn.weight == 0) for b in blocks)  # zero-init final BN
    assert all(b.head_bn.eps == 1e-5 and b.head_bn.momentum == 0.1 for b in blocks)
    # stage 1 keeps width and stride: identity shortcut; every later first block projects.
    assert [b.shortcut is not None for b in blocks] == [False, True, False, True, True]
    assert blocks[3].head.stride == (2, 2) and blocks[3].shortcut.stride == (2, 2)
    assert torch.all(model.fc.bias == 0) and model.fc.weight.std() < 0.02


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="4 stages"):
        RepInceptionConfig(widths=(8, 16, 32), depths=(1, 1, 1))
    with pytest.raises(ValueError, match="odd"):
        RepInceptionConfig(kernels=(21, 10))
    with pytest.raises(ValueError, match="unknown repinception backbone option"):
        make_backbone_config("repinception", preset="tiny", width=3)


# ---------------------------------------------------------------- re-parameterization


def test_cascade_fusion_matches_naive_branches():
    cfg = RepInceptionConfig()
    for axis in ("time", "freq"):
        torch.manual_seed(0)
        cascade = MultiBranchDWConv(6, (21, 11, 3), axis, cfg)
        randomize_bn(cascade)
        cascade.eval()
        h = torch.randn(2, 6, 24, 24)
        # Naive reference from the equations: ReLU(h + sum_k BN_k(DWConv_k(h))), BN in eval form.
        ref = h.clone()
        for conv, bn in zip(cascade.convs, cascade.bns):
            y = conv(h)
            y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            ref = ref + y * bn.weight[:, None, None] + bn.bias[:, None, None]
        ref = torch.relu(ref)
        with torch.no_grad():
            assert torch.allclose(cascade(h), ref, atol=1e-5)
            cascade.reparameterize()
            assert cascade.fused.weight.shape == ((6, 1, 21, 1) if axis == "time" else (6, 1, 1, 21))
            assert len(cascade.convs) == 0
            assert torch.allclose(cascade(h), ref, atol=1e-5)


@pytest.mark.timeout(60)
def test_reparameterized_backbone_equal_in_eval():
    enc = tiny_encoder(64)
    randomize_bn(enc)
    enc.eval()
    x = torch.randn(2, 64, 128)
    mask = torch.rand(2, 32) < 0.5
    with torch.no_grad():
        dense, masked = enc(x).patches, enc(x, mask).patches
        reparameterize_encoder(enc)
        assert enc.config.backbone_config["fused"] and enc.backbone.config.fused
        assert (dense - enc(x).patches).abs().max() < 1e-5
        assert (masked - enc(x, mask).patches).abs().max() < 1e-5


@pytest.mark.timeout(60)
def test_fused_and_unfused_export_round_trip(tmp_path):
    enc = tiny_encoder(64)
    randomize_bn(enc)
    enc.eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        before = enc(x).patches
        enc.save_pretrained(tmp_path / "unfused")
        again = Encoder.from_pretrained(tmp_path / "unfused").eval()
        assert torch.equal(again(x).patches, before)
        assert not json.loads((tmp_path / "unfused" / "config.json").read_text())["backbone_config"]["fused"]

        reparameterize_encoder(enc)
        fused_out = enc(x).patches
        enc.save_pretrained(tmp_path / "fused")
        cfg = json.loads((tmp_path / "fused" / "config.json").read_text())
        assert cfg["backbone_config"]["fused"] is True
        loaded = Encoder.from_pretrained(tmp_path / "fused").eval()
        assert loaded.backbone.trunk.stages[0][0].time_mix.fused is not None  # built fused directly
        assert torch.equal(loaded(x).patches, fused_out)
        assert (fused_out - before).abs().max() < 1e-5


# ---------------------------------------------------------------- masked pretraining


def test_masked_batchnorm_matches_bn_over_visible_positions():
    torch.manual_seed(0)
    bn = MaskedBatchNorm2d(5)
    randomize_bn(bn)
    ref = nn.BatchNorm1d(5)
    ref.load_state_dict(bn.state_dict())
    x = torch.randn(3, 5, 6, 7)
    mask = (torch.rand(3, 1, 6, 7) < 0.6).float()
    y = bn(x, mask)
    # Naive reference (SparK): gather the visible positions and run a plain BN over them.
    visible = x.permute(0, 2, 3, 1)[mask[:, 0].bool()]
    y_ref = ref(visible)
    assert torch.allclose(y.permute(0, 2, 3, 1)[mask[:, 0].bool()], y_ref, atol=1e-5)
    assert torch.all(y.permute(0, 2, 3, 1)[~mask[:, 0].bool()] == 0)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    # Without a mask it is nn.BatchNorm2d.
    plain = nn.BatchNorm2d(5)
    plain.load_state_dict(bn.state_dict())
    assert torch.allclose(bn(x), plain(x))


def test_visibility_masks_strict_at_stride_32():
    mask = torch.zeros(1, 8 * 8, dtype=torch.bool)  # 128x128 input, 8x8 patches of 16x16
    mask[0, 0] = True  # patch (0, 0) masked
    m = visibility_masks(mask, (8, 8), (16, 16), (128, 128), torch.float32)
    assert m[16][0, 0, 0, 0] == 0 and m[16][0, 0].sum() == 63
    assert m[4][0, 0, :4, :4].sum() == 0 and m[4][0, 0].sum() == 32 * 32 - 16
    assert m[32][0, 0, 0, 0] == 0 and m[32][0, 0].sum() == 15  # the whole 32x32 cell is hidden


@pytest.mark.timeout(60)
def test_no_leakage_from_masked_content_in_training_mode():
    enc = tiny_encoder(64, zero_init_final_bn=False)
    randomize_bn(enc)
    enc.train()
    torch.manual_seed(3)
    x = torch.randn(2, 64, 128)
    mask = torch.rand(2, 4 * 8) < 0.5
    mask[:, :8] = False  # the first 32 frames: stride-32 cells fully visible, so every stage is exercised
    pixel_mask = mask.view(2, 4, 1, 8, 1).expand(2, 4, 16, 8, 16).reshape(2, 64, 128)
    other = torch.where(pixel_mask, torch.randn_like(x) * 5, x)  # new masked content only
    out1 = enc(x, mask, output_hidden_states=True)
    out2 = enc(other, mask, output_hidden_states=True)
    visible = ~mask
    assert torch.allclose(out1.patches[visible], out2.patches[visible], atol=1e-6, rtol=0)
    # Stronger: masked patches' features come from visible context only, so they do not change either.
    assert torch.allclose(out1.patches, out2.patches, atol=1e-6, rtol=0)
    for h1, h2 in zip(out1.hidden_states, out2.hidden_states):
        assert torch.allclose(h1, h2, atol=1e-6, rtol=0)
    # Visible content does change the visible features.
    changed = x.clone()
    changed[0, :16, :16] += 1.0  # patch 0 of clip 0, visible
    out3 = enc(changed, mask)
    assert not torch.allclose(out3.patches[0, 0], out1.patches[0, 0], atol=1e-4)


@pytest.mark.timeout(60)
def test_leakage_check_detects_a_missing_remask(monkeypatch):
    """The check above can fail: skip one re-masking step (the input zeroing) and content leaks."""
    import pretrain.backbones.repinception as rin

    enc = tiny_encoder(64, zero_init_final_bn=False)
    randomize_bn(enc)
    enc.train()
    torch.manual_seed(3)
    x = torch.randn(2, 64, 128)
    mask = torch.rand(2, 32) < 0.5
    pixel_mask = mask.view(2, 4, 1, 8, 1).expand(2, 4, 16, 8, 16).reshape(2, 64, 128)
    other = torch.where(pixel_mask, torch.randn_like(x) * 5, x)
    original = rin.visibility_masks

    def input_not_zeroed(*args, **kwargs):
        masks = original(*args, **kwargs)
        masks[1] = torch.ones_like(masks[1])
        return masks

    monkeypatch.setattr(rin, "visibility_masks", input_not_zeroed)
    leak = enc(x, mask).patches[~mask] - enc(other, mask).patches[~mask]
    assert leak.abs().max() > 1e-3


@pytest.mark.timeout(60)
def test_dense_path_has_no_masking_ops(monkeypatch):
    enc = tiny_encoder(64)
    enc.train()
    calls = []
    original = MaskedBatchNorm2d.forward

    def spy(self, x, mask=None):
        calls.append(mask is not None)
        return original(self, x, mask)

    monkeypatch.setattr(MaskedBatchNorm2d, "forward", spy)
    x = torch.randn(2, 64, 128)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        enc(x)
    assert calls and not any(calls)
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {"aten::mul", "aten::max_pool2d_with_indices_backward", "aten::where", "aten::rsub"}
    calls.clear()
    enc(x, torch.rand(2, 32) < 0.5)
    assert all(calls)


# ---------------------------------------------------------------- through the Encoder


@pytest.mark.timeout(90)
@pytest.mark.parametrize("frames", [64, 96, 100])
def test_encoder_forward_backward_with_and_without_mask(frames):
    enc = tiny_encoder(64)
    enc.train()
    x = torch.randn(2, frames, 128)
    nt, nf = enc.grid_for(frames)
    assert (nt, nf) == (frames // 16, 8)
    for mask in (None, torch.rand(2, nt * nf) < 0.6):
        out = enc(x, mask, output_hidden_states=True)
        assert out.patches.shape == (2, nt * nf, enc.dim) and out.cls is None and out.grid == (nt, nf)
        assert [h.shape[-1] for h in out.hidden_states] == [32, 64, 128, 256]
        assert all(h.shape[:2] == (2, nt * nf) for h in out.hidden_states)
        enc.zero_grad()
        out.patches.square().mean().backward()
        for name, p in enc.named_parameters():
            if mask is None and "mask_token" in name:
                assert p.grad is None  # the dense path never touches the mask tokens
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.timeout(60)
def test_overlapping_grid_is_resampled_and_mask_rejected():
    enc = tiny_encoder(64)
    enc.eval()
    enc.set_stride((10, 10))
    x = torch.randn(1, 64, 128)
    grid = enc.grid_for(64)
    assert grid == (5, 12)
    assert enc(x).patches.shape == (1, 60, enc.dim)
    with pytest.raises(ValueError, match="non-overlapping"):
        enc.backbone(x, grid, torch.zeros(1, 60, dtype=torch.bool))


@pytest.mark.timeout(60)
def test_save_and_load_bit_exact_and_gradient_checkpointing(tmp_path):
    enc = tiny_encoder(64)
    x = torch.randn(2, 64, 128)
    mask = torch.rand(2, 32) < 0.5
    enc.train()
    enc(x, mask)  # move the running statistics away from their init
    enc.eval()
    enc.save_pretrained(tmp_path / "m")
    loaded = Encoder.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(enc(x, mask).patches, loaded(x, mask).patches)
        assert torch.equal(enc(x).patches, loaded(x).patches)
    # Activation checkpointing gives the same gradients.
    grads = []
    for ckpt in (False, True):
        clone = Encoder.from_pretrained(tmp_path / "m").train()
        clone.set_gradient_checkpointing(ckpt)
        clone(x, mask).patches.sum().backward()
        grads.append(clone.backbone.trunk.stem_conv.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_layer_ids_and_no_weight_decay():
    enc = tiny_encoder(64)
    bb: RepInceptionNeXt = enc.backbone
    assert bb.num_layers == 4
    assert enc.layer_id("backbone.trunk.stem_conv.weight") == 0
    assert enc.layer_id("backbone.trunk.stages.2.0.head.weight") == 3
    assert enc.layer_id("backbone.decoder.merge.weight") == 5
    nwd = enc.no_weight_decay()
    assert "backbone.decoder.mask_token16" in nwd and "backbone.trunk.stem_bn.weight" in nwd
    assert "backbone.trunk.stem_conv.weight" not in nwd
