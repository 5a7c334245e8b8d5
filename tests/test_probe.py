"""The linear-evaluation suite: whole-clip per-layer pooling against a naive reference, the probes
against their equations, selection that never sees test labels, and ``python -m finetune probe``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.__main__ import main as finetune_main
from finetune.metrics import multi_label_metrics
from pretrain.encoder import Encoder, EncoderConfig
from pretrain.evaluation.embed import (
    LabeledClips,
    PooledLayers,
    WindowSpec,
    clip_windows,
    embed_clips,
    layer_names,
    read_labeled,
)
from pretrain.evaluation.linear import fit_layer, logistic_fit, ridge_path, standardize
from pretrain.evaluation.protocol import carve_valid, evaluate, select
from pretrain.evaluation.scores import paired_gain, score
from pretrain.features import model_input, pad_waves
from pretrain.patches import valid_patches

from .test_backbones_pipeline import TINY_BACKBONES


def tiny_encoder(backbone: str = "vit", frames: int = 64, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(EncoderConfig(backbone=backbone, backbone_config=dict(TINY_BACKBONES[backbone]),
                                 input_frames=frames)).eval()


def waves_of(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


# ----- features -----

def test_windows_tile_the_clip_frames_and_drop_only_a_sub_patch_tail():
    spec = WindowSpec.of(tiny_encoder(frames=64))
    f = spec.features
    def samples(frames: int) -> int:
        return f.frame_length + (frames - 1) * f.frame_shift

    parts = clip_windows(np.zeros(samples(212), dtype=np.float32), spec)  # 3 windows of 64 frames + 20
    frames = [f.num_frames(len(p)) for p in parts]
    assert frames == [64, 64, 64, 20] and sum(frames) == 212  # every frame of the clip seen exactly once
    parts = clip_windows(np.zeros(samples(198), dtype=np.float32), spec)  # a 6-frame tail is under a patch (16)
    assert [f.num_frames(len(p)) for p in parts] == [64, 64, 64]
    tiny = np.zeros(1000, dtype=np.float32)
    assert [len(p) for p in clip_windows(tiny, spec)] == [1000]


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_pooled_layers_equal_a_naive_per_clip_reference(backbone):
    enc = tiny_encoder(backbone)
    spec = WindowSpec.of(enc)
    waves = waves_of([0.3, 1.7, 0.9, 2.2, 0.05 + 0.64])
    got = embed_clips(iter(waves), spec, {"m": enc}, logmel=True, batch_windows=3)
    names = layer_names(enc)
    assert got["m"].names == names and len(names) == enc.num_layers + 1
    for i, wave in enumerate(waves):  # one clip at a time, its windows as one batch, real patches gathered
        fb, frames = model_input(*pad_waves(clip_windows(wave, spec)), spec.features, spec.normalization, spec.frames)
        with torch.no_grad():
            res = enc(fb, output_hidden_states=True)
        valid = valid_patches(frames, res.grid, enc.config.patch, enc.config.stride)
        for layer, h in enumerate([*res.hidden_states, res.patches]):
            real = h[valid].double()  # (patches of all windows, D)
            torch.testing.assert_close(got["m"].mean[layer][i].double(), real.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got["m"].std[layer][i].double(), real.std(0, unbiased=False), rtol=1e-3, atol=1e-4)
        real_frames = torch.cat([fb[w, : int(frames[w])] for w in range(len(fb))]).double()
        torch.testing.assert_close(got["logmel"].mean[0][i].double(), real_frames.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["logmel"].std[0][i].double(), real_frames.std(0, unbiased=False),
                                   rtol=1e-3, atol=1e-4)
    assert all(torch.isfinite(m).all() for m in got["m"].mean)


def test_all_layers_come_from_one_forward_pass_per_batch():
    enc, twin = tiny_encoder(seed=0), tiny_encoder(seed=1)
    calls = {"enc": 0, "twin": 0}
    enc.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    twin.register_forward_hook(lambda *a: calls.__setitem__("twin", calls["twin"] + 1))
    waves = waves_of([1.0, 2.0, 0.5])  # 2 + 4 + 1 windows of 0.64 s
    out = embed_clips(iter(waves), WindowSpec.of(enc), {"enc": enc, "twin": twin}, batch_windows=4)
    assert calls == {"enc": 2, "twin": 2}  # 7 windows in batches of 4, every layer from the same pass
    assert out["enc"].mean[0].shape == (3, 32)
    assert not torch.equal(out["enc"].mean[-1], out["twin"].mean[-1])


# ----- probes -----

def test_ridge_path_solves_the_normal_equations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    y = torch.randn(50, 3, generator=g, dtype=torch.float64)
    for lam, (w, b) in zip((1e-3, 1.0), ridge_path(x, y, (1e-3, 1.0))):
        yc = y - y.mean(0)
        ref = torch.linalg.solve(x.T @ x / 50 + lam * torch.eye(8, dtype=torch.float64), x.T @ yc / 50)
        torch.testing.assert_close(w, ref)
        torch.testing.assert_close(b, y.mean(0))


@pytest.mark.parametrize("kind", ["single_label", "multi_label"])
def test_logistic_fit_reaches_the_stationary_point(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    labels = (x[:, :3] + 0.5 * torch.randn(80, 3, generator=g, dtype=torch.float64))
    y = torch.nn.functional.one_hot(labels.argmax(1), 3).double() if kind == "single_label" else (labels > 0).double()
    lam = 1e-2
    w, b = logistic_fit(x, y, lam, kind)
    w, b = w.requires_grad_(True), b.requires_grad_(True)
    logits = x @ w + b
    if kind == "single_label":  # the gradient of mean CE (or BCE) + lam/2 |W|^2 vanishes at the optimum
        loss = torch.nn.functional.cross_entropy(logits, y.argmax(1))
    else:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    (loss + 0.5 * lam * (w * w).sum()).backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_map_score_matches_the_fine_tuning_metric():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(40, 4, generator=g), (torch.rand(40, 4, generator=g) > 0.6).float()
    ref = multi_label_metrics(s.numpy(), t.numpy(), list("abcd"))["mAP"]
    assert score(s, t, "multi_label") == pytest.approx(ref)


def _clusters(n: int, classes: int, dim: int, seed: int, layers: int = 3) -> tuple[PooledLayers, torch.Tensor]:
    """Layer l holds class information with signal strength l (layer 0 is noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    lab = torch.randint(0, classes, (n,), generator=g)
    feats = [k * centres[lab] + torch.randn(n, dim, generator=g) for k in range(layers)]
    return PooledLayers([str(i) for i in range(layers)], feats, [f.abs() for f in feats]), \
        torch.nn.functional.one_hot(lab, classes).float()


@pytest.mark.parametrize("classifier", ["ridge", "logistic"])
def test_layer_choice_and_valid_scores_never_see_test_labels(classifier):
    train, ytr = _clusters(120, 4, 6, seed=0)
    valid, yva = _clusters(60, 4, 6, seed=1)
    test, yte = _clusters(60, 4, 6, seed=2)
    sel = select(train, ytr, valid, yva, "single_label", ("mean", "meanstd"), classifier=classifier)
    res = evaluate(sel, test, yte)
    assert res["best"]["layer"] != "0" and res["best"]["test"] > 0.6  # the probes learn: chance is ~0.25
    permuted = yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(5))]
    sel2 = select(train, ytr, valid, yva, "single_label", ("mean", "meanstd"), classifier=classifier)
    res2 = evaluate(sel2, test, permuted)
    assert res2["best"]["layer"] == res["best"]["layer"] and res2["best"]["pooling"] == res["best"]["pooling"]
    assert [r["valid"] for r in res2["layers"]] == [r["valid"] for r in res["layers"]]
    assert res2["weighted_sum"]["valid"] == res["weighted_sum"]["valid"]
    assert res2["best"]["test"] < res["best"]["test"]  # ... while the test score does see them


def test_standardization_uses_train_statistics_only():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    valid = torch.tensor([[100.0, 7.0]])
    probe, _, _ = fit_layer(train, torch.eye(2), valid, torch.eye(2)[:1], "single_label")
    torch.testing.assert_close(standardize(valid, probe.mean, probe.std), torch.tensor([[98.0, 2.0]], dtype=torch.float64))


def test_valid_is_carved_by_whole_groups():
    groups = [f"spk{i % 7}" for i in range(70)]
    tr, va = carve_valid(groups)
    assert tr and va and not ({groups[i] for i in tr} & {groups[i] for i in va})
    assert sorted(tr + va) == list(range(70))
    assert carve_valid(list(reversed(groups)))[1] == [69 - i for i in reversed(va)]  # order-free choice


# ----- the CLI -----

def _export(path: Path, backbone: str = "vit") -> Path:
    tiny_encoder(backbone, frames=128, seed=3).save_pretrained(path)
    return path


@pytest.mark.timeout(600)
def test_probe_cli_reports_models_baselines_and_writes_json(tiny_shards, tmp_path, capsys):
    model = _export(tmp_path / "run" / "export")
    finetune_main(["probe", "--model", str(model), "--task", f"synth={tiny_shards}", "--random-init",
                   "--baseline", "logmel", "--out", str(tmp_path / "out")])
    assert torch.is_grad_enabled()  # the CLI leaves the process's autograd mode alone
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("run "))
    assert "synth" in row and "accuracy" in row
    report = json.loads((tmp_path / "out" / "probe.json").read_text())
    task = report["tasks"]["synth"]
    assert task["kind"] == "single_label" and task["valid"] == "split"
    assert set(task["results"]) == {"run", "run:random", "logmel"}
    n_layers = len(task["results"]["run"]["layers"])
    assert n_layers == 2 * 3  # (1, 2, out) x (mean, meanstd)
    assert task["clips"]["test"] > 0 and 0.0 <= task["chance"] <= 1.0
    assert "weighted_sum" in task["results"]["run"] and "weighted_sum" not in task["results"]["logmel"]
    run = task["results"]["run"]
    for key, other in (("gain_vs_random", "run:random"), ("gain_vs_logmel", "logmel")):
        want = run["best"]["test"] - task["results"][other]["best"]["test"]
        assert abs(run[key]["gain"] - want) < 1e-9
        assert run[key]["ci95"][0] <= run[key]["gain"] <= run[key]["ci95"][1]
    assert "gain_vs_random" not in task["results"]["run:random"] and "gain_vs_random" not in task["results"]["logmel"]
    assert f"{100 * run['gain_vs_random']['gain']:+.1f} [" in row


@pytest.mark.timeout(600)
def test_probe_cli_carves_valid_by_group_when_the_set_has_none(tiny_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    for split in ("train", "test"):
        shutil.copytree(tiny_shards / split, shards / split)
    model = _export(tmp_path / "m")
    finetune_main(["probe", "--model", str(model), "--task", f"t={shards}", "--layers", "out", "--pooling", "mean",
                   "--out", str(tmp_path / "out")])
    task = json.loads((tmp_path / "out" / "probe.json").read_text())["tasks"]["t"]
    assert task["valid"].startswith("carved from train by source")
    assert task["clips"]["train"] + task["clips"]["valid"] == json.loads(
        (tiny_shards / "train" / "index.json").read_text())["samples"]
    assert [r["layer"] for r in task["results"]["m"]["layers"]] == ["out"]


def test_probe_cli_errors_are_one_line(tiny_shards, tmp_path, capsys):
    model = _export(tmp_path / "m")
    for argv, needle in [
        (["--task", f"x={tmp_path}"], "has no train/index.json or test/index.json"),
        (["--task", "nonsense"], "expected NAME=SHARDS_DIR"),
        (["--task", f"x={tiny_shards}", "--layers", "7"], "unknown layer(s) ['7']"),
        (["--task", f"x={tiny_shards}", "--pooling", "max"], "--pooling: unknown ['max']"),
    ]:
        with pytest.raises(SystemExit) as e:
            finetune_main(["probe", "--model", str(model), *argv])
        assert e.value.code == 2  # a user-input error: one line, exit 2, as every CLI
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], err


def test_read_labeled_rejects_labels_outside_the_vocabulary(tiny_shards):
    from pretrain.data import DataError, resolve_shards

    clips = LabeledClips("x", ["only-this"])
    with pytest.raises(DataError, match="outside the vocabulary"):
        list(read_labeled(resolve_shards(str(tiny_shards / "train")), clips))


def test_paired_gain_is_the_score_difference_with_a_paired_bootstrap_interval():
    n, c = 200, 4
    g = torch.Generator().manual_seed(0)
    y = torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).double()
    truth = y * 10.0
    noise = torch.randn(n, c, generator=g, dtype=torch.float64)
    same = paired_gain(noise, noise, y, "single_label")
    assert same["gain"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["resamples"] == 1000
    # a right on 60 more clips than b: the difference is 0.3, and pairing keeps the interval tight
    b = noise.clone()
    a = torch.where(torch.arange(n)[:, None] < 60, truth, noise)
    wrong_b = b.argmax(1) != y.argmax(1)
    fixed = int((wrong_b & (torch.arange(n) < 60)).sum())
    out = paired_gain(a, b, y, "single_label")
    assert abs(out["gain"] - fixed / n) < 1e-12
    lo, hi = out["ci95"]
    assert 0.0 < lo < out["gain"] < hi
    assert paired_gain(a, b, y, "single_label") == out  # the same seeded draw
    assert paired_gain(a, b, y, "multi_label")["resamples"] == 200
