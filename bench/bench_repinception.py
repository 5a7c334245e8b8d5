"""Benchmark the AudioRepInceptionNeXt backbone on CPU.

1. ``fused``: inference of the paper's model (``base``, trunk + decoder through the Encoder, eval,
   no_grad) in its multi-branch training form vs re-parameterized (one depthwise conv per
   cascade), same process, runs interleaved so machine load hits both alike; ratio and max |diff|.
2. ``scaling``: forward + backward time and peak memory vs audio length, batch 1, next to the
   other backbones' tiny presets (ViT SDPA and naive attention, bidirectional Mamba, RWKV-7) and
   ARIN base; ARIN also with a pretraining mask (59% of the patches, cluster masks) to show the
   cost of the masked (SparK-style) path. Every case runs in a fresh subprocess, so the peak
   resident memory (``ru_maxrss``) minus the resident size before the measured call is that
   case's own peak. Times are the best of ``--repeat`` runs after a warm-up (one cold run for
   inputs of 8192 frames and more).

    .venv/bin/python bench/bench_repinception.py fused [--frames 512 1024] [--batch 4]
    .venv/bin/python bench/bench_repinception.py scaling [--frames 1024 4096 16384]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import child

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# label -> (backbone, preset, backbone_config overrides, masked)
MODELS = {
    "arin-tiny": ("repinception", "tiny", {}, False),
    "arin-tiny+mask": ("repinception", "tiny", {}, True),
    "arin-base": ("repinception", "base", {}, False),
    "vit-tiny-sdpa": ("vit", "tiny", {"attention": "sdpa"}, False),
    "vit-tiny-naive": ("vit", "tiny", {"attention": "naive"}, False),
    "mamba-tiny": ("mamba", "tiny", {}, False),
    "rwkv7-t": ("rwkv7", "t", {}, False),
}


def build_encoder(backbone: str, preset: str, overrides: dict, frames: int):
    from pretrain.backbones import make_backbone_config
    from pretrain.encoder import Encoder, EncoderConfig

    cfg = dataclasses.asdict(make_backbone_config(backbone, preset, **overrides))
    return Encoder(EncoderConfig(backbone=backbone, backbone_config=cfg, input_frames=frames))


def run_case(case: dict) -> dict:
    """One forward + backward measurement, executed in the child process."""
    import torch

    from pretrain.masking import make_mask

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    backbone, preset, overrides, masked = MODELS[case["model"]]
    frames = case["frames"]
    # Token models size their position embedding for the pretraining length; CNNs need none.
    enc = build_encoder(backbone, preset, overrides, 1024 if backbone != "repinception" else frames)
    enc.train()
    fbank = torch.randn(1, frames, 128)
    grid = enc.grid_for(frames)
    mask = None
    if masked:
        valid = torch.ones(1, grid[0] * grid[1], dtype=torch.bool)
        count = round(0.59 * grid[0] * grid[1])
        mask = make_mask("cluster", valid, grid, count, torch.Generator().manual_seed(0))

    def step():
        enc.zero_grad(set_to_none=True)
        enc(fbank, mask).patches.square().mean().backward()

    return child.measure(step, case["repeat"], warmup=frames < 8192)


def spawn(case: dict, timeout: float) -> dict:
    return child.spawn(__file__, case, timeout)


def naive_attention_gb(frames: int) -> float:
    tokens = frames // 16 * 8
    return 2 * 3 * tokens * tokens * 4 * 12 / 2**30  # scores + probabilities, 3 heads, 12 layers kept


def bench_scaling(args) -> None:
    models = [m for m in args.models]
    available = {}
    for m in models:
        try:
            from pretrain.backbones import backbone_class

            backbone_class(MODELS[m][0])
            available[m] = True
        except (ImportError, ModuleNotFoundError) as e:
            available[m] = False
            print(f"# {m}: backbone missing ({e})")
    print("\nforward + backward, batch 1, seconds / peak MB\n")
    print("| frames | audio | " + " | ".join(models) + " | ViT-SDPA / ARIN-tiny |")
    print("|---|---|" + "---|" * len(models) + "---|")
    for frames in args.frames:
        res = {}
        for m in models:
            if not available[m]:
                res[m] = {"error": "missing"}
            elif m == "vit-tiny-naive" and naive_attention_gb(frames) > args.max_gb:
                res[m] = {"error": f"skipped (~{naive_attention_gb(frames):.0f} GB)"}
            else:
                case = {"model": m, "frames": frames, "threads": args.threads, "repeat": args.repeat}
                res[m] = spawn(case, args.timeout)
        cells = [
            f"{r['seconds']:.2f} / {r['peak_mb']:.0f}" if "seconds" in r else r["error"] for r in res.values()
        ]
        ratio = "-"
        a, v = res.get("arin-tiny", {}), res.get("vit-tiny-sdpa", {})
        if "seconds" in a and "seconds" in v:
            ratio = f"{v['seconds'] / a['seconds']:.2f}x"
        secs = frames / 100
        audio = f"{int(secs // 60)}:{secs % 60:04.1f}"
        print(f"| {frames} | {audio} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


def bench_fused(args) -> None:
    import torch

    from pretrain.backbones.repinception import reparameterize_encoder

    torch.set_num_threads(args.threads)
    print("\nARIN base, inference (eval, no_grad), seconds per batch (best of runs)\n")
    print("| frames | batch | multi-branch s | fused s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for frames in args.frames:
        torch.manual_seed(0)
        multi = build_encoder("repinception", "base", {}, frames)
        with torch.no_grad():  # non-trivial BN statistics, as after training
            for m in multi.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        multi.eval()
        fused = build_encoder("repinception", "base", {}, frames)
        fused.load_state_dict(multi.state_dict())
        reparameterize_encoder(fused.eval())
        x = torch.randn(args.batch, frames, 128)
        times = {"multi": [], "fused": []}
        with torch.no_grad():
            diff = (multi(x).patches - fused(x).patches).abs().max().item()  # also the warm-up
            for _ in range(args.repeat):
                for name, model in (("multi", multi), ("fused", fused)):
                    t0 = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - t0)
        tm, tf = min(times["multi"]), min(times["fused"])
        print(f"| {frames} | {args.batch} | {tm:.3f} | {tf:.3f} | {tm / tf:.2f}x | {diff:.1e} |", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(run_case(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fused", "scaling"])
    p.add_argument("--frames", type=int, nargs="*", help="lengths (fused: 512 1024; scaling: 1024 4096)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=4, help="fused: batch size")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--max-gb", type=float, default=5.0, help="skip naive attention estimated above this")
    args = p.parse_args()
    args.frames = args.frames or ([512, 1024] if args.what == "fused" else [1024, 4096])
    load = os.getloadavg()[0]
    print(f"# torch threads {args.threads}; load average before: {load:.1f} on {os.cpu_count()} cores")
    bench_fused(args) if args.what == "fused" else bench_scaling(args)
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
