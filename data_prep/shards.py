"""Turn a scanned corpus into WebDataset tar shards: plan up front, render in parallel, resume after a kill.

The run has two phases.

1. **Plan** (a pure function of the inputs, the options and the seed): scan SRC, probe every file's header
   (in the worker pool), cut long files into segments, give every segment a stable key, group the samples
   by split, shuffle each split with the seed and cut it into shards by ``samples_per_shard`` and by
   ``max_shard_mb`` (estimated from the raw PCM16 size, an upper bound of the FLAC size). The plan is saved
   atomically as ``OUT/.plan.json`` together with a hash of the options that affect the output and a record
   of every input (size, modification time, labels, split): a rerun resumes only if both still match.
2. **Render**: a process pool renders whole shards (decode, resample, encode FLAC, write a byte-deterministic
   tar) under ``NAME-000003.tar.tmp``; the shard's result goes to ``.progress/NAME-000003.tar.json`` and only
   then is the tar renamed to its final name. A shard is finished when both exist, so a rerun after SIGKILL
   renders only the unfinished shards and the final sample set is the same as an uninterrupted run's.

At the end every shard set gets an ``index.json`` (shards, totals, vocabulary, label counts, parameters and
every skipped input with its reason); split corpora also get a top-level ``OUT/index.json``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from core import shard_format as fmt
from core.shard_format import INDEX_FILE, SPLIT_ORDER
from data_prep import audio, sources

PLAN_VERSION = 2  # 2: the plan records the inputs it was made from
PLAN_FILE = ".plan.json"
PROGRESS_DIR = ".progress"
DEFAULT_MIN_SECONDS = 0.5
DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_MAX_SHARD_MB = 512.0

# FLAC of PCM16 is at most the raw PCM plus a little framing (verbatim subframes for noise-like audio),
# and every sample adds tar headers and its json: these bound a sample's bytes in a shard from above.
_FLAC_OVERHEAD = 1.01
_PER_SAMPLE_BYTES = 4096
_PER_SHARD_BYTES = 2 * tarfile.RECORDSIZE
_TAR_MTIME = 0  # fixed metadata so that tars are byte-deterministic
_KEY_BASE_CHARS = 64
_INLINE_PROBE_FILES = 1000  # fewer files are probed in this process (a pool start costs more)


class ShardError(Exception):
    """A sharding run that cannot go on; the message says what is wrong and names the path/value."""


@dataclass(frozen=True)
class ShardOptions:
    """Everything ``shard_corpus`` needs; see ``python -m data_prep shard --help`` for each option."""

    src: Path
    out: Path
    layout: str = "auto"
    clip_seconds: float | None = None
    min_seconds: float = DEFAULT_MIN_SECONDS
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    max_shard_mb: float = DEFAULT_MAX_SHARD_MB
    seed: int = 0
    name: str | None = None
    folder_labels: bool = False
    workers: int | None = None  # None: one per available core
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    def output_params(self) -> dict[str, Any]:
        """The options that determine the shards' content (not ``workers``, ``strict``, ...)."""
        return {
            "src": str(Path(self.src).resolve()),
            "layout": self.layout,
            "clip_seconds": self.clip_seconds,
            "min_seconds": self.min_seconds,
            "samples_per_shard": self.samples_per_shard,
            "max_shard_mb": self.max_shard_mb,
            "seed": self.seed,
            "name": self.name,
            "folder_labels": self.folder_labels,
            "sample_rate": audio.TARGET_SR,
            "plan_version": PLAN_VERSION,
        }


@dataclass
class ShardSummary:
    """What a run produced; ``line()`` is the one-line summary printed on stdout."""

    out: Path
    samples: int
    seconds: float
    shards: int
    skipped: list[dict[str, str]]
    elapsed_s: float
    splits: list[str] = field(default_factory=list)
    rendered_shards: int = 0

    def line(self) -> str:
        where = f"{self.out}" + (f" (splits: {', '.join(self.splits)})" if self.splits else "")
        return (
            f"sharded {self.samples} samples ({self.seconds / 3600:.3f} h) into {self.shards} shards "
            f"in {where}; skipped {len(self.skipped)} inputs; {self.elapsed_s:.1f} s"
        )


# --------------------------------------------------------------------------------------------- helpers


def sample_key(rel: str, segment: int) -> str:
    """Stable key of segment ``segment`` of source ``rel``: readable, ``[A-Za-z0-9_-]`` only, unique.

    No dots: webdataset splits a member name into key and extension at the first dot. The readable part is
    the sanitized path without extension (its tail, when long); the hash of (rel, segment) keeps keys unique
    even when two sources sanitize to the same text (``a.wav`` and ``a.flac``).
    """
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", str(Path(rel).with_suffix(""))).strip("_") or "x"
    digest = hashlib.sha1(f"{rel}\0{segment}".encode()).hexdigest()[:8]
    return f"{base[-_KEY_BASE_CHARS:].lstrip('_-') or 'x'}-{segment:04d}-{digest}"


def _estimated_bytes(duration_s: float) -> int:
    return int(math.ceil(duration_s * audio.TARGET_SR) * 2 * _FLAC_OVERHEAD) + _PER_SAMPLE_BYTES


def cut_into_shards(
    samples: list[dict[str, Any]], samples_per_shard: int, max_shard_bytes: int
) -> list[list[dict[str, Any]]]:
    """Cut an ordered sample list into shards of at most ``samples_per_shard`` and ``max_shard_bytes``.

    A single sample larger than the byte limit gets a shard of its own (a sample is never split).
    """
    shards: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = _PER_SHARD_BYTES
    for sample in samples:
        nbytes = _estimated_bytes(sample["duration_s"])
        if current and (len(current) >= samples_per_shard or size + nbytes > max_shard_bytes):
            shards.append(current)
            current, size = [], _PER_SHARD_BYTES
        current.append(sample)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the whole new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _split_sort_key(split: str | None) -> tuple[int, str]:
    if split in SPLIT_ORDER:
        return SPLIT_ORDER.index(split), ""
    return len(SPLIT_ORDER), split or ""


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# -------------------------------------------------------------------------------------------- progress


class Progress:
    """Rate-limited progress on stderr: files/s, hours of audio done, ETA.

    On a terminal the line is redrawn in place at most 4 times per second; otherwise (logs, CI) a plain line
    is printed at most every 5 seconds, so that logs stay readable.
    """

    def __init__(
        self,
        phase: str,
        total_files: int,
        total_seconds: float | None,
        enabled: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.phase, self.total_files, self.total_seconds = phase, total_files, total_seconds
        self.stream = stream or sys.stderr
        self.enabled = enabled and total_files > 0
        self.tty = self.stream.isatty()
        self.interval = 0.25 if self.tty else 5.0
        self.files, self.seconds = 0, 0.0
        self.start = self.last = time.monotonic()

    def update(self, files: int = 0, seconds: float = 0.0) -> None:
        self.files += files
        self.seconds += seconds
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.files / elapsed
        text = f"{self.phase}: {self.files}/{self.total_files} files, {rate:.1f} files/s"
        if self.total_seconds:
            text += f", {self.seconds / 3600:.3f}/{self.total_seconds / 3600:.3f} h audio"
            remaining = (
                (self.total_seconds - self.seconds) / (self.seconds / elapsed) if self.seconds else None
            )
        else:
            remaining = (self.total_files - self.files) / rate if rate else None
        if final:
            text += f", done in {elapsed:.1f} s"
        elif remaining is not None:
            text += f", ETA {int(remaining) // 60}:{int(remaining) % 60:02d}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic(), final=True)


# ------------------------------------------------------------------------------------- worker functions


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, so that no orphan outlives a killed run."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_init() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    import torch

    torch.set_num_threads(1)  # one thread per worker: the pool is the parallelism


def probe_file(path: str) -> tuple[float, int, int] | str:
    """Header of one file: ``(duration_s, sample_rate, channels)``, or the reason it cannot be used."""
    try:
        info = audio.probe(path)
    except audio.AudioError as err:
        return str(err) or "unreadable audio"
    except (OSError, RuntimeError, ValueError) as err:  # defensive: a decoder error that escaped AudioError
        return f"unreadable audio: {err}"
    if info.frames <= 0 or info.duration_s <= 0:
        return "zero-length audio (no frames)"
    return float(info.duration_s), int(info.sample_rate), int(info.channels)


def render_sample(sample: dict[str, Any]) -> tuple[bytes, bytes, float] | str:
    """Decode, resample and FLAC-encode one planned sample: ``(flac, json, seconds)`` or the skip reason."""
    try:
        wave, orig_sr = audio.load_audio(
            sample["path"], audio.TARGET_SR, sample["offset_s"], sample["read_s"]
        )
        flac = audio.encode_flac(wave, audio.TARGET_SR)
    except audio.AudioError as err:
        return str(err) or "unreadable audio"
    except (OSError, RuntimeError, ValueError) as err:  # defensive, see probe_file
        return f"unreadable audio: {err}"
    seconds = len(wave) / audio.TARGET_SR
    meta: dict[str, Any] = {
        "source": sample["source"],
        "offset_s": sample["offset_s"],
        "duration_s": round(seconds, 6),
        "orig_sr": int(orig_sr),
    }
    for name in ("labels", "split", "fold"):
        if sample.get(name) is not None:
            meta[name] = sample[name]
    return flac, fmt.encode_meta(meta), seconds


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    task: dict[str, Any],
    rendered: Iterator[tuple[bytes, bytes, float] | str],
    report: Callable[[int, float], None],
) -> dict[str, Any]:
    """Write one planned shard from its rendered samples (in plan order), atomically.

    The tar is written as ``NAME.tmp``; the shard's result (sample count, seconds, label counts, samples
    that failed to decode) is saved as its sidecar in ``.progress/`` and only then is the tar renamed, so a
    shard whose final tar and sidecar both exist is complete.
    """
    set_dir = Path(task["dir"])
    tmp = set_dir / (task["name"] + ".tmp")
    count, seconds = 0, 0.0
    skipped: list[dict[str, str]] = []
    labels: Counter[str] = Counter()
    with open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in task["samples"]:
                result = next(rendered)
                report(1, sample["duration_s"])
                if isinstance(result, str):
                    skipped.append({"source": sample["source"], "reason": result})
                    continue
                flac, meta, sample_seconds = result
                _add_member(tar, f"{sample['key']}.{fmt.AUDIO_MEMBER}", flac)
                _add_member(tar, f"{sample['key']}.{fmt.META_MEMBER}", meta)
                count += 1
                seconds += sample_seconds
                labels.update(sample.get("labels") or ())
        fh.flush()
        os.fsync(fh.fileno())
    result = {
        "name": task["name"],
        "shard_hash": task["shard_hash"],
        "samples": count,
        "seconds": round(seconds, 6),
        "label_counts": dict(sorted(labels.items())),
        "skipped": skipped,
    }
    write_json_atomic(set_dir / PROGRESS_DIR / (task["name"] + ".json"), result)
    os.replace(tmp, set_dir / task["name"])
    return result


# -------------------------------------------------------------------------------------------- the pool


class _Workers:
    """The worker pool, or the current process when ``workers == 1`` (no process or pickling overhead).

    Work is spread per sample, not per shard, so that a corpus with fewer shards than cores (the demo: one
    shard per split) still uses every core; the parent only writes the tars, in plan order.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Any = None
        self._threads: int | None = None

    def __enter__(self) -> _Workers:
        import torch

        # One torch thread here too: the 1-worker run renders in this process, and kernels built here before
        # a fork must not start an OpenMP pool that the forked workers would inherit.
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_pool()
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)

    def _start_pool(self) -> Any:
        if self.pool is None:
            # fork (as torch's DataLoader does on Linux): workers start at once with the audio stack already
            # imported (a spawn/forkserver start imports torch again, seconds on a busy machine) and inherit
            # the resampling kernels warmed by ``warm``. gc.freeze: the children's garbage collector then
            # leaves the inherited objects alone instead of copying every page it touches.
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods and sys.platform == "linux" else None)
            gc.freeze()
            try:
                self.pool = ctx.Pool(self.workers, initializer=_worker_init)
            finally:
                gc.unfreeze()
        return self.pool

    def _stop_pool(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def warm(self, sample_rates: Iterable[int]) -> None:
        """Build the resampling kernels of ``sample_rates`` here, once, before the workers fork."""
        self._stop_pool()  # the probing pool predates the kernels; the render pool will inherit them
        for rate in sorted(set(sample_rates)):
            with contextlib.suppress(Exception):  # only a speed-up: a failure shows up per file later
                audio.resample(np.zeros(rate // 10 + 1, dtype=np.float32), int(rate), audio.TARGET_SR)

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        if self.workers <= 1:
            return map(fn, items)
        return self._start_pool().imap(fn, items, chunksize=chunksize)

    def probe(self, paths: list[str]) -> Iterator[tuple[float, int, int] | str]:
        if len(paths) < _INLINE_PROBE_FILES:  # headers take ~1 ms each: not worth starting a pool for
            return map(probe_file, paths)
        return self._map(probe_file, paths, max(1, min(64, len(paths) // (self.workers * 8))))

    def render(
        self, tasks: list[dict[str, Any]], progress: Progress
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Render and write the shards of ``tasks`` in order; yield ``(task, result)`` as each is done."""
        samples = (sample for task in tasks for sample in task["samples"])
        rendered = self._map(render_sample, samples, 2)  # small chunks: samples cost 10-1000 ms each
        for task in tasks:
            yield task, write_shard(task, rendered, progress.update)


# ---------------------------------------------------------------------------------------------- planning


def _scan(opts: ShardOptions) -> sources.SourceScan:
    kwargs: dict[str, Any] = {"folder_labels": True} if opts.folder_labels else {}
    return sources.scan(opts.src, layout=opts.layout, **kwargs)


def source_state(scanned: sources.SourceScan) -> dict[str, list[Any]]:
    """What the plan depends on, per input file: size, modification time, labels, split and fold."""
    state: dict[str, list[Any]] = {}
    for item in scanned.items:
        try:
            st = item.path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = None
        state[item.rel] = [size, mtime, list(item.labels) if item.labels is not None else None, item.split, item.fold]
    return state


def _describe_changes(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = []
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{len(names)} {what} (e.g. {names[0]})")
    return ", ".join(parts)


def check_sources_unchanged(opts: ShardOptions, plan: dict[str, Any]) -> None:
    """A resumed plan must describe the inputs as they are now; else its shards would be stale."""
    out = Path(opts.out)
    if "inputs" not in plan:
        raise ShardError(f"{out / PLAN_FILE}: made by an older data_prep that did not record its inputs; "
                         "add --overwrite to shard again")
    state = source_state(_scan(opts))
    if state != plan["inputs"]:  # JSON keeps these lists, strings, ints and nulls as they were
        raise ShardError(
            f"{opts.src} has changed since the shards in {out} were planned "
            f"({_describe_changes(plan['inputs'], state)}); "
            "add --overwrite to shard it again, or choose another OUT"
        )


def build_plan(opts: ShardOptions, workers: _Workers) -> dict[str, Any]:
    """Scan, probe and plan every shard; the result is a pure function of the inputs and the options."""
    scanned = _scan(opts)
    inputs = source_state(scanned)
    items = sorted(scanned.items, key=lambda item: item.rel)
    skipped: list[dict[str, Any]] = [
        {"source": str(src), "reason": str(reason), "stage": "scan", "split": None}
        for src, reason in scanned.skipped
    ]
    progress = Progress("probe", len(items), None, opts.progress)
    infos = []
    for info in workers.probe([str(item.path) for item in items]):
        infos.append(info)
        progress.update(1)
    progress.close()

    has_splits = any(item.split is not None for item in items)
    by_split: dict[str | None, list[dict[str, Any]]] = {}
    seen_keys: dict[str, str] = {}
    for item, info in zip(items, infos):
        split = (item.split or "train") if has_splits else None
        if isinstance(info, str):
            skipped.append({"source": item.rel, "reason": info, "stage": "probe", "split": split})
            continue
        duration, orig_sr, _channels = info
        bounds = audio.segment_bounds(duration, opts.clip_seconds, opts.min_seconds)
        if not bounds:
            reason = f"shorter than --min-seconds ({duration:.3f} s < {opts.min_seconds} s)"
            skipped.append({"source": item.rel, "reason": reason, "stage": "probe", "split": split})
            continue
        whole_file = len(bounds) == 1 and opts.clip_seconds is None
        for segment, (offset, length) in enumerate(bounds):
            key = sample_key(item.rel, segment)
            if key in seen_keys:  # astronomically unlikely (same text and same 32-bit hash); never silently
                raise ShardError(f"sample key collision: {key} for {item.rel} and {seen_keys[key]}")
            seen_keys[key] = item.rel
            by_split.setdefault(split, []).append(
                {
                    "key": key,
                    "path": str(item.path),
                    "source": item.rel,
                    "offset_s": round(float(offset), 6),
                    "duration_s": round(float(length), 6),
                    "read_s": None if whole_file else float(length),
                    "orig_sr": orig_sr,
                    "labels": list(item.labels) if item.labels is not None else None,
                    "split": item.split if has_splits else None,
                    "fold": item.fold,
                }
            )

    if scanned.vocabulary is not None:
        vocabulary = list(scanned.vocabulary)
    else:
        vocabulary = sorted({label for item in items for label in (item.labels or ())})
    display_names = getattr(scanned, "display_names", None)

    max_bytes = int(opts.max_shard_mb * 1024 * 1024)
    sets = []
    splits = sorted(by_split, key=_split_sort_key)
    if has_splits:  # every split the layout defines gets its shard set, even an empty one
        splits = sorted(set(splits) | {item.split or "train" for item in items}, key=_split_sort_key)
    for split in splits:
        samples = sorted(by_split.get(split, []), key=lambda s: s["key"])
        # Seeded per split, after sorting by key: independent of scan order and of the other splits.
        random.Random(f"{opts.seed}:{split}").shuffle(samples)
        name = opts.name or split or "data"
        shards = []
        for index, shard_samples in enumerate(cut_into_shards(samples, opts.samples_per_shard, max_bytes)):
            shards.append(
                {
                    "name": fmt.shard_name(name, index),
                    "shard_hash": _hash_json(shard_samples),
                    "samples": shard_samples,
                }
            )
        sets.append({"split": split, "dir": split or "", "shards": shards})

    params = opts.output_params()
    return {
        "version": PLAN_VERSION,
        "args_hash": _hash_json(params),
        "params": params,
        "inputs": inputs,
        "layout": scanned.layout,
        "vocabulary": vocabulary,
        "display_names": display_names,
        "skipped": skipped,
        "sets": sets,
    }


# ------------------------------------------------------------------------------------------ out dir state


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
    if plan is not None and plan.get("args_hash") == _hash_json(params):
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


def _unique_skips(skips: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (source, reason): a long file's segments that fail to decode count as one input."""
    seen, out = set(), []
    for s in skips:
        if (s["source"], s["reason"]) not in seen:
            seen.add((s["source"], s["reason"]))
            out.append(s)
    return out


def _render_tasks(out: Path, plan: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Tasks for unfinished shards, and the results of the finished ones (read from their sidecars)."""
    todo, done = [], {}
    for shard_set in plan["sets"]:
        set_dir = out / shard_set["dir"]
        (set_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        for stale in [*set_dir.glob("*.tar.tmp"), *(set_dir / PROGRESS_DIR).glob("*.tmp")]:
            stale.unlink()  # left by a killed run; its shard is rendered again from scratch
        for shard in shard_set["shards"]:
            sidecar = set_dir / PROGRESS_DIR / (shard["name"] + ".json")
            result = None
            if (set_dir / shard["name"]).exists() and sidecar.exists():
                with contextlib.suppress(OSError, ValueError):
                    result = json.loads(sidecar.read_text(encoding="utf-8"))
            if result is not None and result.get("shard_hash") == shard["shard_hash"]:
                done[str(set_dir / shard["name"])] = result
            else:
                todo.append({"dir": str(set_dir), **shard})
    return todo, done


def _write_indexes(out: Path, plan: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write every set's ``index.json`` (and the top-level one for split corpora); return the totals."""
    params = {**plan["params"], "detected_layout": plan["layout"]}
    all_skips: list[dict[str, Any]] = [s for s in plan["skipped"] if s["split"] is None]
    split_entries = {}
    total_samples, total_seconds, total_shards = 0, 0.0, 0
    has_splits = any(s["split"] is not None for s in plan["sets"])
    for shard_set in plan["sets"]:
        set_dir = out / shard_set["dir"]
        shards, labels, skips = [], Counter(), []
        skips += [
            {"source": s["source"], "reason": s["reason"], "stage": s["stage"]}
            for s in plan["skipped"]
            if s["split"] == shard_set["split"] or (not has_splits)
        ]
        for shard in shard_set["shards"]:
            result = results[str(set_dir / shard["name"])]
            shards.append({"name": shard["name"], "samples": result["samples"], "seconds": result["seconds"]})
            labels.update(result["label_counts"])
            skips += [{**s, "stage": "decode"} for s in result["skipped"]]
        skips = _unique_skips(skips)
        samples = sum(s["samples"] for s in shards)
        seconds = round(sum(s["seconds"] for s in shards), 6)
        index = {
            "format": fmt.INDEX_FORMAT,
            "members": dict(fmt.MEMBERS_DESCRIPTION),
            "split": shard_set["split"],
            "shards": shards,
            "samples": samples,
            "seconds": seconds,
            "hours": round(seconds / 3600, 6),
            "vocabulary": plan["vocabulary"],
            "label_counts": dict(sorted(labels.items())),
            "display_names": plan["display_names"],
            "params": params,
            "skipped": skips,
        }
        write_json_atomic(set_dir / INDEX_FILE, index)
        total_samples += samples
        total_seconds += seconds
        total_shards += len(shards)
        if has_splits:
            all_skips += [{**s, "split": shard_set["split"]} for s in skips]
            split_entries[shard_set["split"]] = {
                "index": f"{shard_set['dir']}/{INDEX_FILE}",
                "samples": samples,
                "seconds": seconds,
                "shards": len(shards),
            }
        else:
            all_skips = skips
    if has_splits:
        top = {
            "format": fmt.INDEX_FORMAT,
            "splits": split_entries,
            "samples": total_samples,
            "seconds": round(total_seconds, 6),
            "hours": round(total_seconds / 3600, 6),
            "vocabulary": plan["vocabulary"],
            "display_names": plan["display_names"],
            "params": params,
            "skipped": all_skips,
        }
        write_json_atomic(out / INDEX_FILE, top)
    return {
        "samples": total_samples,
        "seconds": total_seconds,
        "shards": total_shards,
        "skipped": all_skips,
        "splits": [s["split"] for s in plan["sets"]] if has_splits else [],
    }


def _validate(opts: ShardOptions) -> None:
    if not Path(opts.src).exists():
        raise ShardError(f"SRC does not exist: {opts.src}")
    if opts.layout not in sources.LAYOUTS:
        raise ShardError(f"unknown layout {opts.layout!r}; choose one of {', '.join(sources.LAYOUTS)}")
    checks = [
        (opts.clip_seconds is None or opts.clip_seconds > 0, "--clip-seconds must be > 0", opts.clip_seconds),
        (opts.min_seconds >= 0, "--min-seconds must be >= 0", opts.min_seconds),
        (opts.samples_per_shard >= 1, "--samples-per-shard must be >= 1", opts.samples_per_shard),
        (opts.max_shard_mb > 0, "--max-shard-mb must be > 0", opts.max_shard_mb),
        (opts.workers is None or opts.workers >= 1, "--workers must be >= 1", opts.workers),
    ]
    for ok, message, value in checks:
        if not ok:
            raise ShardError(f"{message}, got {value}")
    if opts.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", opts.name):
        raise ShardError(f"--name must use only letters, digits, '_' and '-', got {opts.name!r}")


def shard_corpus(opts: ShardOptions) -> ShardSummary:
    """Plan (or load the saved plan), render the unfinished shards, write the indexes; see module doc.

    Raises ``ShardError`` / ``sources.SourceError`` with a clear message for bad input or options.
    """
    start = time.monotonic()
    _validate(opts)
    out = Path(opts.out)
    plan = _prepare_out(opts)
    workers = opts.workers or _default_workers()
    with _Workers(workers) as pool:
        if plan is None:
            plan = build_plan(opts, pool)
            planned = sum(len(shard["samples"]) for s in plan["sets"] for shard in s["shards"])
            if planned == 0:
                raise ShardError(
                    f"no usable audio in {opts.src}: {len(plan['skipped'])} inputs skipped"
                    + (f" ({_skip_summary(plan['skipped'])})" if plan["skipped"] else "")
                )
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / PLAN_FILE, plan, indent=None)
        else:
            check_sources_unchanged(opts, plan)
        if opts.strict and plan["skipped"]:
            raise ShardError(
                f"--strict: {len(plan['skipped'])} inputs cannot be used: {_skip_summary(plan['skipped'])}"
            )
        todo, results = _render_tasks(out, plan)
        pool.warm(s["orig_sr"] for task in todo for s in task["samples"])
        total_seconds = sum(s["duration_s"] for task in todo for s in task["samples"])
        progress = Progress(
            "render", sum(len(task["samples"]) for task in todo), total_seconds, opts.progress
        )
        for task, result in pool.render(todo, progress):
            results[str(Path(task["dir"]) / task["name"])] = result
        progress.close()
    totals = _write_indexes(out, plan, results)
    summary = ShardSummary(
        out=out,
        samples=totals["samples"],
        seconds=totals["seconds"],
        shards=totals["shards"],
        skipped=totals["skipped"],
        elapsed_s=time.monotonic() - start,
        splits=[s for s in totals["splits"] if s is not None],
        rendered_shards=len(todo),
    )
    if summary.samples == 0:
        raise ShardError(f"no usable audio in {opts.src}: {_skip_summary(summary.skipped)}")
    if opts.strict and summary.skipped:
        raise ShardError(
            f"--strict: {len(summary.skipped)} inputs cannot be used: {_skip_summary(summary.skipped)}"
        )
    return summary
