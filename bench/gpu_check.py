"""One-command GPU check (issue 16): prints one markdown report, in <= 8 minutes on one H200.

    python bench/gpu_check.py [--wheels DIR] [--out report.md]
    python bench/gpu_check.py --dry-run          # CPU smoke run of every part at toy sizes

Parts (each in its own subprocess with its own time budget; a failing or hanging part is reported
and the rest still run):

  a. the CUDA-marked tests (``pytest -m "cuda or gpu_extra"``): fla's RWKV-7 kernel and the mamba_ssm
     kernels vs the pure paths, and our mapping onto fla against fla's own reference recurrence;
  b. one bf16-autocast pretraining step of each backbone (SSAST-tiny ViT, SSAMBA-tiny, A-RWKV-T,
     ARIN-tiny) from its recipe, batch 32 x 1024 frames: samples/s and peak GPU memory;
  c. forward + backward at 1k / 4k / 16k tokens, batch 1, bf16 autocast: ViT-tiny (SDPA),
     SSAMBA-tiny (kernel and pure), A-RWKV-T (kernel and pure): time and peak memory;
  d. two 50-step ``pretrain train`` runs (A-RWKV-T and SSAMBA-tiny recipes, batch 8) on a tiny
     synthetic shard set through ``accelerate launch`` (one process, bf16).

Nothing is downloaded. Packages beyond torch come as wheels: ``--wheels DIR`` runs
``pip install --no-index --no-deps`` on every wheel in DIR. ``bash scripts/device_wheels.sh DIR``
fetches the set for the lent H200 (Python 3.12: webdataset, soundfile, fla-core and what they need);
by hand, on a machine with internet and the target's Python version::

    pip download fla-core einops -d DIR          # pure-Python wheels (Triton comes with CUDA torch)
    # optional, CUDA builds matching the target's torch/CUDA (source builds, minutes each):
    pip wheel mamba-ssm causal-conv1d --no-build-isolation --no-deps -w DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # label -> pretraining recipe
    "ViT (SSAST-tiny)": "ssast_tiny_patch",
    "Mamba (SSAMBA-tiny)": "ssamba_tiny",
    "RWKV-7 (A-RWKV-T)": "arwkv_t",
    "CNN (ARIN-tiny)": "repinception_tiny",
}
BUDGETS = {"a": 110, "b": 100, "c": 120, "d": 130}  # seconds; 460 in all, plus start-up and installs
TITLES = {
    "a": "a. CUDA-marked tests (`pytest -m \"cuda or gpu_extra\"`)",
    "b": "b. bf16-autocast pretraining step, batch 32 x 1024 frames",
    "c": "c. forward + backward by length, batch 1, bf16 autocast",
    "d": "d. `pretrain train` through `accelerate launch` (1 process), 50 steps",
}


# ----------------------------------------------------------------------------------------------
# Parts (run in a child process; each returns a JSON-able dict)


_PARTIAL: Path | None = None  # the child's result file: parts b and c save what they have after every cell


def _save_partial(result: dict) -> None:
    """Write a part's result so far, so that a part killed at its time limit still reports its finished cells."""
    if _PARTIAL is not None:
        tmp = _PARTIAL.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(_PARTIAL)


def _device(dry: bool):
    import torch

    return torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def part_a(dry: bool, budget: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda or gpu_extra", "-q", "-p", "no:cacheprovider", "tests/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(budget - 5, 5))
    lines = proc.stdout.strip().splitlines()
    summary = next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error|deselected)\b", ln)),
                   lines[-1] if lines else "(no output)")
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20]
    return {"rc": proc.returncode, "summary": summary.strip("= "), "failures": failures}


def _encoder_from_recipe(name: str, device, dry: bool, overrides: dict | None = None):
    from pretrain.config import load_recipe
    from pretrain.features import Normalization
    from pretrain.session import build_encoder
    from pretrain.ssast import Pretrainer

    recipe = load_recipe(ROOT / "recipes" / "pretrain" / f"{name}.toml")
    cfg = dict(recipe.model.backbone_config)
    if dry and recipe.model.backbone != "repinception":
        cfg["depth"] = 2  # the smoke run only proves the code path
    cfg.update(overrides or {})
    recipe.model.backbone_config = cfg
    return recipe, Pretrainer(build_encoder(recipe, Normalization(), {})).to(device)


def part_b(dry: bool, budget: float) -> dict:
    import torch

    from pretrain.masking import make_mask
    from pretrain.patches import valid_patches

    device = _device(dry)
    batch, frames, steps = (2, 64, 1) if dry else (32, 1024, 5)
    start, rows = time.monotonic(), {}
    result = {"batch": batch, "frames": frames, "device": str(device), "rows": rows}
    for label, recipe_name in RECIPES.items():
        _save_partial(result)
        if time.monotonic() - start > budget * 0.8:
            rows[label] = {"error": "skipped (time budget)"}
            continue
        try:
            recipe, model = _encoder_from_recipe(recipe_name, device, dry)
            enc = model.encoder
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            grid = enc.grid_for(frames)
            total = grid[0] * grid[1]
            fbank = torch.randn(batch, frames, enc.config.num_mel_bins, device=device)
            valid = valid_patches(torch.full((batch,), frames), grid, tuple(enc.config.patch), tuple(enc.config.patch))
            count = min(recipe.masking.count, int(0.78 * total))
            mask = make_mask(recipe.masking.kind, valid, grid, count, generator=torch.Generator().manual_seed(0))
            mask = mask.to(device)
            _peak_reset(device)
            times = []
            for i in range(steps + 1):  # step 0: warm-up (kernel compilation, autotuning)
                _sync(device)
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = model(fbank, [mask])["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(device)
                if i:
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rows[label] = {"samples_per_s": batch / med, "step_s": med, "peak_mb": _peak_mb(device),
                           "loss": float(loss), "masked": count, "patches": total}
            del model, opt
        except Exception as e:  # one backbone failing must not hide the others
            rows[label] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
    return result


def _backbone_variants() -> list[tuple[str, str, dict, str | None]]:
    """``(label, recipe, backbone overrides, why it cannot run or None)``. The pure paths come last: on a GPU
    they launch small kernels per position (Mamba) or per chunk (RWKV-7) and are the slowest cells."""
    from pretrain.backbones import wkv7_fla
    from pretrain.backbones.selective_scan import _mamba_ssm_kernel

    no_mamba = None if _mamba_ssm_kernel() is not None else "mamba_ssm not installed"
    no_fla = None if wkv7_fla._kernel() is not None else "fla not installed"
    return [
        ("ViT-tiny (SDPA)", "ssast_tiny_patch", {"attention": "sdpa"}, None),
        ("RWKV-7-T kernel", "arwkv_t", {"wkv_impl": "auto"}, no_fla),
        ("Mamba-tiny kernel", "ssamba_tiny", {"scan_impl": "auto"}, no_mamba),
        ("RWKV-7-T pure", "arwkv_t", {"wkv_impl": "pure"}, None),
        ("Mamba-tiny pure", "ssamba_tiny", {"scan_impl": "torch"}, None),
    ]


def part_c(dry: bool, budget: float) -> dict:
    import torch

    device = _device(dry)
    tokens_list = [64, 128] if dry else [1024, 4096, 16384]
    start, rows = time.monotonic(), {}
    result = {"tokens": tokens_list, "device": str(device), "rows": rows}
    for label, recipe_name, over, missing in _backbone_variants():
        if missing and not dry:
            rows[label] = {t: {"error": missing} for t in tokens_list}
            continue
        rows[label] = {}
        try:
            _, model = _encoder_from_recipe(recipe_name, device, dry, over)
        except Exception as e:
            rows[label] = {t: {"error": f"{type(e).__name__}: {str(e)[:120]}"} for t in tokens_list}
            continue
        enc = model.encoder.train()
        last = None  # (tokens, seconds per fwd+bwd) of this model's previous cell
        for tokens in tokens_list:
            _save_partial(result)
            elapsed = time.monotonic() - start
            # 3 passes; time grows at least linearly with length: skip a cell that would not end in time
            forecast = 0.0 if last is None else 3 * last[1] * tokens / last[0]
            if elapsed + forecast > budget * 0.85:
                rows[label][tokens] = {"error": "skipped (time budget)"}
                continue
            try:
                fbank = torch.randn(1, tokens // 8 * 16, enc.config.num_mel_bins, device=device)
                _peak_reset(device)
                times = []
                for i in range(2 if dry else 3):
                    _sync(device)
                    t0 = time.perf_counter()
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        out = enc(fbank).patches
                    out.float().square().mean().backward()
                    enc.zero_grad(set_to_none=True)
                    _sync(device)
                    if i:
                        times.append(time.perf_counter() - t0)
                rows[label][tokens] = {"seconds": min(times), "peak_mb": _peak_mb(device)}
                last = (tokens, max(times))
            except Exception as e:
                rows[label][tokens] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del model, enc
    return result


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=max(timeout, 5))


def _steps_per_s(log: str, steps: int) -> float | None:
    """The rate on the last progress line of ``steps/steps`` (tqdm prints ``x step/s`` or ``x s/step``)."""
    found = re.findall(rf" {steps}/{steps} \[[^,\]]*, *([0-9.]+) ?(step/s|s/step)", log)
    if not found:
        return None
    value, unit = found[-1]
    return float(value) if unit == "step/s" else 1.0 / float(value)


def part_d(dry: bool, budget: float) -> dict:
    start = time.monotonic()
    py = sys.executable
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    if dry:
        env |= {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    steps, clips, batch = (2, 12, 2) if dry else (50, 48, 8)
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for cmd in (["data_prep", "synth", str(root / "corpus"), "--clips", str(clips), "--seed", "0", "-q"],
                    ["data_prep", "shard", str(root / "corpus"), str(root / "shards"), "--samples-per-shard", "8",
                     "-q"],
                    ["pretrain", "stats", str(root / "shards" / "train"), "--out", str(root / "stats.json")]):
            proc = _run([py, "-m", *cmd], env, budget - (time.monotonic() - start))
            if proc.returncode:
                return {"error": f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()[-300:]}"}
        for name in ("arwkv_t", "ssamba_tiny"):
            left = budget - (time.monotonic() - start)
            if left < 15:
                runs[name] = {"error": "skipped (time budget)"}
                continue
            sets = {"data.train": root / "shards" / "train", "data.valid": root / "shards" / "valid",
                    "features.stats": root / "stats.json", "train.max_steps": steps, "train.batch_size": batch,
                    "train.val_every": 10 * steps, "train.checkpoint_every": 10 * steps, "data.num_workers": 1,
                    "run.output_dir": root / f"run_{name}"}
            if dry:
                sets["model.backbone_config.depth"] = 2
            cmd = [py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                   "--mixed_precision", "no" if dry else "bf16", "--dynamo_backend", "no",
                   "-m", "pretrain", "train", "--recipe", str(ROOT / "recipes" / "pretrain" / f"{name}.toml")]
            cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
            t0 = time.perf_counter()
            try:
                proc = _run(cmd, env, left - 5)
            except subprocess.TimeoutExpired:
                runs[name] = {"error": f"timeout after {left - 5:.0f} s"}
                continue
            wall = time.perf_counter() - t0
            rate = _steps_per_s(proc.stderr, steps)
            loss = re.findall(r"loss[ =:]+([0-9.]+)", proc.stderr)
            runs[name] = {"rc": proc.returncode, "wall_s": wall, "steps_per_s": rate,
                          "last_loss": float(loss[-1]) if loss else None,
                          "tail": "" if proc.returncode == 0 else proc.stderr.strip()[-300:]}
    return {"steps": steps, "batch": batch, "runs": runs}


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


# ----------------------------------------------------------------------------------------------
# Driver and report


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    except Exception as e:
        info["torch"] = f"unavailable ({e})"
    for mod in ("triton", "fla", "mamba_ssm", "causal_conv1d"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "installed")
        except Exception as e:
            info[mod] = f"not importable ({type(e).__name__})"
    return info


def install_wheels(folder: Path) -> str:
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return f"--wheels {folder}: no .whl files found"
    # --no-deps: never let the resolver touch the target's own torch/Triton; DIR holds every missing package.
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(folder),
           *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    names = ", ".join(w.name for w in wheels)
    if proc.returncode:
        return f"pip install from {folder} FAILED (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    return f"installed from {folder} (no index): {names}"


def run_part(part: str, dry: bool, budget: float) -> dict:
    """Run one part in a child process with a hard timeout; never raises."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_part", part, "--_json", str(out),
               "--_budget", str(budget)] + (["--dry-run"] if dry else [])
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=budget + 30)
        except subprocess.TimeoutExpired:
            partial = json.loads(out.read_text()) if out.exists() else {}
            return partial | {"error": f"timed out after {budget + 30:.0f} s" + (" (the cells above finished)"
                                                                                if partial else ""),
                              "wall_s": time.perf_counter() - t0}
        wall = time.perf_counter() - t0
        if proc.returncode or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}", "wall_s": wall}
        return json.loads(out.read_text()) | {"wall_s": wall}


def _mb(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _format_part(part: str, res: dict) -> list[str]:
    if "error" in res and "rows" not in res:
        return [f"**failed:** {res['error']}"]
    note = ["", f"**stopped:** {res['error']}"] if "error" in res else []
    if part == "a":
        lines = [f"`{res['summary']}` (exit {res['rc']})"]
        return lines + [f"- {f}" for f in res.get("failures", [])]
    if part == "b":
        lines = [f"device {res['device']}, batch {res['batch']} x {res['frames']} frames", "",
                 "| backbone | samples/s | step s | peak MB | masked / patches | loss |", "|---|---|---|---|---|---|"]
        for label, r in res["rows"].items():
            if "error" in r:
                lines.append(f"| {label} | {r['error']} | | | | |")
            else:
                lines.append(f"| {label} | {r['samples_per_s']:.1f} | {r['step_s']:.3f} | {_mb(r['peak_mb'])} | "
                             f"{r['masked']} / {r['patches']} | {r['loss']:.3f} |")
        return lines + note
    if part == "c":
        toks = res["tokens"]
        lines = [f"device {res['device']}; cells: seconds / peak MB", "",
                 "| model | " + " | ".join(f"{t} tokens" for t in toks) + " |", "|---" * (len(toks) + 1) + "|"]
        for label, cells in res["rows"].items():
            out = []
            for t in toks:
                c = cells.get(str(t), cells.get(t, {"error": "-"}))
                out.append(c["error"] if "error" in c else f"{c['seconds']:.3f} / {_mb(c['peak_mb'])}")
            lines.append(f"| {label} | " + " | ".join(out) + " |")
        return lines + note
    lines = [f"{res['steps']} steps, batch {res['batch']}", "", "| recipe | exit | wall s | steps/s | last loss |",
             "|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | |")
            continue
        rate = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f}"
        loss = "-" if r["last_loss"] is None else f"{r['last_loss']:.3f}"
        lines.append(f"| {name} | {r['rc']} | {r['wall_s']:.1f} | {rate} | {loss} |")
        if r.get("tail"):
            lines.append(f"|  | `{r['tail'][-200:]}` | | | |")
    return lines


def format_report(env: dict, results: dict, dry: bool, install: str | None, total_s: float) -> str:
    head = "# GPU check" + (" (DRY RUN on CPU: toy sizes, numbers are not GPU measurements)" if dry else "")
    lines = [head, "", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if install:
        lines += [f"Wheels: {install}", ""]
    for part, res in results.items():
        lines += [f"## {TITLES[part]}", "", *_format_part(part, res), "",
                  f"(part wall time {res.get('wall_s', 0):.0f} s)", ""]
    lines.append(f"Total wall time {total_s:.0f} s.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", type=Path, help="install every wheel in DIR first (pip --no-index --find-links DIR)")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke run at toy sizes (checks the script itself)")
    p.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'bc' (default: abcd)")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    for part, seconds in BUDGETS.items():
        p.add_argument(f"--budget-{part}", type=float, default=seconds, help=f"seconds for part {part}")
    p.add_argument("--_part", choices=list(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--_json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_budget", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = set(args.parts) - set(PARTS)
    if bad or not args.parts:
        p.error(f"--parts must be letters from 'abcd', got {args.parts!r}")
    if args.wheels is not None and not args.wheels.is_dir():
        p.error(f"--wheels {args.wheels}: not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._part:  # child: one part, result as JSON
        global _PARTIAL
        _PARTIAL = args._json
        _save_partial(PARTS[args._part](args.dry_run, args._budget))
        return 0
    t0 = time.perf_counter()
    install = install_wheels(args.wheels) if args.wheels else None
    env = environment()
    results = {p: run_part(p, args.dry_run, getattr(args, f"budget_{p}")) for p in args.parts}
    report = format_report(env, results, args.dry_run, install, time.perf_counter() - t0)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
