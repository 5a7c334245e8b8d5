"""Import of published SSAST/AST checkpoints and export to Hugging Face ``ASTModel``.

The "published" state dicts are built here with the exact key names and shapes of SSAST's
``ASTModel`` (``src/models/ast_models.py``: timm 0.4.5 DeiT under ``v``, ``DataParallel``'s
``module.`` prefix, ``mask_embed``, ``cpredlayer``/``gpredlayer``, ``p_input_fdim/tdim``; AST's
fine-tuned ``mlp_head``) at tiny depth. The oracle for the conversion is a re-implementation of
SSAST's forward written from its equations on the *original* tensors: Conv2d over ``(B, 1, F, T)``
with kernel ``(fshape, tshape)``, frequency-major tokens, cls (+ dist) tokens, timm pre-LN blocks
(LayerNorm eps 1e-6), ``nn.Unfold`` patch targets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pretrain.encoder import CLASSIFIER_HEAD_NAME, HEADS_NAME, Encoder, EncoderConfig, ExportError
from pretrain.export_hf import export_hf
from pretrain.features import FeatureConfig, Normalization, fbank, normalize, pad_or_crop
from pretrain.import_ssast import import_checkpoint, load_torch_checkpoint, to_ssast_state_dict
from pretrain.interop import add_cli
from pretrain.patches import freq_to_time_major, time_to_freq_major
from pretrain.ssast import SSASTObjective, patch_targets

DIM = 192  # SSAST-Tiny width (3 heads); depth kept at 2 for speed
UNUSED_TIMM = (
    "module.v.head.weight",
    "module.v.head.bias",
    "module.v.head_dist.weight",
    "module.v.head_dist.bias",
)


def make_ssast_state(
    fshape: int = 16,
    tshape: int = 16,
    fdim: int = 128,
    tdim: int = 64,
    num_cls: int = 2,
    depth: int = 2,
    dim: int = DIM,
    stride: tuple[int, int] | None = None,
    pretraining: bool = True,
    mlp_head_labels: int = 0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A state dict with the published key names and shapes (``module.`` prefixed)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    fstride, tstride = stride or (fshape, tshape)
    nf, nt = (fdim - fshape) // fstride + 1, (tdim - tshape) // tstride + 1
    s: dict[str, torch.Tensor] = {"v.cls_token": r(1, 1, dim, scale=0.5)}
    if num_cls == 2:
        s["v.dist_token"] = r(1, 1, dim, scale=0.5)
    s["v.pos_embed"] = r(1, nf * nt + num_cls, dim, scale=0.5)
    s["v.patch_embed.proj.weight"] = r(dim, 1, fshape, tshape, scale=0.1)
    s["v.patch_embed.proj.bias"] = r(dim)
    for i in range(depth):
        b = f"v.blocks.{i}."
        s |= {
            b + "norm1.weight": 1 + r(dim),
            b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim, scale=0.1),
            b + "attn.qkv.bias": r(3 * dim),
            b + "attn.proj.weight": r(dim, dim),
            b + "attn.proj.bias": r(dim),
            b + "norm2.weight": 1 + r(dim),
            b + "norm2.bias": r(dim),
            b + "mlp.fc1.weight": r(4 * dim, dim),
            b + "mlp.fc1.bias": r(4 * dim),
            b + "mlp.fc2.weight": r(dim, 4 * dim),
            b + "mlp.fc2.bias": r(dim),
        }
    s |= {"v.norm.weight": 1 + r(dim), "v.norm.bias": r(dim)}
    # timm's untrained ImageNet classifiers, present in the published files
    s |= {"v.head.weight": r(1000, dim), "v.head.bias": r(1000)}
    if num_cls == 2:
        s |= {"v.head_dist.weight": r(1000, dim), "v.head_dist.bias": r(1000)}
    if pretraining:
        s["p_input_fdim"] = torch.tensor(fdim)
        s["p_input_tdim"] = torch.tensor(tdim)
        s["mask_embed"] = r(1, 1, dim, scale=0.5)
        for head in ("cpredlayer", "gpredlayer"):
            s |= {
                f"{head}.0.weight": r(dim, dim, scale=0.1),
                f"{head}.0.bias": r(dim),
                f"{head}.2.weight": r(fshape * tshape, dim, scale=0.1),
                f"{head}.2.bias": r(fshape * tshape),
            }
    if mlp_head_labels:
        s |= {
            "mlp_head.0.weight": 1 + r(dim),
            "mlp_head.0.bias": r(dim),
            "mlp_head.1.weight": r(mlp_head_labels, dim),
            "mlp_head.1.bias": r(mlp_head_labels),
        }
    return {"module." + k: v for k, v in s.items()}


# ----- the oracle: SSAST's forward from its equations, on the original tensors -----


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def ssast_forward(
    sd: dict[str, torch.Tensor],
    fb: torch.Tensor,
    stride: tuple[int, int],
    mask_fmajor: torch.Tensor | None = None,
) -> torch.Tensor:
    """All tokens (cls first, then patches frequency-major) after the final norm. ``stride`` = (f, t)."""
    s = {k[len("module.") :]: v.double() for k, v in sd.items()}
    x = fb.double().unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
    x = F.conv2d(x, s["v.patch_embed.proj.weight"], s["v.patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)  # (B, nf*nt, D), index f*nt + t
    if mask_fmajor is not None:
        m = mask_fmajor.unsqueeze(-1).double()
        x = x * (1 - m) + m * s["mask_embed"]
    b = x.shape[0]
    cls = [s["v.cls_token"]] + ([s["v.dist_token"]] if "v.dist_token" in s else [])
    x = torch.cat([c.expand(b, -1, -1) for c in cls] + [x], dim=1) + s["v.pos_embed"]
    d = x.shape[-1]
    heads = d // 64
    i = 0
    while f"v.blocks.{i}.norm1.weight" in s:
        p = f"v.blocks.{i}."
        h = _layer_norm(x, s[p + "norm1.weight"], s[p + "norm1.bias"])
        qkv = h @ s[p + "attn.qkv.weight"].T + s[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, -1, d)
        x = x + o @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
        h = _layer_norm(x, s[p + "norm2.weight"], s[p + "norm2.bias"])
        h = F.gelu(h @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"])
        x = x + h @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
        i += 1
    return _layer_norm(x, s["v.norm.weight"], s["v.norm.bias"])


def ssast_head(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    s = {k[len("module.") :]: v.double() for k, v in sd.items()}
    h = torch.relu(x @ s[f"{name}.0.weight"].T + s[f"{name}.0.bias"])
    return h @ s[f"{name}.2.weight"].T + s[f"{name}.2.bias"]


def save_pth(tmp_path, sd, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def random_fbank(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# Import
# ------------------------------------------------------------------------------------------------


def test_token_order_conversion_known_pattern(tmp_path):
    fshape = tshape = 16
    sd = make_ssast_state(tdim=64)  # grid nf=8 x nt=4
    nf, nt = 8, 4
    pos = sd["module.v.pos_embed"]
    for f in range(nf):
        for t in range(nt):
            pos[0, 2 + f * nt + t] = 1000 * f + t  # encode (f, t)
    w = sd["module.v.patch_embed.proj.weight"]
    for i in range(fshape):
        for j in range(tshape):
            w[:, 0, i, j] = 100 * i + j  # kernel row i = mel offset, column j = frame offset
    out = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out")
    state = load_file(str(out / "model.safetensors"))
    ours = state["backbone.pos_embed"]
    assert torch.equal(ours[:, :2], pos[:, :2])  # cls part kept
    for t in range(nt):
        for f in range(nf):
            assert torch.all(ours[0, 2 + t * nf + f] == 1000 * f + t)
    k = state["patch_embed.weight"]  # ours: (D, 1, frames, mel)
    for j in range(tshape):
        for i in range(fshape):
            assert torch.all(k[:, 0, j, i] == 100 * i + j)
    # the two reorderings are inverse of each other
    x = torch.randn(3, nf * nt, 5)
    assert torch.equal(time_to_freq_major(freq_to_time_major(x, nf, nt), nt, nf), x)


CASES = {
    "patch-2cls": dict(fshape=16, tshape=16, tdim=64, num_cls=2),
    "patch-1cls": dict(fshape=16, tshape=16, tdim=64, num_cls=1),
    "frame-2cls": dict(fshape=128, tshape=2, tdim=32, num_cls=2),
    "frame-1cls": dict(fshape=128, tshape=2, tdim=32, num_cls=1),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_tensor_for_tensor(tmp_path, case):
    kw = CASES[case]
    sd = make_ssast_state(**kw)
    out = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    fshape, tshape, tdim = kw["fshape"], kw["tshape"], kw["tdim"]
    assert cfg["patch"] == [tshape, fshape] and cfg["stride"] == [tshape, fshape]
    assert cfg["pos_grid"] == [(tdim - tshape) // tshape + 1, (128 - fshape) // fshape + 1]
    assert cfg["input_frames"] == tdim and cfg["num_mel_bins"] == 128
    bc = cfg["backbone_config"]
    assert (bc["dim"], bc["depth"], bc["num_heads"], bc["num_cls"]) == (DIM, 2, 3, kw["num_cls"])
    assert cfg["trained_on"]["imported_from"]["dropped_keys"] == sorted(
        k[len("module.") :] for k in UNUSED_TIMM if k in sd
    )
    enc = Encoder.from_pretrained(out)
    heads = load_file(str(out / HEADS_NAME))
    back = to_ssast_state_dict(enc, heads, fmt="ssast")
    expected = {k: v for k, v in sd.items() if k not in UNUSED_TIMM}
    assert sorted(back) == sorted(expected)
    for k, v in expected.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_ssast_forward(tmp_path, case):
    kw = CASES[case]
    sd = make_ssast_state(**kw)
    enc = Encoder.from_pretrained(import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out")).double().eval()
    fb = random_fbank(kw["tdim"])
    nf, nt = 128 // kw["fshape"], kw["tdim"] // kw["tshape"]
    c = kw["num_cls"]
    mask_f = torch.rand(2, nf * nt, generator=torch.Generator().manual_seed(3)) < 0.5
    for mask in (None, mask_f):
        ref = ssast_forward(sd, fb, (kw["fshape"], kw["tshape"]), mask)
        ours_mask = None if mask is None else freq_to_time_major(mask, nf, nt)
        with torch.no_grad():
            out = enc(fb.double(), ours_mask)
        assert out.grid == (nt, nf)
        expect = freq_to_time_major(ref[:, c:], nf, nt)
        assert (out.patches - expect).abs().max() < 1e-5
        assert (out.cls - ref[:, :c]).abs().max() < 1e-5


@pytest.mark.timeout(60)
def test_heads_permuted_losses_equal_ssast(tmp_path):
    """gen/disc heads: per-patch outputs are SSAST's permuted; MSE and InfoNCE equal SSAST's mpg/mpc."""
    fshape, tshape, tdim = 16, 16, 64
    sd = make_ssast_state(tdim=tdim)
    out = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out")
    enc = Encoder.from_pretrained(out).double().eval()
    obj = SSASTObjective(DIM, fshape * tshape).double()
    obj.load_state_dict(load_file(str(out / HEADS_NAME)), strict=True)
    fb = random_fbank(tdim, batch=1)
    nf, nt = 128 // fshape, tdim // tshape
    mask_index = torch.tensor([3, 9, 10, 17, 22, 30])  # SSAST (frequency-major) indices
    mask_f = torch.zeros(1, nf * nt, dtype=torch.bool)
    mask_f[0, mask_index] = True
    # SSAST: encoder output at the masked positions, heads, and Unfold targets over (B, 1, F, T)
    ref = ssast_forward(sd, fb, (fshape, tshape), mask_f)[0, 2 + mask_index]
    target = torch.nn.Unfold((fshape, tshape), stride=(fshape, tshape))(
        fb.double().unsqueeze(1).transpose(2, 3)
    )
    target = target.transpose(1, 2)[0, mask_index]
    gpred, cpred = ssast_head(sd, "gpredlayer", ref), ssast_head(sd, "cpredlayer", ref)
    mse_ref = ((gpred - target) ** 2).mean()
    total = target @ cpred.T
    nce_ref = -torch.diag(torch.log_softmax(total, dim=-1)).mean()
    # ours
    mask_t = freq_to_time_major(mask_f, nf, nt)
    with torch.no_grad():
        feats = enc(fb.double(), mask_t).patches
        ours_g = obj.gen_head(feats)[0]
        res = obj(feats, patch_targets(fb.double(), (tshape, fshape)), mask_t)
    for n, k in enumerate(mask_index.tolist()):
        f, t = divmod(k, nt)
        mine = ours_g[t * nf + f].reshape(tshape, fshape)  # ours: (frame, mel)
        theirs = gpred[n].reshape(fshape, tshape)  # SSAST: (mel, frame)
        assert (mine - theirs.T).abs().max() < 1e-6
    assert abs(float(res["loss_g"]) - float(mse_ref)) < 1e-8
    assert abs(float(res["loss_d"]) - float(nce_ref)) < 1e-8


@pytest.mark.timeout(60)
def test_ast_finetuned_checkpoint_stride_inferred(tmp_path):
    """AST-style fine-tuned file: no p_input, stride 10 inferred from pos_embed, mlp_head kept aside."""
    sd = make_ssast_state(tdim=80, stride=(10, 10), pretraining=False, mlp_head_labels=5)
    out = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    # 84 patches fit only stride 10 (12 x 7); 76..85 frames give 7 time steps: the shortest is recorded
    assert cfg["stride"] == [10, 10] and cfg["pos_grid"] == [7, 12]
    assert cfg["input_frames"] == 76 and cfg["mask_embedding"] is False
    assert cfg["heads"]["classifier"]["num_labels"] == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", CLASSIFIER_HEAD_NAME]
    )
    clf = load_file(str(out / CLASSIFIER_HEAD_NAME))
    assert torch.equal(clf["head.2.weight"], sd["module.mlp_head.1.weight"])
    enc = Encoder.from_pretrained(out).double().eval()
    fb = random_fbank(80)
    ref = ssast_forward(sd, fb, (10, 10))
    with torch.no_grad():
        got = enc(fb.double())
        assert (got.patches - freq_to_time_major(ref[:, 2:], 12, 7)).abs().max() < 1e-5
        # AST's prediction: mlp_head((cls + dist) / 2) after the final norm
        pooled = got.cls.mean(1)
        logits = F.linear(
            F.layer_norm(pooled, (DIM,), clf["head.0.weight"].double(), clf["head.0.bias"].double()),
            clf["head.2.weight"].double(),
            clf["head.2.bias"].double(),
        )
        s = {k: v.double() for k, v in sd.items()}
        pr = (ref[:, 0] + ref[:, 1]) / 2
        ref_logits = F.layer_norm(
            pr, (DIM,), s["module.mlp_head.0.weight"], s["module.mlp_head.0.bias"], eps=1e-5
        )
        ref_logits = ref_logits @ s["module.mlp_head.1.weight"].T + s["module.mlp_head.1.bias"]
        assert (logits - ref_logits).abs().max() < 1e-5
        # another input length: positional embeddings adapted on the fly
        longer = enc(random_fbank(120).double())
        assert longer.grid == (11, 12) and longer.patches.shape == (2, 132, DIM)
    dropped = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "dropped", keep_heads=False)
    assert sorted(p.name for p in dropped.iterdir()) == ["config.json", "model.safetensors"]


def test_published_ast_audioset_geometry(tmp_path):
    """AST AudioSet 10x10: 1212 patches -> stride 10, 12 x 101 grid, 1024 frames (depth 1 for speed)."""
    sd = make_ssast_state(tdim=1024, stride=(10, 10), pretraining=False, depth=1, mlp_head_labels=3)
    out = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "out", fmt="ast")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["stride"], cfg["pos_grid"], cfg["input_frames"]) == ([10, 10], [101, 12], 1024)


def test_ambiguous_stride_needs_flags(tmp_path):
    # frame patches without p_input: tstride 1 and 2 both fit -> an error naming them, resolved by --tstride
    sd = make_ssast_state(fshape=128, tshape=2, tdim=32, stride=(128, 1), pretraining=False, depth=1)
    path = save_pth(tmp_path, sd)
    with pytest.raises(ExportError, match="ambiguous.*tstride=1.*tstride=2"):
        import_checkpoint(path, tmp_path / "out")
    out = import_checkpoint(path, tmp_path / "out", tstride=1, input_frames=32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stride"] == [1, 128] and cfg["pos_grid"] == [31, 1]


# ----- bad inputs: clear errors, nothing executed -----


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "was-executed"
    payload = {"module.v.cls_token": torch.zeros(1, 1, 4), "evil": _RunsCode(str(marker))}
    probe = tmp_path / "probe"  # the payload really runs code when unpickled normally
    pickle.loads(pickle.dumps(_RunsCode(str(probe))))
    assert probe.is_dir()
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(ExportError, match="evil.pth: refused: the file holds pickled objects") as info:
        import_checkpoint(path, tmp_path / "out")
    if writer == "torch.save":
        assert "mkdir" in str(info.value)  # names the blocked callable
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_truncated_and_non_checkpoint_files(tmp_path):
    path = save_pth(tmp_path, make_ssast_state(depth=1))
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="cut.pth"):
        load_torch_checkpoint(cut)
    text = tmp_path / "notes.pth"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(ExportError, match="notes.pth"):
        import_checkpoint(text, tmp_path / "out")
    with pytest.raises(ExportError, match="no such checkpoint"):
        import_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
    lst = save_pth(tmp_path, [torch.zeros(2)], "list.pth")
    with pytest.raises(ExportError, match="not a state dict"):
        import_checkpoint(lst, tmp_path / "out")


def test_unsupported_architecture_and_key_mismatches(tmp_path):
    resnet = {
        "conv1.weight": torch.zeros(64, 3, 7, 7),
        "bn1.weight": torch.ones(64),
        "fc.weight": torch.zeros(10, 512),
    }
    with pytest.raises(ExportError, match="not an SSAST/AST ViT checkpoint.*conv1.weight"):
        import_checkpoint(save_pth(tmp_path, resnet, "resnet.pth"), tmp_path / "out")
    sd = make_ssast_state(depth=1)
    extra = dict(sd, **{"module.v.blocks.0.attn.rel_pos": torch.zeros(3)})
    with pytest.raises(ExportError, match=r"unexpected keys \['v.blocks.0.attn.rel_pos'\]"):
        import_checkpoint(save_pth(tmp_path, extra, "extra.pth"), tmp_path / "out")
    missing = {k: v for k, v in sd.items() if k != "module.v.blocks.0.mlp.fc2.bias"}
    with pytest.raises(ExportError, match=r"missing keys \['v.blocks.0.mlp.fc2.bias'\]"):
        import_checkpoint(save_pth(tmp_path, missing, "missing.pth"), tmp_path / "out")
    bad = dict(sd, **{"module.mask_embed": torch.zeros(1, 1, 7)})
    with pytest.raises(ExportError, match=r"mask_embed: shape \(1, 1, 7\)"):
        import_checkpoint(save_pth(tmp_path, bad, "bad.pth"), tmp_path / "out")
    half = {k: v for k, v in sd.items() if not k.startswith("module.gpredlayer.2")}
    with pytest.raises(ExportError, match="incomplete heads"):
        import_checkpoint(save_pth(tmp_path, half, "half.pth"), tmp_path / "out")
    inconsistent = dict(sd, **{"module.p_input_tdim": torch.tensor(128)})
    with pytest.raises(ExportError, match="p_input_tdim=128.*v.pos_embed holds 32"):
        import_checkpoint(save_pth(tmp_path, inconsistent, "inc.pth"), tmp_path / "out")
    with pytest.raises(ExportError, match="not an SSAST pretraining checkpoint"):
        import_checkpoint(
            save_pth(tmp_path, make_ssast_state(depth=1, pretraining=False), "ft.pth"),
            tmp_path / "out",
            fmt="ssast",
        )
    assert not (tmp_path / "out").exists()


def test_cli_import_and_export(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    src = save_pth(tmp_path, make_ssast_state(depth=1))
    args = parser.parse_args(["import-checkpoint", str(src), str(tmp_path / "imp"), "--drop-heads"])
    args.func(args)
    assert "grid [4, 8]" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "imp").iterdir()) == ["config.json", "model.safetensors"]
    args = parser.parse_args(["export-hf", str(tmp_path / "imp"), str(tmp_path / "hf")])
    args.func(args)
    assert (tmp_path / "hf" / "preprocessor_config.json").is_file()


# ------------------------------------------------------------------------------------------------
# Export to Hugging Face
# ------------------------------------------------------------------------------------------------


def _transformers():
    return pytest.importorskip("transformers", reason="the hf extra (pip install .[hf]) is not installed")


def _tiny_encoder(
    tmp_path, num_cls=2, patch=(16, 16), stride=None, frames=64, **extra
) -> tuple[Encoder, object]:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        backbone_config=dict(dim=DIM, depth=2, num_heads=3, num_cls=num_cls),
        patch=patch,
        stride=stride or patch,
        input_frames=frames,
        normalization=Normalization(mean=-5.5, std=3.25),
        **extra,
    )
    enc = Encoder(cfg)
    with torch.no_grad():  # non-trivial LayerNorm parameters and position embeddings
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return enc, enc.save_pretrained(tmp_path / "export")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stride", [(16, 16), (10, 10)])
def test_hf_astmodel_hidden_states_match(tmp_path, stride):
    transformers = _transformers()
    enc, export = _tiny_encoder(tmp_path, stride=stride)
    hf_dir = export_hf(export, tmp_path / "hf")
    model, info = transformers.ASTModel.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.layer_norm_eps == 1e-6
    model.eval()
    enc.eval()
    fb = random_fbank(64)
    nt, nf = enc.config.grid
    with torch.no_grad():
        ours = enc(fb, output_hidden_states=True)
        hf = model(input_values=fb, output_hidden_states=True)
    last = hf.last_hidden_state
    assert last.shape == (2, 2 + nt * nf, DIM)
    assert (freq_to_time_major(last[:, 2:], nf, nt) - ours.patches).abs().max() < 1e-4
    assert (last[:, :2] - ours.cls).abs().max() < 1e-4
    # per-block hidden states (HF's [0] is the embedding output)
    for mine, theirs in zip(ours.hidden_states, hf.hidden_states[1:]):
        assert (freq_to_time_major(theirs[:, 2:], nf, nt) - mine).abs().max() < 1e-4


@pytest.mark.timeout(120)
def test_hf_export_of_imported_ssast_and_pos_grid_differs(tmp_path):
    """An imported SSAST checkpoint whose stride is then changed for fine-tuning (pos_grid != grid)."""
    transformers = _transformers()
    sd = make_ssast_state(tdim=64)
    imported = import_checkpoint(save_pth(tmp_path, sd), tmp_path / "imp")
    enc = Encoder.from_pretrained(imported)
    enc.set_stride((10, 10))
    enc.config.input_frames = 96
    export = enc.save_pretrained(tmp_path / "ft")
    model = transformers.ASTModel.from_pretrained(export_hf(export, tmp_path / "hf")).eval()
    assert model.config.max_length == 96 and model.config.time_stride == 10
    fb = random_fbank(96)
    nt, nf = enc.config.grid
    with torch.no_grad():
        ours = enc.eval()(fb).patches
        last = model(input_values=fb).last_hidden_state
    assert (freq_to_time_major(last[:, 2:], nf, nt) - ours).abs().max() < 1e-4


@pytest.mark.timeout(120)
def test_hf_classifier_export(tmp_path):
    transformers = _transformers()
    from finetune.heads import Classifier

    enc, _ = _tiny_encoder(tmp_path)
    torch.manual_seed(1)
    clf = Classifier(enc, ["dog", "rain", "siren"], pooling="cls", kind="multi_label")
    with torch.no_grad():
        clf.head[0].weight.add_(torch.randn(DIM) * 0.1)
    export = clf.save_pretrained(tmp_path / "clf", target_frames=64)
    model = transformers.ASTForAudioClassification.from_pretrained(export_hf(export, tmp_path / "hf")).eval()
    assert model.config.id2label == {0: "dog", 1: "rain", 2: "siren"}
    assert model.config.problem_type == "multi_label_classification"
    fb = random_fbank(64)
    with torch.no_grad():
        diff = (model(input_values=fb).logits - clf.eval()(fb)).abs().max()
    # the head's LayerNorm: ours eps 1e-5 (nn.LayerNorm default, as AST's mlp_head);
    # HF's uses layer_norm_eps (1e-6)
    assert diff < 1e-4
    mean_pooled = Classifier(enc, ["a", "b"], pooling="mean").save_pretrained(
        tmp_path / "mean", target_frames=64
    )
    with pytest.raises(ExportError, match="pools with 'mean'.*--encoder-only"):
        export_hf(mean_pooled, tmp_path / "hf2")
    out = export_hf(mean_pooled, tmp_path / "hf2", encoder_only=True)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ASTModel"]


def test_hf_export_asks_the_classifier_where_its_head_is(tmp_path):
    from finetune.heads import Classifier
    from pretrain.encoder import CLASSIFIER_HEAD_KEYS
    from pretrain.export_hf import classifier_head

    enc, _ = _tiny_encoder(tmp_path)
    clf = Classifier(enc, ["a", "b"], pooling="cls")
    task = json.loads((clf.save_pretrained(tmp_path / "clf", 64) / "config.json").read_text())["task"]
    assert task["head_keys"] == clf.head_keys() == CLASSIFIER_HEAD_KEYS  # the classifier matches the contract
    # A head kept elsewhere is found where the task section says, not at fixed names.
    state = {"encoder.x": torch.zeros(1), "out.n.weight": torch.ones(3), "out.n.bias": torch.zeros(3),
             "out.fc.weight": torch.ones(2, 3), "out.fc.bias": torch.zeros(2)}
    head = classifier_head(state, {"head_keys": {"norm": "out.n", "linear": "out.fc"}}, "m")
    assert sorted(head) == ["linear.bias", "linear.weight", "norm.bias", "norm.weight"]
    assert head["linear.weight"] is state["out.fc.weight"]
    with pytest.raises(ExportError, match=r"m: expected a LayerNorm \+ Linear head"):
        classifier_head(state, task, "m")


def test_hf_export_refuses_what_hf_cannot_hold(tmp_path):
    _, one_cls = _tiny_encoder(tmp_path / "a", num_cls=1)
    with pytest.raises(ExportError, match="2 cls tokens.*has 1"):
        export_hf(one_cls, tmp_path / "hf")
    _, frame = _tiny_encoder(tmp_path / "b", patch=(2, 128), frames=32)
    with pytest.raises(ExportError, match="square patches.*2 frames x 128 mel bins"):
        export_hf(frame, tmp_path / "hf")
    _, ok = _tiny_encoder(tmp_path / "c")
    cfg = json.loads((ok / "config.json").read_text())
    cfg["backbone"] = "rwkv7"
    (ok / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="backbone 'rwkv7'"):
        export_hf(ok, tmp_path / "hf")
    _, hamming = _tiny_encoder(tmp_path / "d", features=FeatureConfig(window_type="hamming"))
    with pytest.raises(ExportError, match="window_type"):
        export_hf(hamming, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.timeout(120)
def test_hf_feature_extractor_matches_our_fbank(tmp_path):
    """HF's extractor (torchaudio kaldi path) with our preprocessor_config vs our fbank + pad + normalize.

    HF does not subtract the waveform mean, ours does (as SSAST); Kaldi's per-frame DC removal
    makes that immaterial, so the waveform here deliberately has a DC offset.
    """
    transformers = _transformers()
    _, export = _tiny_encoder(tmp_path, frames=128)
    hf_dir = export_hf(export, tmp_path / "hf")
    pre = json.loads((hf_dir / "preprocessor_config.json").read_text())
    assert (pre["mean"], pre["std"], pre["max_length"], pre["num_mel_bins"]) == (-5.5, 3.25, 128, 128)
    extractor = transformers.ASTFeatureExtractor.from_pretrained(hf_dir)
    g = torch.Generator().manual_seed(5)
    t = torch.arange(16000 * 1) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=g) + 0.02
    hf = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"]  # (1, 128, 128)
    feats, n = fbank(wave.unsqueeze(0))
    feats, n = pad_or_crop(feats, n, 128, crop="start")
    ours = normalize(feats, Normalization(mean=-5.5, std=3.25))
    assert hf.shape == ours.shape == (1, 128, 128)
    assert (hf - ours).abs().max() < 1e-3
