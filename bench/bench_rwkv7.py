"""Benchmark the AudioRWKV backbone on CPU.

1. ``kernel``: the chunked WKV-7 op vs the naive per-step loop (the test oracle), forward + backward,
   one direction, A-RWKV-T head layout (3 heads of 64), at 512 / 2048 / 8192 tokens.
2. ``encoder``: the whole tiny encoder (A-RWKV-T) vs ViT-tiny with SDPA and with naive attention,
   batch 1, time and peak memory vs tokens: forward-only (no_grad) up to 16,384 tokens (32,768
   frames, 5 min 28 s of audio) and forward + backward up to 8,192 tokens.

3. ``step``: issue 16's CPU step target: one pretraining step (the project's ``Pretrainer``, one-pass
   objective, AdamW, fp32) of A-RWKV-T and ViT-tiny (SDPA) at batch 4 x 1024 frames (512 patches),
   400 of 512 (78%) cluster-masked, interleaved rounds in one process; medians and minima.
   ``step-alone``: the same step, each model alone in a fresh process (``--rounds`` processes each, in
   turn): CPU seconds per step (median of steps 2-5) and the process's peak resident memory.
4. ``targets``: ``step`` plus forward + backward at 4k / 8k / 16k tokens (batch 1, fresh subprocesses):
   time, peak memory per token, A-RWKV-T vs ViT-SDPA, and A-RWKV-T's t(16k) / t(4k).
   Needs ~6 GB at 16k tokens: run it under ``flock /tmp/bigmem.lock``.

Every case of 1, 2 and 4 runs in a fresh subprocess, so the peak resident memory (``ru_maxrss``) minus the
resident size just before the measured call is that case's own peak. Times are the best of
``--repeat`` runs after one warm-up (one run and no warm-up for the big cases).
Cases whose estimated memory exceeds ``--max-gb`` are skipped and reported as such.

    .venv/bin/python bench/bench_rwkv7.py kernel
    .venv/bin/python bench/bench_rwkv7.py encoder [--max-tokens-fwd 16384 --max-tokens-bwd 8192]
    .venv/bin/python bench/bench_rwkv7.py step [--rounds 5 --extra autograd]
    .venv/bin/python bench/bench_rwkv7.py step-alone [--rounds 3]
    flock /tmp/bigmem.lock .venv/bin/python bench/bench_rwkv7.py targets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import child

ROOT = Path(__file__).resolve().parents[1]


def run_case(case: dict) -> dict:
    """Executed in the child process."""
    import torch

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    if case["kind"] == "kernel":
        sys.path.insert(0, str(ROOT))
        from pretrain.backbones.wkv7 import wkv7
        from tests.test_rwkv7 import kernel_inputs, naive_wkv7

        x = kernel_inputs(1, case["tokens"], 3, 64, torch.float32, seed=1)
        x = [t.requires_grad_() for t in x]
        if case["impl"] == "naive":
            op = naive_wkv7
        else:

            def op(*t):
                return wkv7(*t, chunk_size=case["chunk"])

        def step():
            for t in x:
                t.grad = None
            op(*x).square().mean().backward()

        return child.measure(step, case["repeat"], case["warmup"])

    if case["kind"] == "step-alone":
        return _step_alone(case["model"])

    from pretrain.backbones import make_backbone_config
    from pretrain.encoder import Encoder, EncoderConfig

    frames = case["tokens"] // 8 * 16
    if case["model"].startswith("rwkv7"):
        impl = case["model"].split(":")[1] if ":" in case["model"] else "auto"
        name, cfg = "rwkv7", dataclasses.asdict(make_backbone_config("rwkv7", "t", wkv_impl=impl))
    else:  # "vit-sdpa" | "vit-naive"
        attention = case["model"].split("-")[1]
        name, cfg = "vit", dataclasses.asdict(make_backbone_config("vit", "tiny", attention=attention))
    enc = Encoder(EncoderConfig(backbone=name, backbone_config=cfg, input_frames=1024))
    fbank = torch.randn(1, frames, 128)
    if case["backward"]:
        enc.train()

        def step():
            enc.zero_grad(set_to_none=True)
            enc(fbank).patches.square().mean().backward()

    else:
        enc.eval()

        def step():
            with torch.no_grad():
                enc(fbank)

    return child.measure(step, case["repeat"], case["warmup"])


def spawn(case: dict, timeout: float) -> dict:
    return child.spawn(__file__, case, timeout)


def fmt(res: dict) -> tuple[str, str]:
    if "error" in res:
        return res["error"], "-"
    if "skipped" in res:
        return res["skipped"], "-"
    return f"{res['seconds']:.3f}", f"{res['peak_mb']:.0f}"


def bench_kernel(args) -> None:
    print("| tokens | naive loop s | naive MB | chunked C=16 s | C=32 s | C=64 s | C=32 MB | speed-up (C=32) |")
    print("|---|---|---|---|---|---|---|---|")
    for tokens in args.tokens or [512, 2048, 8192]:
        big = tokens >= 8192
        common = {"kind": "kernel", "tokens": tokens, "threads": args.threads, "repeat": 1 if big else args.repeat, "warmup": not big}
        naive = spawn(common | {"impl": "naive"}, args.timeout)
        chunked = {c: spawn(common | {"impl": "chunked", "chunk": c}, args.timeout) for c in (16, 32, 64)}
        ratio = "-"
        if "seconds" in naive and "seconds" in chunked[32]:
            ratio = f"{naive['seconds'] / chunked[32]['seconds']:.1f}x"
        n_s, n_mb = fmt(naive)
        print(
            f"| {tokens} | {n_s} | {n_mb} | {fmt(chunked[16])[0]} | {fmt(chunked[32])[0]} | "
            f"{fmt(chunked[64])[0]} | {fmt(chunked[32])[1]} | {ratio} |",
            flush=True,
        )


def naive_attention_gb(tokens: int, backward: bool) -> float:
    # 3 heads, fp32 score + probability matrices; with backward every layer keeps both.
    per_layer = 2 * 3 * tokens * tokens * 4 / 2**30
    return per_layer * (12 if backward else 1)


def bench_encoder(args) -> None:
    models = ["rwkv7", "vit-sdpa", "vit-naive"]
    for backward in (False, True):
        limit = args.max_tokens_bwd if backward else args.max_tokens_fwd
        title = "forward + backward" if backward else "forward only (no_grad)"
        print(f"\n{title}, batch 1\n")
        print("| tokens | audio | A-RWKV-T s | MB | ViT-T SDPA s | MB | ViT-T naive s | MB | SDPA / RWKV | naive / RWKV |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        tokens = 512
        while tokens <= limit:
            big = tokens >= 4096
            res = {}
            for m in models:
                case = {"kind": "encoder", "model": m, "tokens": tokens, "backward": backward, "threads": args.threads}
                case |= {"repeat": 1 if big else args.repeat, "warmup": not big}
                if m == "vit-naive" and naive_attention_gb(tokens, backward) > args.max_gb:
                    res[m] = {"skipped": f"skipped (~{naive_attention_gb(tokens, backward):.0f} GB)"}
                    continue
                res[m] = spawn(case, args.timeout)
            secs = tokens * 2 / 100  # 16 frames per token row of 8, 10 ms hop
            cells = []
            for m in models:
                cells += list(fmt(res[m]))
            ratios = []
            for m in models[1:]:
                ok = "seconds" in res[m] and "seconds" in res["rwkv7"]
                ratios.append(f"{res[m]['seconds'] / res['rwkv7']['seconds']:.2f}x" if ok else "-")
            audio = f"{int(secs // 60)}:{secs % 60:04.1f}"
            print(f"| {tokens} | {audio} | " + " | ".join(cells + ratios) + " |", flush=True)
            tokens *= 2


def _step_models(extra: list[str]):
    import torch

    from pretrain.backbones import make_backbone_config
    from pretrain.encoder import Encoder, EncoderConfig
    from pretrain.ssast import Pretrainer

    def build(name: str, preset: str, **kw):
        torch.manual_seed(0)
        cfg = dataclasses.asdict(make_backbone_config(name, preset, **kw))
        return Pretrainer(Encoder(EncoderConfig(backbone=name, backbone_config=cfg, input_frames=1024)))

    models = {"ViT-tiny (SDPA)": build("vit", "tiny", attention="sdpa"), "A-RWKV-T": build("rwkv7", "t")}
    for impl in extra:  # e.g. "autograd": the same WKV forward under plain autograd (before issue 16)
        models[f"A-RWKV-T, wkv_impl={impl}"] = build("rwkv7", "t", wkv_impl=impl)
    return models


def _step_inputs():
    """Issue 16's step inputs: batch 4 x 1024 frames, 400 of 512 patches cluster-masked."""
    import torch

    from pretrain.masking import make_mask
    from pretrain.patches import valid_patches

    torch.manual_seed(0)
    batch, frames = 4, 1024
    grid = (frames // 16, 8)
    fbank = torch.randn(batch, frames, 128)
    valid = valid_patches(torch.full((batch,), frames), grid, (16, 16), (16, 16))
    return fbank, make_mask("cluster", valid, grid, 400, generator=torch.Generator().manual_seed(0))


def _optimizer(model):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)


def _train_step(model, opt, fbank, mask) -> None:
    """One pretraining step, as both ``step`` modes time it."""
    model(fbank, [mask])["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _step_alone(model: str) -> dict:
    """Child: five steps of one model; CPU seconds of steps 2-5 and the process's peak RSS."""

    fbank, mask = _step_inputs()
    m = _step_models([])[model]
    opt = _optimizer(m)
    cpu = []
    for _ in range(5):
        c0 = time.process_time()
        _train_step(m, opt, fbank, mask)
        cpu.append(time.process_time() - c0)
    return {"cpu": cpu[1:], "peak_mb": child.peak_rss_kb() / 1024}


def bench_step_alone(args) -> None:
    models = ["ViT-tiny (SDPA)", "A-RWKV-T"]
    runs: dict[str, list[dict]] = {m: [] for m in models}
    for _ in range(args.rounds):
        for m in models:
            runs[m].append(spawn({"kind": "step-alone", "model": m, "threads": args.threads}, args.timeout))
    print(f"\nOne pretraining step, each model alone in a fresh process ({args.rounds} each, in turn), issue 16's "
          f"shape, {args.threads} thread(s): CPU s per step (median of steps 2-5) per process; peak RSS\n")
    print("| model | CPU s per step, per process | median | / ViT | peak MB |")
    print("|---|---|---|---|---|")
    med = {}
    for m in models:
        ok = [r for r in runs[m] if "cpu" in r]
        if not ok:
            print(f"| {m} | {runs[m][0].get('error', '?')} | | | |")
            continue
        per = [statistics.median(r["cpu"]) for r in ok]
        med[m] = statistics.median(per)
        ratio = f"{med[m] / med[models[0]]:.2f}x" if models[0] in med else "-"
        peaks = f"{min(r['peak_mb'] for r in ok):.0f}-{max(r['peak_mb'] for r in ok):.0f}"
        print(f"| {m} | {' / '.join(f'{x:.2f}' for x in per)} | {med[m]:.2f} | {ratio} | {peaks} |", flush=True)


def bench_step(args) -> dict[str, float]:
    """Interleaved rounds of one training step per model; returns the medians."""
    import torch

    torch.set_num_threads(args.threads)
    fbank, mask = _step_inputs()
    batch, frames = fbank.shape[:2]
    models = _step_models(args.extra)
    opts = {k: _optimizer(m) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}  # process CPU time: less sensitive to a shared machine
    for rnd in range(args.rounds + 1):  # round 0 is a warm-up
        order = list(models) if rnd % 2 == 0 else list(models)[::-1]
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            _train_step(models[k], opts[k], fbank, mask)
            if rnd:
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    base, base_min = med["ViT-tiny (SDPA)"], min(times["ViT-tiny (SDPA)"])
    print(f"\nOne pretraining step, batch {batch} x {frames} frames, 400/512 cluster-masked, one pass, AdamW, "
          f"fp32, {args.threads} thread(s), {args.rounds} interleaved rounds after a warm-up\n")
    print("| model | params | median s | min s | median / ViT | min / ViT min | CPU median s | CPU median / ViT |")
    print("|---|---|---|---|---|---|---|---|")
    base_cpu = cpu_med["ViT-tiny (SDPA)"]
    for k, v in times.items():
        params = sum(p.numel() for p in models[k].encoder.parameters()) / 1e6
        print(f"| {k} | {params:.2f} M | {med[k]:.2f} | {min(v):.2f} | {med[k] / base:.2f}x | "
              f"{min(v) / base_min:.2f}x | {cpu_med[k]:.2f} | {cpu_med[k] / base_cpu:.2f}x |", flush=True)
    return med


def bench_targets(args) -> None:
    if args.rounds:  # --rounds 0: only the length sweep (e.g. the big cases, run under the memory lock)
        bench_step(args)
    print("\nForward + backward, batch 1 (fresh subprocess per case; time = one cold run at >= 4k tokens)\n")
    print("| tokens | A-RWKV-T s | MB | KB/token | ViT-T SDPA s | MB | KB/token | RWKV / SDPA time | RWKV / SDPA memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    secs = {}
    for tokens in args.train_tokens:
        res = {}
        for m in ("rwkv7", "vit-sdpa"):
            case = {"kind": "encoder", "model": m, "tokens": tokens, "backward": True, "threads": args.threads,
                    "repeat": 1, "warmup": False}
            res[m] = spawn(case, args.timeout)
        cells = []
        for m in ("rwkv7", "vit-sdpa"):
            s, mb = fmt(res[m])
            per = f"{res[m]['peak_mb'] * 1024 / tokens:.0f}" if "peak_mb" in res[m] else "-"
            cells += [s, mb, per]
        ok = all("seconds" in res[m] for m in res)
        ratio_t = f"{res['rwkv7']['seconds'] / res['vit-sdpa']['seconds']:.2f}x" if ok else "-"
        ratio_m = f"{res['rwkv7']['peak_mb'] / max(res['vit-sdpa']['peak_mb'], 1):.2f}x" if ok else "-"
        if "seconds" in res["rwkv7"]:
            secs[tokens] = res["rwkv7"]["seconds"]
        print(f"| {tokens} | " + " | ".join(cells + [ratio_t, ratio_m]) + " |", flush=True)
    if 4096 in secs and 16384 in secs:
        print(f"\nA-RWKV-T t(16k) / t(4k) = {secs[16384] / secs[4096]:.2f} (target <= 4.5)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(run_case(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["kernel", "encoder", "step", "step-alone", "targets"])
    p.add_argument("--rounds", type=int, default=5, help="step: timed rounds after one warm-up (targets: 0 skips it)")
    p.add_argument("--extra", nargs="*", default=[], help="step: also time A-RWKV-T with these wkv_impl values")
    p.add_argument("--train-tokens", type=int, nargs="*", default=[4096, 8192, 16384])
    p.add_argument("--tokens", type=int, nargs="*", help="kernel: token counts (default 512 2048 8192)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (the machine is shared)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--max-tokens-fwd", type=int, default=16384)
    p.add_argument("--max-tokens-bwd", type=int, default=8192)
    p.add_argument("--max-gb", type=float, default=5.0, help="skip naive-attention cases estimated above this")
    p.add_argument("--system-allocator", action="store_true",
                   help="keep the process's allocator (default: the one `pretrain train` uses, core/allocator.py)")
    args = p.parse_args()
    if not args.system_allocator:  # measure what training runs: the CLI re-runs itself with a tuned allocator
        sys.path.insert(0, str(ROOT))
        from core.allocator import rerun_with_tuned_allocator

        rerun_with_tuned_allocator()
    allocator = os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES") or "system default"
    print(f"# torch threads {args.threads}; allocator: {allocator}; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    benches = {"kernel": bench_kernel, "encoder": bench_encoder, "step": bench_step, "step-alone": bench_step_alone,
               "targets": bench_targets}
    benches[args.what](args)
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
