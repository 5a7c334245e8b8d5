"""Cost of the linear-evaluation suite (``finetune probe``) against one forward pass over the same clips.

Task: ``data_prep synth --clips N --seed 0`` sharded into train/valid/test (70/15/15). Model: the demo's
ViT (128 wide, 4 layers, 256-frame windows; random weights: the cost does not depend on them).

* reference: one forward pass of the encoder over every clip of the three splits, as any embedding
  of whole clips must do it: read + decode the shards, cut the clips into the same windows, fbank,
  ``encoder(fbank)`` (final output only, no pooling);
* suite: ``run_probe`` (one model, every layer, mean and meanstd pooling, ridge probes with L2 and layer
  chosen on valid, the weighted layer sum, test scores, probe.json).

Rounds alternate reference / suite in one process, after ``--warmup`` discarded rounds (lazy library
initialization); the median and minimum per side and their ratios are reported.

    .venv/bin/python bench/bench_probe.py [--clips 1000] [--rounds 3] [--work /tmp/bench_probe] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from data_prep.__main__ import main as data_prep_main
from finetune.probe import ProbeSettings, run_probe
from pretrain.data import resolve_shards
from pretrain.encoder import Encoder, EncoderConfig
from pretrain.evaluation.embed import LabeledClips, WindowSpec, clip_windows, read_labeled
from pretrain.features import model_input, pad_waves

DEMO_VIT = {"dim": 128, "depth": 4, "num_heads": 4}


def prepare(work: Path, clips: int) -> tuple[Path, Path]:
    """The sharded synthetic task and the export (made once, reused by later runs)."""
    shards, export = work / f"shards-{clips}", work / "export"
    if not (shards / "test" / "index.json").is_file():
        data_prep_main(["synth", str(work / f"corpus-{clips}"), "--clips", str(clips), "--seed", "0", "--workers", "2"])
        data_prep_main(["shard", str(work / f"corpus-{clips}"), str(shards), "--samples-per-shard", "100",
                        "--workers", "2", "-q", "--overwrite"])
    if not (export / "model.safetensors").is_file():
        torch.manual_seed(0)
        Encoder(EncoderConfig(backbone="vit", backbone_config=dict(DEMO_VIT), input_frames=256)).save_pretrained(export)
    return shards, export


@torch.no_grad()
def forward_pass(shards: Path, export: Path, batch: int = 32) -> int:
    """Read, window, fbank and run the encoder over every clip once; returns the number of windows."""
    enc = Encoder.from_pretrained(export).eval()
    spec = WindowSpec.of(enc)
    windows = 0
    for split in ("train", "valid", "test"):
        s = resolve_shards(str(shards / split))
        pending: list = []
        for wave in read_labeled(s, LabeledClips(split, s.vocabulary or [])):
            pending += clip_windows(wave, spec)
            while len(pending) >= batch:
                fb, _ = model_input(*pad_waves(pending[:batch]), spec.features, spec.normalization, spec.frames)
                enc(fb)
                windows, pending = windows + batch, pending[batch:]
        if pending:
            enc(model_input(*pad_waves(pending), spec.features, spec.normalization, spec.frames)[0])
            windows += len(pending)
    return windows


def suite(shards: Path, export: Path, out: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return run_probe([str(export)], [f"synth={shards}"], settings=ProbeSettings(), out_dir=str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_probe"))
    ap.add_argument("--warmup", type=int, default=1, help="discarded rounds first (lazy library initialization)")
    ap.add_argument("--append", type=Path, default=None)
    args = ap.parse_args()
    shards, export = prepare(args.work, args.clips)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"forward": [], "suite": []}
    windows, report = 0, {}
    for r in range(args.warmup + args.rounds):
        t0 = time.perf_counter()
        windows = forward_pass(shards, export)
        t1 = time.perf_counter()
        report = suite(shards, export, args.work / "out")
        t2 = time.perf_counter()
        if r >= args.warmup:
            times["forward"].append(t1 - t0)
            times["suite"].append(t2 - t1)
        warm = " (warm-up, discarded)" if r < args.warmup else ""
        print(f"round {r}{warm}: forward {t1 - t0:.1f} s, suite {t2 - t1:.1f} s", flush=True)
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    task = report["tasks"]["synth"]
    clips = sum(task["clips"].values())
    lines = [
        "",
        "## finetune probe: the whole suite vs one forward pass over the same clips",
        "",
        f"`.venv/bin/python bench/bench_probe.py --clips {args.clips} --rounds {args.rounds} --warmup {args.warmup}`",
        "",
        f"{clips} clips ({windows} windows of 256 frames), the demo ViT (128x4), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (shared machine). Suite: every "
        f"layer (4 blocks + out) x (mean, meanstd), ridge, weighted sum; its own split of the time in the last "
        f"round: features {task['seconds']['features']} s, probes {task['seconds']['probes']} s.",
        "",
        "| | forward pass s (median / min) | suite s (median / min) | ratio (medians) | ratio (minima) |",
        "|---|---|---|---|---|",
        f"| {args.rounds} rounds | {med['forward']:.1f} / {low['forward']:.1f} | {med['suite']:.1f} / {low['suite']:.1f} "
        f"| **{med['suite'] / med['forward']:.2f}x** | {low['suite'] / low['forward']:.2f}x |",
    ]
    print("\n".join(lines))
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
