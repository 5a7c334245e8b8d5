"""Batched fbank (pretrain.features.fbank) vs per-clip torchaudio kaldi.fbank, same run, 1 thread.

    .venv/bin/python bench/bench_fbank.py [--repeats 9] [--batches 8 32] [--append bench/RESULTS.md]

10 s clips at 16 kHz (tone + noise). Each repeat times our batched call on the whole batch and the
reference loop over the same clips back to back, alternating which goes first, so that load from
other processes hits both alike. Reports median (and min) ms per clip and the ratio of medians,
and checks that both agree (max abs error) on the benchmarked data.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pretrain.features import FeatureConfig, fbank, fbank_reference


def _clips(batch: int, seconds: float, sr: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr), dtype=torch.float32) / sr
    freqs = 100 + 4000 * torch.rand(batch, 1, generator=g)
    tone = 0.3 * torch.sin(2 * math.pi * freqs * t)
    return tone + 0.05 * torch.randn(batch, t.numel(), generator=g)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(batch: int, repeats: int, seconds: float, config: FeatureConfig) -> dict:
    waves = _clips(batch, seconds, config.sample_rate)
    ours_out, _ = fbank(waves, config=config)  # warm-up (builds the cached constants)
    ref_out = torch.stack([fbank_reference(w, config) for w in waves])
    max_err = float((ours_out - ref_out).abs().max())
    ours, ref = [], []
    for r in range(repeats):
        pair = [("ours", lambda: fbank(waves, config=config)),
                ("ref", lambda: [fbank_reference(w, config) for w in waves])]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            (ours if name == "ours" else ref).append(_time(fn) * 1000 / batch)
    return {
        "batch": batch,
        "ours_med": statistics.median(ours),
        "ours_min": min(ours),
        "ref_med": statistics.median(ref),
        "ref_min": min(ref),
        "ratio_med": statistics.median(ref) / statistics.median(ours),
        "ratio_min": min(ref) / min(ours),
        "max_err": max_err,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--append", type=Path, help="append a markdown section to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = FeatureConfig()
    rows = []
    for batch in args.batches:
        row = run(batch, args.repeats, args.seconds, config)
        rows.append(row)
        print(
            f"batch {batch:3d}: ours {row['ours_med']:.2f} ms/clip (min {row['ours_min']:.2f}), "
            f"torchaudio kaldi {row['ref_med']:.2f} ms/clip (min {row['ref_min']:.2f}), "
            f"ratio {row['ratio_med']:.2f}x (of mins {row['ratio_min']:.2f}x), "
            f"max |err| {row['max_err']:.1e}",
            flush=True,
        )
    if args.append:
        command = "cd /work/main && .venv/bin/python bench/bench_fbank.py " + " ".join(sys.argv[1:])
        lines = [
            "",
            "## fbank: batched `pretrain.features.fbank` vs per-clip torchaudio `kaldi.fbank`",
            "",
            f"`{command.strip()}`",
            "",
            f"{args.seconds:g} s clips at 16 kHz (tone + noise), SSAST's fbank arguments, "
            f"`torch.set_num_threads(1)`, {args.repeats} repeats, ours and the reference alternated in "
            f"the same run; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}. The machine was shared with other jobs: the median "
            "is the headline, the ratio of minima is the less load-sensitive estimate.",
            "",
            "| batch | ours ms/clip (median / min) | kaldi ms/clip (median / min) | speed-up (medians) "
            "| speed-up (minima) | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['batch']} | {row['ours_med']:.2f} / {row['ours_min']:.2f} "
                f"| {row['ref_med']:.2f} / {row['ref_min']:.2f} | **{row['ratio_med']:.2f}×** "
                f"| {row['ratio_min']:.2f}× | {row['max_err']:.1e} |"
            )
        with open(args.append, "a") as f:  # one write: other benchmarks append to the same file
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
