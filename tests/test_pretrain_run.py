"""Pretraining end to end: CLI run, export, two real accelerate ranks, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.config import load_recipe
from pretrain.data import resolve_shards, slot_shards
from pretrain.encoder import Encoder

from .conftest import REPO, launch_two_cpu_ranks, run_cli

TINY = [
    "model.backbone_config.dim=32", "model.backbone_config.depth=2", "model.backbone_config.num_heads=2",
    "data.target_frames=128", "data.num_workers=0", "data.shuffle_buffer=8", "masking.count=30",
    "optim.lr=2e-3", "schedule.warmup_steps=2", "train.batch_size=4", "train.log_every=1",
    "train.val_every=1000", "train.checkpoint_every=1000", "data.valid=''",
]


def tiny_args(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    sets = TINY + [f"data.train={shards / 'train'}", f"run.output_dir={out}", f"run.name={name}", *extra]
    return ["pretrain", "train", "--recipe", str(REPO / "recipes/pretrain/demo.toml"),
            *[a for s in sets for a in ("--set", s)]]


@pytest.mark.timeout(400)
def test_pretrain_end_to_end_loss_decreases_and_export_reloads(tiny_shards, tmp_path):
    args = tiny_args(tiny_shards, tmp_path, "e2e", "train.max_steps=30", f"data.valid={tiny_shards / 'valid'}",
                     "train.val_every=30", "data.samples_per_epoch=16")
    run_cli(*args)
    run = tmp_path / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert "val/acc" in metrics["validation"]
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 30
    assert list((run / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"
    export = run / "export"
    assert (export / "heads.safetensors").is_file()
    enc = Encoder.from_pretrained(export).eval()
    weights = load_file(str(export / "model.safetensors"))
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in weights.items())
    x = torch.randn(2, 128, 128)
    assert torch.equal(enc(x).patches, Encoder.from_pretrained(export).eval()(x).patches)
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["trained_on"]["steps"] == 30 and cfg["normalization"]["std"] > 0


def test_pretrain_cli_errors(tiny_shards, tmp_path):
    p = run_cli("pretrain", "train", "--set", "optim.lrr=1", check=False)
    assert p.returncode != 0 and "lrr" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("pretrain", "train", "--set", f"data.train={tmp_path}/missing-{{0..3}}.tar", check=False)
    assert p.returncode != 0 and "not found" in p.stderr and "Traceback" not in p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli("pretrain", "train", "--set", f"data.train={empty}", check=False)
    assert p.returncode != 0 and "index.json" in p.stderr and "Traceback" not in p.stderr
    # A TrainingError (matched by its type) is one line too: shards without index.json have no sample count.
    shard = sorted((tiny_shards / "train").glob("*.tar"))[0]
    p = run_cli("pretrain", "train", "--set", f"data.train={shard}", "--set", f"run.output_dir={tmp_path}",
                check=False)
    assert p.returncode == 2 and "error:" in p.stderr and "samples_per_epoch" in p.stderr
    assert "Traceback" not in p.stderr


def _cut_one_shard_per_rank(tiny_shards: Path, out: Path, seed: int) -> list[str]:
    """A copy of the train set where each of 2 reader slots (ranks, or one rank's 2 loader workers) owns one
    shard cut to 60%; their names."""
    (out / "train").mkdir(parents=True)
    for p in (tiny_shards / "train").iterdir():
        if p.is_file():
            (out / "train" / p.name).write_bytes(p.read_bytes())
    urls = resolve_shards(str(out / "train")).urls
    cut = [Path(slot_shards(urls, seed, rank, 2)[0]) for rank in range(2)]
    for p in cut:
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
    return [p.name for p in cut]


@pytest.mark.timeout(500)
def test_two_cpu_ranks_under_accelerate_launch(tiny_shards, tmp_path):
    """Real `accelerate launch` with 2 CPU processes: disjoint data, identical parameters, no hang;
    each rank's damaged shard is warned about once and listed in metrics.json."""
    seed = load_recipe(REPO / "recipes/pretrain/demo.toml").train.seed
    cut = _cut_one_shard_per_rank(tiny_shards, tmp_path / "data", seed)
    args = tiny_args(tmp_path / "data", tmp_path, "ddp", "train.max_steps=6", "train.record_keys=true",
                     "data.samples_per_epoch=16")
    proc = launch_two_cpu_ranks(*args)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) + "\n...\n" + proc.stderr[-2000:]
    run = tmp_path / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2
    c0, c1 = metrics["rank_param_checksums"]
    assert c0 == c1
    k0 = (run / "keys_rank0.txt").read_text().split()
    k1 = (run / "keys_rank1.txt").read_text().split()
    assert len(k0) == len(k1) == 6 * 4  # same number of batches on both ranks (uneven shards, no hang)
    assert not set(k0) & set(k1)  # disjoint shard subsets
    for rank, name in enumerate(cut):
        warned = [x for x in proc.stderr.splitlines() if x.startswith("warning:") and name in x and "lost" in x]
        assert len(warned) == 1 and f"rank {rank}" in warned[0] and "lost" in warned[0], proc.stderr[-3000:]
        assert any(name in e and "lost" in e for e in metrics["corrupt_list"]), metrics["corrupt_list"]
    assert metrics["corrupt_samples"] > 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backbone", ["mamba", "rwkv7", "repinception"])
def test_every_backbone_pretrains_on_two_cpu_ranks(backbone, tiny_shards, tmp_path):
    """DDP stops at the second step when a trainable parameter got no gradient (RWKV-7's layer 0 has an
    unused value-residual LoRA): every backbone trains 3 steps on 2 ranks and ends with equal weights."""
    from .test_backbones_pipeline import TINY_BACKBONES

    sets = [f"model.backbone={backbone}", "model.preset=''", f"model.backbone_config={json.dumps(TINY_BACKBONES[backbone])}",
            "train.max_steps=3", "data.samples_per_epoch=16"]
    args = tiny_args(tiny_shards, tmp_path, "ddp", *sets)
    proc = launch_two_cpu_ranks(*args, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c0, c1 = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["rank_param_checksums"]
    assert c0 == c1


@pytest.mark.timeout(600)
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_shards, tmp_path):
    """Weights, metrics.json history and corrupt list, keys files and TensorBoard scalars all equal an
    uninterrupted run's (the data has a damaged shard in each of the two loader workers' subsets)."""
    common = ["train.max_steps=12", "train.checkpoint_every=4", "data.num_workers=2", "data.samples_per_epoch=20",
              "train.record_keys=true"]
    data = tmp_path / "data"
    _cut_one_shard_per_rank(tiny_shards, data, load_recipe(REPO / "recipes/pretrain/demo.toml").train.seed)
    run_cli(*tiny_args(data, tmp_path, "straight", *common))
    # Same run, killed (SIGKILL) once its first checkpoint is complete, then started again.
    args = tiny_args(data, tmp_path, "killed", *common)
    ckpt = tmp_path / "killed" / "checkpoints"
    # On an idle machine the tiny run can finish between two polls; then it was not killed and is
    # started again from scratch (tight polls make that rare; three misses fail the test).
    for _ in range(3):
        shutil.rmtree(tmp_path / "killed", ignore_errors=True)
        if _killed_after_checkpoint(args, tmp_path / "killed", ckpt / "step-4"):
            break
    else:
        pytest.fail("the run finished three times before it could be killed after its step-4 checkpoint")
    assert (ckpt / "step-4").is_dir() and not (tmp_path / "killed" / "export").exists()
    out = run_cli(*args)
    assert "resumed from" in out.stderr
    a = load_file(str(tmp_path / "straight" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    steps = sorted(int(p.name[5:]) for p in ckpt.iterdir() if p.name.startswith("step-"))
    assert steps[-1] == 12
    straight, killed = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("straight", "killed"))
    assert [h["step"] for h in killed["history"]] == [h["step"] for h in straight["history"]] == list(range(1, 13))
    assert all(k == pytest.approx(s, rel=1e-5) for k, s in zip(killed["history"], straight["history"]))
    assert (tmp_path / "killed" / "keys_rank0.txt").read_text() == (tmp_path / "straight" / "keys_rank0.txt").read_text()
    assert straight["corrupt_samples"] > 0 and straight["corrupt_list"]
    assert (killed["corrupt_samples"], killed["corrupt_list"]) == (straight["corrupt_samples"], straight["corrupt_list"])
    tb = {n: _scalars(tmp_path / n, "train/loss") for n in ("straight", "killed")}
    assert [s for s, _ in tb["killed"]] == [s for s, _ in tb["straight"]] == list(range(1, 13))

    # checkpoints and exports get the umask's modes (safetensors alone writes 0600)
    mask = os.umask(0)
    os.umask(mask)
    files = [*(tmp_path / "straight" / "export").iterdir(), *(ckpt / "step-12").rglob("*.safetensors")]
    assert files and {f.stat().st_mode & 0o777 for f in files} == {0o666 & ~mask}, files


def _killed_after_checkpoint(args: list[str], run: Path, checkpoint: Path) -> bool:
    """Start the run, SIGKILL it once ``checkpoint`` is complete and a later step is logged (so that step
    is logged twice); False when the run finished before the kill."""
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and not checkpoint.is_dir() and proc.poll() is None:
        time.sleep(0.005)
    logged = _event_bytes(run)
    while time.time() < deadline and _event_bytes(run) == logged and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _event_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "logs").rglob("events.out.tfevents*"))


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard shows it (restarts purged as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "logs" / run.name))  # the run's scalars (hparams go to subfolders)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]
