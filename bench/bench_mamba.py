"""Benchmark the Mamba backbone (issue 5): the selective scan against the per-step loop, and the tiny
encoder against ViT-tiny (SDPA and naive attention) as the number of tokens grows.

Every measurement runs in a fresh subprocess so that its peak RSS (VmHWM minus the RSS just
before the timed call) is its own. CPU only here; time is the wall clock of one call after a
small warm-up call (the machine is shared: every size runs once).

    python bench/bench_mamba.py scan [--lengths 512 2048 8192]
    python bench/bench_mamba.py encoder [--forward-tokens 512 2048 ...] [--train-tokens 512 ...] [--models mamba mamba-plain mamba-ckpt rwkv7 vit-sdpa vit-naive]
    python bench/bench_mamba.py saved [--tokens 8192] [--models vit-sdpa rwkv7 mamba mamba-plain]
    flock /tmp/bigmem.lock python bench/bench_mamba.py targets [--repeats 3] [--step-only] [--lean-too]   # issue 16

``targets`` measures, in one run: the pretraining step of SSAMBA-tiny (``--lean-too``: also with the
lean backward forced) vs ViT-tiny (SDPA) with the project's ``Pretrainer`` (batch 4 x 1024 frames, 400 of
512 patches cluster-masked, one-pass objective, AdamW, fp32, one thread, interleaved rounds; wall and
CPU seconds, medians and minima), then training memory per token at 8k tokens and forward+backward time
at 4k and 16k tokens (batch 1, fresh subprocesses, as ``encoder``). The 16k cases need up to ~16 GB
(SSAMBA-tiny with plain autograd): run it under the big-memory lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The naive attention's score matrices: skip sizes whose (heads x N x N) fp32 scores would exceed this.
NAIVE_SCORE_LIMIT_GB = 1.5
# One intra-op thread: on a shared 2-core machine a second OpenMP thread makes every parallel op wait
# for a scheduler slot (measured 9x slower for the Mamba encoder, which runs many small ops).
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """This process image's own peak (VmHWM): ru_maxrss would carry the parent's size into the child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scan_case(impl: str, length: int, channels: int, state: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))
    from pretrain.backbones.selective_scan import selective_scan
    from tests.test_mamba import naive_selective_scan

    torch.manual_seed(0)
    u = torch.randn(1, length, channels, requires_grad=True)
    delta = torch.randn(1, length, channels, requires_grad=True)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)
    B = torch.randn(1, length, state, requires_grad=True)
    C = torch.randn(1, length, state, requires_grad=True)
    fn = selective_scan if impl == "chunked" else naive_selective_scan
    w = [t[:, :64].detach().requires_grad_() for t in (u, delta, B, C)]  # warm-up: first-call overheads
    fn(w[0], w[1], A, w[2], w[3], None, None, None, True).sum().backward()
    base = _rss_mb()
    t0 = time.perf_counter()
    y = fn(u, delta, A, B, C, None, None, None, True)
    y.square().mean().backward()
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "peak_mb": _peak_mb() - base}


def _encoder_for(model: str):
    """The tiny encoder a model name stands for (built with seed 0)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from pretrain.encoder import Encoder, EncoderConfig

    torch.manual_seed(0)
    if model.startswith("mamba"):
        # SSAMBA-tiny as in recipes/pretrain/ssamba_tiny.toml ("mamba-ckpt": with activation checkpointing;
        # "mamba-plain": lean_backward off, plain autograd keeps every mixer intermediate)
        bconf = dict(dim=192, depth=24, bimamba="v2", cls_position="start", layer_pairing="sum",
                     lean_backward="never" if model.startswith("mamba-plain") else "auto")
        config = EncoderConfig(backbone="mamba", backbone_config=bconf, input_frames=1024)
    elif model == "rwkv7":  # A-RWKV-T, next to Mamba in the same sweep
        from pretrain.backbones import make_backbone_config

        bconf = dataclasses.asdict(make_backbone_config("rwkv7", "t"))
        config = EncoderConfig(backbone="rwkv7", backbone_config=bconf, input_frames=1024)
    else:
        attention = model.split("-")[1]
        config = EncoderConfig(backbone="vit", backbone_config=dict(dim=192, depth=12, num_heads=3,
                                                                    attention=attention), input_frames=1024)
    encoder = Encoder(config)
    encoder.set_gradient_checkpointing(model.endswith("-ckpt"))
    return encoder


def run_encoder_case(model: str, tokens: int, train: bool) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    encoder = _encoder_for(model)
    encoder.train(train)
    fbank = torch.randn(1, 2 * tokens, 128)  # 128 mel / 16 = 8 rows: tokens = frames / 16 * 8
    with torch.no_grad():
        encoder(fbank[:, :64])  # warm-up: first-call overheads
    base = _rss_mb()
    t0 = time.perf_counter()
    if train:
        encoder(fbank).patches.square().mean().backward()
    else:
        with torch.no_grad():
            encoder(fbank)
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "peak_mb": _peak_mb() - base}


def bench_saved(tokens: int, models: list[str]) -> None:
    """Activations autograd keeps for one training forward (saved tensors, each storage counted once,
    parameters excluded): the allocator-independent part of training memory."""
    import torch

    torch.set_num_threads(THREADS)
    print(f"| saved for backward, batch 1 x {tokens} tokens | MB | KB per token | x {models[0]} |\n|---|---|---|---|")
    first = None
    for model in models:
        encoder = _encoder_for(model).train()
        params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor, params=params, storages=storages) -> torch.Tensor:
            if (ptr := t.untyped_storage().data_ptr()) not in params:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoder(torch.randn(1, 2 * tokens, 128))
        total = sum(storages.values())
        first = first or total
        print(f"| {model} | {total / 2**20:.0f} | {total / 1024 / tokens:.0f} | {total / first:.2f} |", flush=True)


def _step_models(lean_too: bool = False) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pretrain.backbones import make_backbone_config
    from pretrain.encoder import Encoder, EncoderConfig
    from pretrain.train import Pretrainer

    ssamba = dict(bimamba="v2", cls_position="start", layer_pairing="sum")
    configs = [("vit-tiny (SDPA)", make_backbone_config("vit", "tiny", attention="sdpa")),
               ("mamba-tiny (SSAMBA)", make_backbone_config("mamba", "tiny", **ssamba))]
    if lean_too:  # "auto" keeps plain autograd at this size; the lean backward's price, side by side
        configs.append(("mamba-tiny, lean_backward=always",
                        make_backbone_config("mamba", "tiny", lean_backward="always", **ssamba)))
    models = {}
    for name, bconf in configs:
        torch.manual_seed(0)
        backbone = "vit" if name.startswith("vit") else "mamba"
        model = Pretrainer(Encoder(EncoderConfig(backbone=backbone, backbone_config=vars(bconf), input_frames=1024)))
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    return models


def bench_step(repeats: int, batch: int = 4, frames: int = 1024, masked: int = 400,
               lean_too: bool = False) -> list[str]:
    """One pretraining step per model per round, the order alternating between rounds; round 0 warms up."""
    import statistics

    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))
    from pretrain.masking import make_mask
    from pretrain.patches import valid_patches

    torch.manual_seed(0)
    x = torch.randn(batch, frames, 128)
    grid = (frames // 16, 8)
    valid = valid_patches(torch.full((batch,), frames), grid, (16, 16), (16, 16))
    mask = make_mask("cluster", valid, grid, masked, generator=torch.Generator().manual_seed(0))
    models = _step_models(lean_too)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    for r in range(repeats + 1):
        for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
            model, opt = models[k]
            t0, c0 = time.perf_counter(), time.process_time()
            model(x, [mask])["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    base = next(iter(models))
    rows = [f"| step, batch {batch} x {frames} frames, {masked}/512 masked | wall median s | wall min s | "
            "CPU median s | x ViT-tiny (wall median) | x ViT-tiny (CPU median) |", "|---|---|---|---|---|---|"]
    for k in models:
        rows.append(f"| {k} | {statistics.median(wall[k]):.2f} | {min(wall[k]):.2f} | {statistics.median(cpu[k]):.2f} "
                    f"| {statistics.median(wall[k]) / statistics.median(wall[base]):.2f} "
                    f"| {statistics.median(cpu[k]) / statistics.median(cpu[base]):.2f} |")
    return rows


def _load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def bench_targets(repeats: int, lengths: bool = True, lean_too: bool = False) -> None:
    load0 = _load()
    print("\n".join(bench_step(repeats, lean_too=lean_too)), flush=True)
    if not lengths:
        print(f"load average {load0} at the start, {_load()} at the end; torch threads {THREADS}")
        return
    cells = {}
    models = ("mamba", "mamba-plain", "mamba-ckpt", "vit-sdpa")
    lengths_ = (4096, 8192, 16384)
    for tokens in lengths_:
        for model in models:
            cells[model, tokens] = _subprocess(["encoder", model, str(tokens), "1"])
    print("\n| forward+backward, batch 1, fp32 | " + " | ".join(models) + " | "
          + " | ".join(f"{m} / vit" for m in models[:-1]) + " |\n|---" * (2 * len(models)) + "|")
    for tokens in lengths_:
        row = [cells[k, tokens] for k in models]
        if any("error" in r for r in row):
            print(f"| {tokens} tokens | " + " | ".join(map(str, row)) + " |")
            continue
        vit = row[-1]
        print(f"| {tokens} tokens: seconds | " + " | ".join(f"{r['seconds']:.2f}" for r in row) + " | "
              + " | ".join(f"{r['seconds'] / vit['seconds']:.2f}" for r in row[:-1]) + " |")
        print(f"| {tokens} tokens: peak MB (KB/token) | "
              + " | ".join(f"{r['peak_mb']:.0f} ({r['peak_mb'] * 1024 / tokens:.0f})" for r in row) + " | "
              + " | ".join(f"{r['peak_mb'] / vit['peak_mb']:.2f}" for r in row[:-1]) + " |")
    for model in models[:-1]:
        if all("seconds" in cells[model, t] for t in (4096, 16384)):
            print(f"\n{model} t16k / t4k = {cells[model, 16384]['seconds'] / cells[model, 4096]['seconds']:.2f}")
    print(f"load average {load0} at the start, {_load()} at the end; torch threads {THREADS}")


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "case", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_scan(lengths: list[int], channels: int, state: int) -> None:
    print(f"## selective scan forward+backward, batch 1, d_inner {channels}, d_state {state}, fp32, CPU")
    print("| L | chunked s | per-step s | speed-up | chunked peak MB | per-step peak MB |")
    print("|---|---|---|---|---|---|")
    for length in lengths:
        c = _subprocess(["scan", "chunked", str(length), str(channels), str(state)])
        n = _subprocess(["scan", "naive", str(length), str(channels), str(state)])
        print(f"| {length} | {c['seconds']:.3f} | {n['seconds']:.3f} | {n['seconds'] / c['seconds']:.1f}x "
              f"| {c['peak_mb']:.0f} | {n['peak_mb']:.0f} |", flush=True)


def bench_encoder(forward_tokens: list[int], train_tokens: list[int], models: list[str]) -> None:
    for train, sizes in ((False, forward_tokens), (True, train_tokens)):
        mode = "forward+backward" if train else "forward only (no_grad)"
        print(f"## tiny encoders, batch 1, {mode}, fp32, CPU: seconds / peak MB")
        print("| tokens | " + " | ".join(models) + " |")
        print("|---" * (len(models) + 1) + "|")
        for tokens in sizes:
            cells = []
            for model in models:
                heads = 3
                score_gb = heads * (tokens + 2) ** 2 * 4 / 2**30 * (3 if train else 1)
                if model == "vit-naive" and score_gb > NAIVE_SCORE_LIMIT_GB:
                    cells.append(f"skipped ({score_gb:.1f} GB of scores)")
                    continue
                r = _subprocess(["encoder", model, str(tokens), str(int(train))])
                cells.append(r.get("error") or f"{r['seconds']:.2f} s / {r['peak_mb']:.0f} MB")
            print(f"| {tokens} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan")
    s.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    s.add_argument("--channels", type=int, default=32)
    s.add_argument("--state", type=int, default=8)
    e = sub.add_parser("encoder")
    e.add_argument("--forward-tokens", type=int, nargs="+", default=[512, 2048, 4096, 8192, 16384, 22016])
    e.add_argument("--train-tokens", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    e.add_argument("--models", nargs="+", default=["mamba", "vit-sdpa", "vit-naive"])
    t = sub.add_parser("targets")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--step-only", action="store_true", help="only the pretraining step (< 3 GB, no lock needed)")
    t.add_argument("--lean-too", action="store_true",
                   help="also time the step with lean_backward='always' (in the same process: it shifts the others)")
    v = sub.add_parser("saved", help="activations kept for backward per token (allocator-independent)")
    v.add_argument("--tokens", type=int, default=8192)
    v.add_argument("--models", nargs="+", default=["vit-sdpa", "rwkv7", "mamba", "mamba-plain"])
    c = sub.add_parser("case")  # internal: one measurement in this process
    c.add_argument("what", choices=["scan", "encoder"])
    c.add_argument("rest", nargs="+")
    args = parser.parse_args()
    if args.cmd == "scan":
        bench_scan(args.lengths, args.channels, args.state)
    elif args.cmd == "targets":
        bench_targets(args.repeats, lengths=not args.step_only, lean_too=args.lean_too)
    elif args.cmd == "encoder":
        bench_encoder(args.forward_tokens, args.train_tokens, args.models)
    elif args.cmd == "saved":
        bench_saved(args.tokens, args.models)
    elif args.what == "scan":
        impl, length, channels, state = args.rest
        print(json.dumps(run_scan_case(impl, int(length), int(channels), int(state))))
    else:
        model, tokens, train = args.rest
        print(json.dumps(run_encoder_case(model, int(tokens), bool(int(train)))))


if __name__ == "__main__":
    main()
