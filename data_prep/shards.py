"""``data_prep shard``: turn a corpus into WebDataset tar shards; plan up front, render in parallel, resume.

The run has three jobs, each in its own module:

1. **Plan** (``data_prep.plan``, a pure function of the inputs, the options and the seed): which clip of
   which file goes into which shard. Saved atomically as ``OUT/.plan.json`` with the options that affect
   the output and a record of every input (size, modification time, labels, split): a rerun resumes only
   if both still match.
2. **Render** (``data_prep.render``): a process pool decodes, resamples and FLAC-encodes the samples; the
   parent writes byte-deterministic tars under a temporary name, records each finished shard's result with
   the tar's size and SHA-256 in ``.progress/``, then renames the tar. A rerun (after SIGKILL, or on a
   finished OUT) keeps a shard only if its tar still has the recorded size and hash; a shard truncated or
   altered since is rendered again, so the final set equals an uninterrupted run's.
3. **Index** (``data_prep.index``): every shard set's ``index.json``, and a top-level one for split corpora.

This module checks OUT against the options and runs the three.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.jsonio import write_json_atomic
from core.progress import Progress
from core.shard_format import INDEX_FILE, tar_digest
from data_prep import sources
from data_prep.index import write_indexes
from data_prep.options import ShardError, ShardOptions, ShardSummary, validate
from data_prep.plan import PLAN_FILE, build_plan, check_sources_unchanged, hash_json
from data_prep.render import PROGRESS_DIR, Workers

__all__ = ["ShardError", "ShardOptions", "ShardSummary", "shard_corpus"]


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _load_existing_plan(out: Path) -> dict[str, Any] | None:
    path = out / PLAN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable shard plan ({err}); rerun with --overwrite") from None


def _remove_artifacts(out: Path, plan: dict[str, Any] | None) -> None:
    """``--overwrite``: remove exactly what the previous run's plan says it wrote; never other files.

    Without a readable plan nothing is deleted: the new run's files replace same-named ones as they land.
    """
    if plan is None:
        return
    for shard_set in plan.get("sets", []):
        set_dir = out / shard_set["dir"]
        for shard in shard_set["shards"]:
            for path in (set_dir / shard["name"], set_dir / (shard["name"] + ".tmp")):
                path.unlink(missing_ok=True)
        (set_dir / INDEX_FILE).unlink(missing_ok=True)
        shutil.rmtree(set_dir / PROGRESS_DIR, ignore_errors=True)
        if set_dir != out and set_dir.is_dir() and not any(set_dir.iterdir()):
            set_dir.rmdir()
    (out / INDEX_FILE).unlink(missing_ok=True)
    (out / PLAN_FILE).unlink(missing_ok=True)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _prepare_out(opts: ShardOptions) -> dict[str, Any] | None:
    """Check OUT against the options; return the plan to resume, or None to plan afresh."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ShardError(f"OUT is not a directory: {out}")
    if not out.exists():
        return None
    params = opts.output_params()
    if opts.overwrite:
        with contextlib.suppress(ShardError):  # an unreadable plan is simply replaced
            _remove_artifacts(out, _load_existing_plan(out))
        return None
    plan = _load_existing_plan(out)
    if plan is not None and plan.get("args_hash") == hash_json(params):
        return plan
    if plan is not None:
        raise ShardError(
            f"{out} holds shards made with different arguments "
            f"({_differences(plan.get('params', {}), params)}); "
            "rerun with the same arguments to resume, or add --overwrite, or choose another OUT"
        )
    if any(out.iterdir()):
        raise ShardError(
            f"OUT is not empty and holds no shard plan: {out}; add --overwrite or choose another OUT"
        )
    return None


# ---------------------------------------------------------------------------------------------- the run


def _skip_summary(skipped: list[dict[str, Any]], limit: int = 5) -> str:
    shown = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:limit])
    more = f" (and {len(skipped) - limit} more)" if len(skipped) > limit else ""
    return shown + more


def _intact(tar: Path, result: dict[str, Any]) -> bool:
    """Does a finished shard's tar still have the size and SHA-256 recorded when it was written?

    Sidecars of older runs lack them: such a shard cannot be checked and is rendered again (same bytes).
    """
    if "bytes" not in result or "sha256" not in result:
        return False
    try:
        if tar.stat().st_size != result["bytes"]:  # cheap: catches truncation without reading
            return False
        return tar_digest(tar) == (result["bytes"], result["sha256"])
    except OSError:
        return False


def _finished(out: Path, plan: dict[str, Any]) -> list[tuple[dict[str, Any], Path, dict[str, Any] | None]]:
    """Every planned shard as ``(task, tar, recorded result or None)``; leftovers of killed runs removed."""
    shards = []
    for shard_set in plan["sets"]:
        set_dir = out / shard_set["dir"]
        (set_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        for stale in [*set_dir.glob("*.tar.tmp"), *(set_dir / PROGRESS_DIR).glob("*.tmp")]:
            stale.unlink()  # left by a killed run; its shard is rendered again from scratch
        for shard in shard_set["shards"]:
            tar, sidecar = set_dir / shard["name"], set_dir / PROGRESS_DIR / (shard["name"] + ".json")
            result = None
            if tar.exists() and sidecar.exists():
                with contextlib.suppress(OSError, ValueError):
                    result = json.loads(sidecar.read_text(encoding="utf-8"))
            if result is not None and result.get("shard_hash") != shard["shard_hash"]:
                result = None
            shards.append(({"dir": str(set_dir), **shard}, tar, result))
    return shards


def _render_tasks(
    out: Path, plan: dict[str, Any], workers: int, show: bool
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Tasks for unfinished or damaged shards, the results of the intact finished ones (from their
    sidecars), and the names of the finished shards found damaged.

    Finished shards are hashed again (threads: hashlib releases the GIL; ~0.6 GB/s per core here).
    """
    shards = _finished(out, plan)
    recorded = [(tar, result) for _, tar, result in shards if result is not None]
    progress = Progress(len(recorded), "verify", unit="shard", enabled=show and bool(recorded))
    with ThreadPoolExecutor(max(1, workers)) as threads:
        intact = {}
        for tar, ok in zip((t for t, _ in recorded), threads.map(lambda tr: _intact(*tr), recorded)):
            intact[tar] = ok
            progress.advance()
    progress.close()
    todo, done, damaged = [], {}, []
    for task, tar, result in shards:
        if result is not None and intact[tar]:
            done[str(tar)] = result
            continue
        if result is not None:
            damaged.append(str(tar.relative_to(out)))
        todo.append(task)
    return todo, done, damaged


def _plan(opts: ShardOptions, pool: Workers, plan: dict[str, Any] | None) -> dict[str, Any]:
    """A new plan (saved in OUT), or the resumed one after checking that the sources did not change."""
    if plan is not None:
        check_sources_unchanged(opts, plan)
    else:
        plan = build_plan(opts, pool.probe)
        planned = sum(len(shard["samples"]) for s in plan["sets"] for shard in s["shards"])
        if planned == 0:
            raise ShardError(
                f"no usable audio in {opts.src}: {len(plan['skipped'])} inputs skipped"
                + (f" ({_skip_summary(plan['skipped'])})" if plan["skipped"] else "")
            )
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(opts.out) / PLAN_FILE, plan, indent=None)
    if opts.strict and plan["skipped"]:
        raise ShardError(
            f"--strict: {len(plan['skipped'])} inputs cannot be used: {_skip_summary(plan['skipped'])}"
        )
    return plan


def _render(opts: ShardOptions, pool: Workers, todo: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Render ``todo`` with a progress display in seconds of audio (rate and ETA, on terminals and in logs)."""
    pool.warm(s["orig_sr"] for task in todo for s in task["samples"])
    total_seconds = sum(s["duration_s"] for task in todo for s in task["samples"])
    files = sum(len(task["samples"]) for task in todo)
    total = max(1, math.ceil(total_seconds))  # whole seconds: tqdm shows fractions of a unit badly
    progress = Progress(total, "render", unit="s audio", enabled=opts.progress and files > 0)
    done_files, done_seconds = 0, 0.0

    def report(seconds: float) -> None:
        nonlocal done_files, done_seconds
        done_files += 1
        done_seconds += seconds
        position = total if done_files == files else min(total, round(done_seconds))
        progress.update(position, text=f"{done_files}/{files} files, {done_seconds / 3600:.3f} h audio")

    results = {}
    for task, result in pool.render(todo, report):
        results[str(Path(task["dir"]) / task["name"])] = result
    progress.close()
    return results


def shard_corpus(opts: ShardOptions) -> ShardSummary:
    """Plan (or load the saved plan), render the unfinished or damaged shards, write the indexes.

    Raises ``ShardError`` / ``sources.SourceError`` with a clear message for bad input or options.
    """
    start = time.monotonic()
    validate(opts, sources.LAYOUTS)
    out = Path(opts.out)
    plan = _prepare_out(opts)
    with Workers(opts.workers or _default_workers()) as pool:
        plan = _plan(opts, pool, plan)
        todo, results, damaged = _render_tasks(out, plan, pool.workers, opts.progress)
        if damaged and opts.progress:
            print(f"rebuilding {len(damaged)} finished shards whose tar no longer has the size and SHA-256 "
                  f"recorded when it was written (or was written without them): {', '.join(damaged[:5])}"
                  + (" ..." if len(damaged) > 5 else ""), file=sys.stderr)
        results.update(_render(opts, pool, todo))
    totals = write_indexes(out, plan, results)
    summary = ShardSummary(
        out=out,
        samples=totals["samples"],
        seconds=totals["seconds"],
        shards=totals["shards"],
        skipped=totals["skipped"],
        elapsed_s=time.monotonic() - start,
        splits=[s for s in totals["splits"] if s is not None],
        rendered_shards=len(todo),
        rebuilt_shards=damaged,
    )
    if summary.samples == 0:
        raise ShardError(f"no usable audio in {opts.src}: {_skip_summary(summary.skipped)}")
    if opts.strict and summary.skipped:
        raise ShardError(
            f"--strict: {len(summary.skipped)} inputs cannot be used: {_skip_summary(summary.skipped)}"
        )
    return summary
