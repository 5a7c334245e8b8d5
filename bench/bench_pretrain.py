"""Pretraining benchmarks (issue 3), each against a reference measured in the same run.

    .venv/bin/python bench/bench_pretrain.py loader [--clips 64]
    .venv/bin/python bench/bench_pretrain.py step [--batch 8 --frames 1024 --repeats 3]
    .venv/bin/python bench/bench_pretrain.py launch [--clips 960 --steps 200 --repeats 2]
    add --append bench/RESULTS.md to append the table

loader: clips/s and x-realtime of one loader worker (decode FLAC + crop + batched fbank + normalize)
        on 10 s clips, next to the per-clip torchaudio kaldi.fbank path on the same decoded audio.
step:   one SSAST-tiny training step (forward, backward, Adam) at batch x 1024 frames, 400 of 512
        patches masked: our default (one pass, SDPA) vs the same model configured as the original
        (two passes with two masks, naive attention).
launch: the demo recipe (recipes/pretrain/demo.toml, global batch 32) on CPU, end to end through the CLI:
        one process with all cores as threads vs two `accelerate launch` ranks with half the cores each
        (batch 16 per rank, loading in the main process) — how `make demo` chooses to pretrain on CPU.
        Use the demo's corpus size (--clips 960): with a tiny corpus every epoch is a couple of batches and
        the loader restart at each epoch (a new worker refilling its shuffle buffer) dominates.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

from pretrain.backbones import make_backbone_config
from pretrain.data import ShardStream, make_loader, resolve_shards
from pretrain.encoder import Encoder, EncoderConfig
from pretrain.features import FeatureConfig, fbank_reference, normalize
from pretrain.masking import make_mask
from pretrain.patches import valid_patches
from pretrain.ssast import Pretrainer


def _write_shards(root: Path, clips: int, seconds: float = 10.0, per_shard: int = 16) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    with wds.ShardWriter(str(root / "bench-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(clips):
            wave = 0.3 * np.sin(2 * math.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(t.size)
            buf = io.BytesIO()
            sf.write(buf, wave.astype(np.float32), 16000, format="FLAC", subtype="PCM_16")
            w.write({"__key__": f"clip{i:05d}", "flac": buf.getvalue(), "json": {"source": f"{i}.flac"}})
    return root


def bench_loader(clips: int) -> list[str]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        root = _write_shards(Path(d), clips)
        shards = resolve_shards(str(root / f"bench-{{000000..{(clips - 1) // 16:06d}}}.tar"))
        stream = ShardStream(shards, batch_size=8, target_frames=1024, mode="eval", drop_last=False)
        t0 = time.perf_counter()
        n = sum(len(b["keys"]) for b in make_loader(stream))
        ours = time.perf_counter() - t0
        # Reference: the same decode, then per-clip torchaudio kaldi.fbank + pad + normalize.
        stream = ShardStream(shards, batch_size=8, target_frames=1024, mode="eval", drop_last=False,
                             compute_features=False)
        cfg = FeatureConfig()
        t0 = time.perf_counter()
        m = 0
        for b in make_loader(stream):
            for w, length in zip(b["waves"], b["lengths"]):
                f = fbank_reference(w[:length], cfg)
                f = torch.nn.functional.pad(f, (0, 0, 0, max(0, 1024 - f.shape[0])))[:1024]
                normalize(f, stream.normalization)
                m += 1
        ref = time.perf_counter() - t0
    assert n == m == clips and cfg.sample_rate == 16000
    return [
        "| loader path (1 worker, 1 thread) | clips/s | x realtime (10 s clips) |",
        "|---|---|---|",
        f"| ours: decode + batched fbank | {n / ours:.1f} | {10 * n / ours:.0f}x |",
        f"| reference: decode + per-clip kaldi.fbank | {m / ref:.1f} | {10 * m / ref:.0f}x |",
        f"| ratio | {ref / ours:.2f}x | |",
    ]


def _model(attention: str) -> Pretrainer:
    torch.manual_seed(0)
    bconf = make_backbone_config("vit", "tiny", attention=attention)
    enc = Encoder(EncoderConfig(backbone="vit", backbone_config=vars(bconf), input_frames=1024))
    return Pretrainer(enc)


def bench_step(batch: int, frames: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    x = torch.randn(batch, frames, 128)
    grid = (frames // 16, 8)
    valid = valid_patches(torch.full((batch,), frames), grid, (16, 16), (16, 16))
    g = torch.Generator().manual_seed(0)
    masks = [make_mask("cluster", valid, grid, 400, generator=g) for _ in range(2)]
    setups = {"ours (one pass, SDPA)": (_model("sdpa"), masks[:1]),
              "original (two passes, naive attention)": (_model("naive"), masks)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, (m, _) in setups.items()}
    times: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(repeats + 1):  # the first round is a warm-up
        for k in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
            model, ms = setups[k]
            t0 = time.perf_counter()
            model(x, ms)["loss"].backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if r:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["original (two passes, naive attention)"]
    rows = ["| SSAST-tiny step | median s | speed-up vs original |", "|---|---|---|"]
    rows += [f"| {k} | {v:.2f} | {base / v:.2f}x |" for k, v in med.items()]
    return rows


def _demo_run(root: Path, name: str, steps: int, ranks: int) -> tuple[float, float]:
    """One `pretrain train` run of the demo recipe: (steps/s from its last progress line, wall seconds)."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // ranks)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    cmd = [py, "-m", "pretrain", "train"]
    sets = {"data.train": str(root / "shards" / "train"), "data.valid": str(root / "shards" / "valid"),
            "features.stats": str(root / "stats.json"), "train.max_steps": str(steps),
            "train.val_every": str(10 * steps), "train.checkpoint_every": str(10 * steps),
            "run.output_dir": str(root / name)}
    if ranks > 1:
        env |= {"ACCELERATE_USE_CPU": "1"}
        cmd = [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(ranks),
               "--num_machines", "1", "-m", "pretrain", "train"]
        sets |= {"train.batch_size": str(32 // ranks), "data.num_workers": "0" if threads == 1 else "1"}
    cmd += ["--recipe", str(Path(__file__).resolve().parents[1] / "recipes/pretrain/demo.toml")]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    # core.progress's last line, e.g. "pretrain: 100% 200/200 [01:04<00:00,  3.12step/s, loss ...]"; its rate
    # is measured over the last minute after the first step (start-up excluded).
    rates = re.findall(rf" {steps}/{steps} \[[^,\]]*, *([0-9.]+)step/s", proc.stderr)
    return float(rates[-1]), wall


def bench_launch(clips: int, steps: int, repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        py = sys.executable
        for cmd in (["data_prep", "synth", str(root / "corpus"), "--clips", str(clips), "--seed", "0"],
                    ["data_prep", "shard", str(root / "corpus"), str(root / "shards"), "--samples-per-shard", "32",
                     "-q"],
                    ["pretrain", "stats", str(root / "shards" / "train"), "--out", str(root / "stats.json")]):
            subprocess.run([py, "-m", *cmd], check=True, capture_output=True)
        cases = {"one process, all cores as threads": 1, "2 accelerate ranks, half the cores each": 2}
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for r in range(repeats):
            for k in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                runs[k].append(_demo_run(root, f"run{r}_{cases[k]}", steps, cases[k]))
    rate = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
    wall = {k: statistics.median(x[1] for x in v) for k, v in runs.items()}
    base = rate["one process, all cores as threads"]
    rows = [f"| demo recipe, {steps} steps, {os.cpu_count()} cores | steps/s (median) | wall s incl. start-up | "
            "speed-up |", "|---|---|---|---|"]
    rows += [f"| {k} | {rate[k]:.2f} | {wall[k]:.1f} | {rate[k] / base:.2f}x |" for k in cases]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["loader", "step", "launch"])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--append", help="append the table to this markdown file")
    args = ap.parse_args()
    if args.what == "loader":
        rows = bench_loader(args.clips)
        title = f"## Loader: one worker on 10 s clips ({args.clips} clips)"
        cmd = f"bench/bench_pretrain.py loader --clips {args.clips}"
    elif args.what == "launch":
        rows = bench_launch(args.clips, args.steps, args.repeats)
        title = "## Demo pretraining on CPU: one process vs two accelerate ranks"
        cmd = f"bench/bench_pretrain.py launch --clips {args.clips} --steps {args.steps} --repeats {args.repeats}"
    else:
        rows = bench_step(args.batch, args.frames, args.repeats)
        title = f"## SSAST-tiny training step, batch {args.batch} x {args.frames} frames, 400 of 512 masked"
        cmd = f"bench/bench_pretrain.py step --batch {args.batch} --frames {args.frames} --repeats {args.repeats}"
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    text = "\n".join([title, "", f"`.venv/bin/python {cmd}` (torch threads {torch.get_num_threads()}, "
                      f"load average {load} at the end)", "", *rows, ""])
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
