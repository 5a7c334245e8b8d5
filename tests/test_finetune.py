"""Fine-tuning end to end on tiny settings: CLI train/evaluate/predict/embed, linear probe, layer decay,
k-fold, another stride and input length, and clear errors for bad inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from core.accel import make_accelerator
from data_prep import synth
from data_prep.__main__ import main as data_prep_main
from finetune.__main__ import main as finetune_main
from finetune.config import load_finetune_recipe
from finetune.heads import Classifier, layer_decay_groups, load_encoder
from finetune.predict import predict
from finetune.session import FoldWeight
from finetune.train import epoch_lr, finetune, finetune_all, predict_shards
from pretrain.data import resolve_shards
from pretrain.encoder import Encoder, EncoderConfig, ExportError

from .conftest import launch_two_cpu_ranks

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "finetune" / "demo.toml"
TINY_VIT = {"dim": 32, "depth": 2, "num_heads": 2, "num_cls": 2}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def tiny_settings(train: Path, run_dir: Path, name: str, **extra: object) -> list[str]:
    """--set overrides for a seconds-long run (fixed statistics unless the caller wants them computed)."""
    sets = {"data.train": str(train / "train"), "data.valid": str(train / "valid"), "data.test": str(train / "test"),
            "data.target_frames": 128, "data.num_workers": 0, "data.shuffle_buffer": 8,
            "train.batch_size": 4, "train.epochs": 1, "train.steps_per_epoch": 2, "train.log_every": 1,
            "schedule.warmup_steps": 0, "features.mean": -5.0, "features.std": 4.0,
            "run.output_dir": str(run_dir), "run.name": name} | extra
    return [f"{k}={json.dumps(v)}" for k, v in sets.items() if v is not None]


def tiny_recipe(train: Path, run_dir: Path, name: str, **extra: object):
    """The demo recipe with :func:`tiny_settings`; keys given as None are unset (TOML has no null)."""
    recipe = load_finetune_recipe(DEMO, tiny_settings(train, run_dir, name, **extra))
    for key, value in extra.items():
        if value is None:
            section, field = key.split(".")
            setattr(getattr(recipe, section), field, None)
    return recipe


def cli_error(argv: list[str], capsys) -> str:
    """Run the finetune CLI in-process; it must exit 2 with a one-line error (no traceback)."""
    with pytest.raises(SystemExit) as e:
        finetune_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: "), err
    return err


def make_vit_export(path: Path, input_frames: int = 128, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    Encoder(EncoderConfig(backbone="vit", backbone_config=dict(TINY_VIT), input_frames=input_frames)).save_pretrained(path)
    return path


# ----- fixtures: a tiny corpus, its shards (split and by fold), a pretrained export, a fine-tuned model -----

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    synth.synthesize(work / "corpus", clips=36, seed=0, progress=False)
    return work / "corpus"


@pytest.fixture(scope="module")
def shards(corpus, work) -> Path:
    data_prep_main(["shard", str(corpus), str(work / "shards"), "--samples-per-shard", "6", "--workers", "1", "-q"])
    return work / "shards"


@pytest.fixture(scope="module")
def fold_shards(corpus, work) -> tuple[Path, dict[int, int]]:
    """The corpus with an ESC-50-like `fold` column (1, 2, 3 in turn) and no split, as one shard set."""
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts: dict[int, int] = {}
    with open(corpus / "folds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "fold"])
        for i, r in enumerate(rows):
            fold = i % 3 + 1
            counts[fold] = counts.get(fold, 0) + 1
            w.writerow([r["path"], r["labels"], fold])
    out = work / "fold_shards"
    data_prep_main(["shard", str(corpus / "folds.csv"), str(out), "--layout", "manifest",
                    "--samples-per-shard", "6", "--workers", "1", "-q"])
    return out, counts


@pytest.fixture(scope="module")
def export(work) -> Path:
    return make_vit_export(work / "pretrained" / "export")


@pytest.fixture(scope="module")
def finetuned(shards, export, work) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m finetune train --recipe demo.toml --set ...` (statistics computed on the training shards)."""
    sets = tiny_settings(shards, work / "runs", "e2e", **{"model.encoder": str(export),
                                                         "features.mean": None, "features.std": None})
    proc = run_cli("finetune", "train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)])
    return work / "runs" / "e2e", proc


@pytest.fixture(scope="module")
def wavs(corpus, work) -> dict[str, Path]:
    """A short wav at 22.05 kHz stereo, a 5 s flac (several windows), a non-audio file and a missing one."""
    d = work / "audio"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.8 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 660 * t)
    sf.write(d / "short.wav", np.stack([tone, tone], 1), 22050)
    sf.write(d / "long.flac", 0.1 * rng.standard_normal(5 * 16000), 16000)
    (d / "broken.wav").write_bytes(b"RIFF this is not audio at all")
    return {"short": d / "short.wav", "long": d / "long.flac", "broken": d / "broken.wav", "missing": d / "nope.wav"}


# ----- end to end through the CLI -----

@pytest.mark.timeout(180)
def test_train_cli_writes_metrics_and_export(finetuned, shards, export):
    run_dir, proc = finetuned
    ok(proc)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    vocab = json.loads((shards / "train" / "index.json").read_text())["vocabulary"]
    for split in ("valid", "test"):
        m = metrics[split]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0 and m["top5"] >= m["accuracy"]
        assert m["num_samples"] == json.loads((shards / split / "index.json").read_text())["samples"]
        assert set(m["per_class"]) == set(vocab)
    assert metrics["labels"] == vocab and metrics["selected"] == "best on valid (epoch 1)"
    # statistics were computed on the training shards (not the AudioSet defaults) and travel with the model
    stats = json.loads((run_dir / "stats.json").read_text())
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["normalization"] == {"mean": stats["mean"], "std": stats["std"]}
    assert abs(stats["mean"] - -4.2677393) > 1e-3
    assert config["task"]["labels"] == vocab
    assert config["task"]["kind"] == "single_label" and config["task"]["target_frames"] == 128
    assert config["task"]["finetuned_from"] == str(export)
    # the resolved recipe is kept beside the run
    recipe = json.loads((run_dir / "config.json").read_text())
    assert recipe["data"]["target_frames"] == 128 and recipe["model"]["encoder"] == str(export)
    # full fine-tuning moved the encoder (a test that can fail: compare with the pretrained weights)
    before, after = load_file(str(export / "model.safetensors")), load_file(str(run_dir / "export" / "model.safetensors"))
    assert set(after) == {f"encoder.{k}" for k in before} | {k for k in after if k.startswith("head.")}
    assert any(not torch.equal(before[k], after[f"encoder.{k}"]) for k in before)
    summary = json.loads(proc.stdout)
    assert summary["test"]["accuracy"] == metrics["test"]["accuracy"]


@pytest.mark.timeout(120)
def test_evaluate_cli_matches_the_training_report(finetuned, shards, work):
    run_dir = finetuned[0]
    out = work / "eval.json"
    proc = ok(run_cli("finetune", "evaluate", "--model", str(run_dir / "export"), str(shards / "test"),
                      "--out", str(out), "--batch-size", "3"))
    summary = json.loads(proc.stdout)
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert summary["num_samples"] == trained["num_samples"]
    for key in ("accuracy", "top5", "macro_f1"):
        assert summary[key] == pytest.approx(trained[key])
    assert json.loads(out.read_text())["per_class"].keys() == trained["per_class"].keys()


@pytest.mark.timeout(120)
def test_predict_cli_reports_unreadable_files_and_predicts_the_others(finetuned, wavs, work):
    jsonl = work / "pred.jsonl"
    paths = [wavs["short"], wavs["broken"], wavs["long"], wavs["missing"]]
    proc = ok(run_cli("finetune", "predict", "--model", str(finetuned[0] / "export"), *map(str, paths),
                      "--jsonl", str(jsonl), "--top-k", "3"))
    assert str(wavs["broken"]) in proc.stderr and str(wavs["missing"]) in proc.stderr
    assert "predicted 2 file(s); 2 unreadable" in proc.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["path"] for r in records] == [str(wavs["short"]), str(wavs["long"])]
    labels = json.loads((finetuned[0] / "export" / "config.json").read_text())["task"]["labels"]
    for r in records:
        assert sum(r["scores"]) == pytest.approx(1.0, abs=1e-4)  # softmax: single-label
        assert len(r["scores"]) == len(labels) and len(r["top"]) == 3
        assert r["top"][0]["score"] == pytest.approx(max(r["scores"]), abs=1e-6)
        assert all(sum(w["scores"]) == pytest.approx(1.0, abs=1e-4) for w in r["windows"])
    assert len(records[0]["windows"]) == 1
    # 5 s in 1.28 s windows, half a window apart, the last one flush with the end
    starts = [w["start_s"] for w in records[1]["windows"]]
    assert len(starts) == 7 and starts[0] == 0 and starts[-1] == pytest.approx(5 - 1.28, abs=0.02)
    stdout_lines = proc.stdout.strip().splitlines()
    assert len(stdout_lines) == 2 and stdout_lines[0].startswith(str(wavs["short"]))


@pytest.mark.timeout(120)
def test_embed_cli_on_the_pretrained_export(export, wavs, work):
    out = work / "emb"
    proc = ok(run_cli("finetune", "embed", "--model", str(export), str(wavs["short"]), str(wavs["long"]),
                      "--out", str(out)))
    assert "embedded 2 file(s)" in proc.stderr
    short, long = np.load(out / "short.npz"), np.load(out / "long.npz")
    assert short["pooled"].shape == (32,) and short["layers"].shape == (2, 32)
    assert long["windows_pooled"].shape == (7, 32) and long["window_starts_s"].shape == (7,)
    assert np.allclose(long["pooled"], long["windows_pooled"].mean(0), atol=1e-5)
    assert np.isfinite(short["layers"]).all() and not np.allclose(short["layers"][0], short["layers"][1])


def test_embed_pools_real_patches_only_and_keeps_same_named_files(export, wavs, work):
    """A short clip's embedding is the mean over the patches holding its frames, not the padding."""
    from finetune.predict import embed, iter_windows

    sub = work / "same_name"
    sub.mkdir(exist_ok=True)
    (sub / "short.wav").write_bytes(wavs["short"].read_bytes())
    written, errors = embed(str(export), [str(wavs["short"]), str(sub / "short.wav")], str(work / "emb2"))
    assert [p.name for p in written] == ["short.npz", "short_1.npz"] and not errors
    got = np.load(written[0])
    assert np.allclose(got["pooled"], np.load(written[1])["pooled"])
    encoder = Encoder.from_pretrained(export).eval()
    (_, _, feats, frames), = list(iter_windows([wavs["short"]], encoder, 128, None, []))
    assert frames.tolist() == [78]  # 0.8 s: 78 frames, i.e. patch rows starting at 0, 16, ..., 64
    with torch.no_grad():
        patches = encoder(feats).patches[0].view(8, 8, -1)
    assert np.allclose(got["pooled"], patches[:5].mean((0, 1)).numpy(), atol=1e-5)
    assert not np.allclose(got["pooled"], patches.mean((0, 1)).numpy(), atol=1e-3)


# ----- augmentation is for training only -----

@pytest.mark.timeout(120)
def test_evaluation_never_augments(finetuned, shards, monkeypatch):
    """Aggressive augmentation in the recipe: evaluating twice gives identical scores, augment never runs."""
    import finetune.augment
    import finetune.train

    def forbidden(*args, **kwargs):
        raise AssertionError("augmentation called during evaluation")

    monkeypatch.setattr(finetune.train, "augment_batch", forbidden)
    monkeypatch.setattr(finetune.augment, "augment_batch", forbidden)
    model = Classifier.from_pretrained(finetuned[0] / "export")
    recipe = load_finetune_recipe(DEMO, [
        "data.target_frames=128", "data.num_workers=0", "train.batch_size=4", "augment.freqm=100",
        "augment.timem=100", "augment.mixup=1.0", "augment.noise=true", "augment.gain_db=30"])
    acc = make_accelerator(recipe.train.mixed_precision, Path(finetuned[0]) / "eval")
    test = resolve_shards(str(shards / "test"))
    model.train()  # even from training mode: predict_shards switches to eval and back
    s1, t1, k1 = predict_shards(acc, model, test, recipe, model.encoder.config.normalization)
    s2, t2, k2 = predict_shards(acc, model, test, recipe, model.encoder.config.normalization)
    assert model.training
    assert np.array_equal(s1, s2) and np.array_equal(t1, t2) and k1 == k2
    assert len(k1) == len(set(k1)) == json.loads((shards / "test" / "index.json").read_text())["samples"]


# ----- linear probe, layer-wise LR decay, schedules -----

def _cnn_export(path: Path) -> Path | None:
    try:
        cfg = EncoderConfig(backbone="repinception", backbone_config={"preset": "tiny"}, input_frames=128)
        torch.manual_seed(0)
        Encoder(cfg).save_pretrained(path)
    except (ImportError, ValueError):
        return None
    return path


@pytest.mark.timeout(180)
def test_linear_probe_freezes_encoder_weights_and_bn_statistics(shards, work):
    """A CNN with BatchNorm buffers, trained with every augmentation on: only the head moves."""
    export = _cnn_export(work / "cnn" / "export")
    has_cnn = export is not None
    if not has_cnn:  # without the CNN backbone, check a ViT (weights only: it has no buffers)
        export = make_vit_export(work / "cnn" / "export")
    before = load_file(str(export / "model.safetensors"))
    buffers = [k for k in before if "running_mean" in k or "running_var" in k or "num_batches_tracked" in k]
    recipe = tiny_recipe(
        shards, work / "runs", "probe", **{"model.encoder": str(export), "model.mode": "linear_probe",
                                           "data.valid": None, "data.test": None, "augment.mixup": 0.5,
                                           "augment.noise": True, "augment.gain_db": 6.0, "optim.lr": 0.01})
    res = finetune(recipe)
    assert res["mode"] == "linear_probe" and res["selected"] == "last"
    after = load_file(str(work / "runs" / "probe" / "export" / "model.safetensors"))
    if has_cnn:
        assert len(buffers) > 10, "the CNN backbone has BatchNorm running statistics"
    for k, v in before.items():
        assert torch.equal(after[f"encoder.{k}"], v), f"encoder tensor {k} changed under linear probe"
    # The probe head (MAE's: feature standardization + Linear) did learn.
    assert not torch.equal(after["head.0.running_mean"], torch.zeros_like(after["head.0.running_mean"]))
    assert "head.0.weight" not in after  # BatchNorm without affine parameters
    config = json.loads((work / "runs" / "probe" / "export" / "config.json").read_text())
    assert config["task"]["head_norm"] == "batchnorm"
    reloaded = Classifier.from_pretrained(work / "runs" / "probe" / "export")
    assert torch.equal(reloaded.head[2].weight, after["head.2.weight"])


@pytest.mark.timeout(180)
def test_linear_probe_runs_the_frozen_encoder_once_per_view(shards, export, work):
    """Cached probe features: the encoder sees each training view once and each eval set once."""
    def batches(split: str) -> int:
        n = json.loads((shards / split / "index.json").read_text())["samples"]
        return -(-n // 4)

    calls = []

    def count(module, args, output):
        if isinstance(module, Encoder):
            calls.append(args[0].shape[0])

    results = {}
    for views in (0, 1, 2):
        calls.clear()
        handle = torch.nn.modules.module.register_module_forward_hook(count)
        try:
            recipe = tiny_recipe(shards, work / "runs", f"views{views}", **{
                "model.encoder": str(export), "model.mode": "linear_probe", "train.epochs": 3,
                "train.probe_views": views})
            results[views] = finetune(recipe)
        finally:
            handle.remove()
        train_calls = 2 * (3 if views == 0 else min(views, 3))  # 2 steps per epoch
        assert len(calls) == train_calls + batches("valid") + batches("test"), (views, calls)
        assert results[views]["history"][-1]["train_loss"] > 0


def test_linear_probe_classifier_keeps_encoder_in_eval_mode(export):
    model = Classifier(load_encoder(str(export)), ["a", "b"], linear_probe=True)
    model.train()
    assert model.training and model.head.training and not model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    groups = layer_decay_groups(model, 1e-3, 0.01, 0.75, 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.head.parameters()))


def test_layer_decay_groups_follow_decay_power_of_depth(export):
    model = Classifier(load_encoder(str(export)), ["a", "b", "c"])
    lr, decay, head_mult, wd = 0.1, 0.5, 3.0, 0.05
    groups = layer_decay_groups(model, lr, wd, decay, head_mult)
    by_param = {id(p): g for g in groups for p in g["params"]}
    L = model.encoder.num_layers
    assert L == 2
    expected_layer = {"encoder.patch_embed.weight": 0, "encoder.backbone.pos_embed": 0,
                      "encoder.backbone.cls_tokens": 0, "encoder.backbone.blocks.0.attn.qkv.weight": 1,
                      "encoder.backbone.blocks.1.mlp.fc2.weight": 2, "encoder.backbone.norm.weight": 3}
    assert not model.encoder.mask_embed.requires_grad  # pretraining only: frozen, in no group
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, layer in expected_layer.items():
        g = by_param[id(names[name])]
        assert g["lr"] == pytest.approx(lr * decay ** (L + 1 - layer)), name
        assert g["lr_scale"] == pytest.approx(decay ** (L + 1 - layer)), name
    for name, p in names.items():
        g = by_param[id(p)]
        if name.startswith("head."):
            assert g["lr"] == pytest.approx(lr * head_mult)
        no_decay = p.ndim <= 1 or name.split(".")[-1] in ("pos_embed", "cls_tokens")
        assert g["weight_decay"] == (0.0 if no_decay else wd), name
    assert sum(len(g["params"]) for g in groups) == len(names)
    # decay 1.0 = off: one LR for the whole encoder
    flat = layer_decay_groups(model, lr, wd, 1.0, 1.0)
    assert {g["lr"] for g in flat} == {lr}


def test_schedules():
    r = load_finetune_recipe(None, ["optim.lr=1.0", "schedule.name=\"ssast\"", "schedule.start=2",
                                    "schedule.step=2", "schedule.decay=0.5"])
    assert [epoch_lr(r, e, 0, 100) for e in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    c = load_finetune_recipe(None, ["optim.lr=1.0", "schedule.name=\"cosine\"", "schedule.warmup_steps=10",
                                    "schedule.min_lr=0.1"])
    assert epoch_lr(c, 0, 0, 110) == pytest.approx(0.1) and epoch_lr(c, 0, 9, 110) == pytest.approx(1.0)
    assert epoch_lr(c, 0, 10, 110) == pytest.approx(1.0)
    assert epoch_lr(c, 0, 60, 110) == pytest.approx(0.55)
    assert epoch_lr(c, 0, 110, 110) == pytest.approx(0.1)


# ----- k-fold, another stride and input length -----

@pytest.mark.timeout(180)
def test_kfold_reports_each_fold(fold_shards, export, work):
    shard_dir, counts = fold_shards
    recipe = tiny_recipe(
        shard_dir, work / "runs", "kfold", **{"model.encoder": str(export), "data.train": str(shard_dir),
                                              "data.valid": None, "data.test": None, "data.folds": [1, 2],
                                              "train.steps_per_epoch": 1})
    summary = finetune_all(recipe)
    assert set(summary["folds"]) == {"1", "2"}
    for f in (1, 2):
        m = summary["folds"][str(f)]
        assert m["num_samples"] == counts[f], "each fold is tested on exactly its own clips"
        fold_metrics = json.loads((work / "runs" / "kfold" / f"fold-{f}" / "metrics.json").read_text())
        assert fold_metrics["selected"] == "last" and "valid" not in fold_metrics  # no selection on the test fold
        assert (work / "runs" / "kfold" / f"fold-{f}" / "export" / "config.json").is_file()
    mains = [summary["folds"][f]["main"] for f in ("1", "2")]
    assert summary["mean_main"] == pytest.approx(np.mean(mains))
    assert json.loads((work / "runs" / "kfold" / "metrics.json").read_text()) == summary
    keep, drop = FoldWeight([2], keep=True), FoldWeight([2], keep=False)
    assert (keep({"fold": 2}), keep({"fold": 1}), drop({"fold": 2}), drop({"fold": 1})) == (1.0, 0.0, 0.0, 1.0)


@pytest.mark.timeout(180)
def test_other_stride_and_input_length(shards, export, work, wavs):
    """SSAST fine-tunes at stride 10 on another length: positional embeddings adapt, the export records it."""
    recipe = tiny_recipe(
        shards, work / "runs", "stride10", **{"model.encoder": str(export), "model.stride": [10, 10],
                                              "data.target_frames": 160, "data.test": None,
                                              "train.steps_per_epoch": 1})
    res = finetune(recipe)
    assert res["valid"]["num_samples"] > 0
    out = work / "runs" / "stride10" / "export"
    config = json.loads((out / "config.json").read_text())
    assert config["stride"] == [10, 10] and config["pos_grid"] == [8, 8] and config["task"]["target_frames"] == 160
    model = Classifier.from_pretrained(out)
    assert model.encoder.patch_embed.stride == (10, 10) and model.target_frames == 160
    assert model.encoder.grid_for(160) == (15, 12)
    results, errors = predict(str(out), [str(wavs["long"])], top_k=2)
    assert not errors and len(results[0]["windows"]) > 1


# ----- clear errors -----

def test_missing_or_malformed_encoder_directory(export, shards, wavs, work, capsys):
    bad = work / "bad_exports"
    bad.mkdir(exist_ok=True)
    wav = str(wavs["short"])

    def embed_error(model_dir: Path) -> str:
        return cli_error(["embed", "--model", str(model_dir), wav, "--out", str(work / "unused")], capsys)

    assert "not a model directory" in embed_error(bad / "does_not_exist")
    empty = bad / "empty"
    empty.mkdir(exist_ok=True)
    assert "no config.json" in embed_error(empty)
    invalid = bad / "invalid"
    invalid.mkdir(exist_ok=True)
    (invalid / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    (invalid / "config.json").write_text("{not json")
    err = embed_error(invalid)
    assert str(invalid / "config.json") in err and "not valid JSON" in err
    (invalid / "config.json").write_text(json.dumps({"patch": [16, 16]}))
    assert "no 'backbone' key" in embed_error(invalid)
    # the same checks guard training (before any work is done) and fine-tuned-model commands
    sets = tiny_settings(shards, work / "runs", "no_encoder", **{"model.encoder": str(empty)})
    err = cli_error(["train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)]], capsys)
    assert "no config.json" in err
    err = cli_error(["predict", "--model", str(bad / "does_not_exist"), wav], capsys)
    assert "not a model directory" in err
    # a pretrained encoder is not a task model
    err = cli_error(["predict", "--model", str(export), wav], capsys)
    assert "not a fine-tuned model" in err


def test_unknown_backbone_is_named_with_the_known_ones(export, finetuned, shards, wavs, work, capsys):
    for src, name in ((export, "pretrained"), (finetuned[0] / "export", "finetuned")):
        d = work / "unknown_backbone" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
        config = json.loads((src / "config.json").read_text()) | {"backbone": "transformerxl"}
        (d / "config.json").write_text(json.dumps(config))
    pre, fine = work / "unknown_backbone" / "pretrained", work / "unknown_backbone" / "finetuned"
    wav = str(wavs["short"])
    errors = [
        cli_error(["embed", "--model", str(pre), wav, "--out", str(work / "unused")], capsys),
        cli_error(["predict", "--model", str(fine), wav], capsys),
        cli_error(["evaluate", "--model", str(fine), str(shards / "test")], capsys),
    ]
    for err in errors:
        assert "transformerxl" in err and "config.json" in err
        assert all(known in err for known in ("vit", "mamba", "rwkv7", "repinception")), err
    with pytest.raises(ExportError, match="transformerxl"):
        load_encoder(str(pre), random_init=True)  # the random-init baseline reads the same config


@pytest.mark.timeout(120)
def test_labels_the_model_does_not_know(finetuned, corpus, work, capsys):
    """Evaluating on shards whose vocabulary has an extra label is an error naming that label."""
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:8]
    with open(corpus / "alien.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        for i, r in enumerate(rows):
            w.writerow([r["path"], "alien_sound" if i == 3 else r["labels"]])
    out = work / "alien_shards"
    data_prep_main(["shard", str(corpus / "alien.csv"), str(out), "--layout", "manifest",
                    "--samples-per-shard", "4", "--workers", "1", "-q"])
    model = str(finetuned[0] / "export")
    err = cli_error(["evaluate", "--model", model, str(out)], capsys)
    assert "alien_sound" in err and "not known to the model" in err
    # without an index (a plain list of tars) the unknown label is caught while reading
    tars = ",".join(sorted(str(p) for p in out.glob("*.tar")))
    err = cli_error(["evaluate", "--model", model, tars], capsys)
    assert "alien_sound" in err


def test_predict_with_only_unreadable_files_fails(finetuned, wavs, capsys):
    with pytest.raises(SystemExit) as e:
        finetune_main(["predict", "--model", str(finetuned[0] / "export"), str(wavs["broken"])])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert str(wavs["broken"]) in err and "0 file(s)" in err


def test_cls_pooling_needs_cls_tokens(shards, work, capsys):
    export = work / "nocls" / "export"
    torch.manual_seed(0)
    Encoder(EncoderConfig(backbone="vit", backbone_config=TINY_VIT | {"num_cls": 0}, input_frames=128)).save_pretrained(export)
    sets = tiny_settings(shards, work / "runs", "nocls", **{"model.encoder": str(export), "model.pooling": "cls"})
    err = cli_error(["train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)]], capsys)
    assert "model.pooling" in err and "cls" in err


def test_kfold_needs_a_fold_field_and_clips_in_each_fold(fold_shards, shards, export, work, capsys):
    base = {"model.encoder": str(export), "data.folds": [1], "train.steps_per_epoch": 1}
    # shards without a `fold` field: refused before training
    sets = tiny_settings(shards, work / "runs", "nofold", **base)
    err = cli_error(["train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)]], capsys)
    assert "data.folds" in err and "'fold'" in err
    # a fold no clip belongs to: nothing to test on, said so (not a numpy traceback)
    shard_dir, _ = fold_shards
    sets = tiny_settings(shard_dir, work / "runs", "fold9", **(base | {"data.train": str(shard_dir),
                                                                      "data.folds": [9]}))
    sets = [s.replace(str(shard_dir / "valid"), "/nonexistent/valid") for s in sets]  # not read with folds
    err = cli_error(["train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)]], capsys)
    assert "no labeled sample to evaluate" in err and "fold in [9]" in err


@pytest.mark.timeout(240)
def test_compare_runs_probe_and_full_from_pretrained_and_random(shards, work, capsys):
    from finetune.compare import compare

    # an export whose weights differ from the seed-0 random init that `compare` builds as the baseline
    export = make_vit_export(work / "cmp_export", seed=7)
    rows = compare(str(DEMO), str(export), tiny_settings(shards, work / "runs", "cmp"))
    assert set(rows) == {(m, i) for m in ("linear_probe", "full") for i in ("pretrained", "random")}
    saved = json.loads((work / "runs" / "cmp_compare.json").read_text())
    assert set(saved) == {"linear_probe/pretrained", "linear_probe/random", "full/pretrained", "full/random"}
    for (mode, init), row in rows.items():
        assert row["split"] == "test" and 0.0 <= row["accuracy"] <= 1.0
        metrics = json.loads((work / "runs" / f"cmp_{mode}_{init}" / "metrics.json").read_text())
        assert metrics["random_init"] == (init == "random") and metrics["mode"] == mode
        assert len(metrics["history"]) == (4 if mode == "linear_probe" else 1)  # probes get 4x the epochs
    # the random-init twin really is another encoder
    pre = load_file(str(work / "runs" / "cmp_linear_probe_pretrained" / "export" / "model.safetensors"))
    rnd = load_file(str(work / "runs" / "cmp_linear_probe_random" / "export" / "model.safetensors"))
    assert not torch.equal(pre["encoder.patch_embed.weight"], rnd["encoder.patch_embed.weight"])
    out = capsys.readouterr().out
    assert "seed 0" in out and "linear_probe: pretraining gain" in out and "full: pretraining gain" in out


# ----- issue 13: one error line (exit 2) for bad options and data; a header at the start of training -----

def test_train_prints_a_header(finetuned, export):
    proc = ok(finetuned[1])
    header = next(line for line in proc.stderr.splitlines() if line.startswith("finetune: encoder"))
    for words in (str(export), "vit 32x2", "classes (", "train ", "valid ", "test ", "normalization mean",
                  "computed on the training shards", "global batch 4 x 1 = 4"):
        assert words in header, (words, header)


@pytest.mark.parametrize("option,value", [("--top-k", "-1"), ("--top-k", "0"), ("--hop", "-1"), ("--hop", "0")])
def test_predict_refuses_bad_window_options(finetuned, wavs, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        finetune_main(["predict", "--model", str(finetuned[0] / "export"), option, value, str(wavs["short"])])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


def test_evaluate_refuses_unlabeled_shards(finetuned, corpus, work, capsys):
    unlabeled = work / "unlabeled"
    data_prep_main(["shard", str(corpus), str(unlabeled), "--layout", "folder", "--workers", "1", "-q"])
    err = cli_error(["evaluate", "--model", str(finetuned[0] / "export"), str(unlabeled)], capsys)
    assert "no label vocabulary" in err and "evaluate needs labeled shards" in err
    tars = ",".join(sorted(str(p) for p in unlabeled.glob("*.tar")))  # no index.json: found from the samples
    err = cli_error(["evaluate", "--model", str(finetuned[0] / "export"), tars], capsys)
    assert "no sample has a label" in err


def test_a_tampered_export_is_one_line(finetuned, wavs, work, capsys):
    src = finetuned[0] / "export"
    bad = work / "tampered"
    bad.mkdir(exist_ok=True)
    (bad / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    cfg["backbone_config"]["dim"] = str(cfg["backbone_config"]["dim"])
    (bad / "config.json").write_text(json.dumps(cfg))
    for argv in (["predict", "--model", str(bad), str(wavs["short"])],
                 ["embed", "--model", str(bad), "--out", str(work / "emb_bad"), str(wavs["short"])]):
        err = cli_error(argv, capsys)
        assert "backbone_config.dim = '32' is not a number" in err and "Traceback" not in err


def test_embed_refuses_a_window_shorter_than_a_patch(export, wavs, work, capsys):
    err = cli_error(["embed", "--model", str(export), "--out", str(work / "emb8"), "--target-frames", "8",
                     str(wavs["short"])], capsys)
    assert "window of 8 frames is shorter than one patch" in err


def _two_cpu_ranks(*args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 CPU processes of ``python -m finetune ARGS``."""
    proc = launch_two_cpu_ranks("finetune", *args, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(300)
def test_kfold_on_two_cpu_ranks(fold_shards, export, work):
    """Cross-validation with 2 CPU processes: every fold trains and is tested on both ranks (the process group
    outlives each fold's run; it used to be destroyed after the first fold)."""
    shard_dir, counts = fold_shards
    sets = tiny_settings(shard_dir, work / "runs", "kfold_ddp", **{"model.encoder": str(export), "data.train": str(shard_dir),
                                                                 "data.valid": None, "data.test": None, "data.folds": [1, 2],
                                                                 "train.steps_per_epoch": 1})
    _two_cpu_ranks("train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)])
    summary = json.loads((work / "runs" / "kfold_ddp" / "metrics.json").read_text())
    assert set(summary["folds"]) == {"1", "2"}
    for f in (1, 2):
        assert summary["folds"][str(f)]["num_samples"] == counts[f], "each fold is tested on all its clips, across ranks"


@pytest.mark.timeout(300)
def test_compare_on_two_cpu_ranks(shards, export, work):
    """`finetune compare` (four runs in one process) with 2 CPU processes: one table, one compare.json."""
    sets = tiny_settings(shards, work / "runs", "cmp_ddp")
    proc = _two_cpu_ranks("compare", "--recipe", str(DEMO), "--encoder", str(export), *[a for s in sets for a in ("--set", s)])
    assert proc.stdout.count("pretraining gain") == 2, proc.stdout  # printed by the main process only
    saved = json.loads((work / "runs" / "cmp_ddp_compare.json").read_text())
    assert set(saved) == {"linear_probe/pretrained", "linear_probe/random", "full/pretrained", "full/random"}



@pytest.mark.timeout(300)
@pytest.mark.parametrize("backbone", ["vit", "mamba", "rwkv7", "repinception"])
def test_full_finetuning_on_two_cpu_ranks(backbone, shards, work):
    """Full fine-tuning with 2 CPU processes, every backbone: each trainable parameter gets a gradient
    (DDP stops at the second step otherwise; pretraining's mask token used to be one that got none)."""
    from .test_backbones_pipeline import TINY_BACKBONES

    export = work / f"ddp_{backbone}_export"
    torch.manual_seed(0)
    Encoder(EncoderConfig(backbone=backbone, backbone_config=dict(TINY_BACKBONES[backbone]), input_frames=128)).save_pretrained(export)
    sets = tiny_settings(shards, work / "runs", f"full_ddp_{backbone}", **{"model.encoder": str(export), "model.mode": "full"})
    _two_cpu_ranks("train", "--recipe", str(DEMO), *[a for s in sets for a in ("--set", s)])
    assert json.loads((work / "runs" / f"full_ddp_{backbone}" / "metrics.json").read_text())["test"]["num_samples"] == 7
