"""Rendering shards: the per-file work (probe, decode + resample + FLAC), the worker pool, the tar writer.

A planned shard is written as ``NAME.tar.tmp``; its result (sample count, seconds, label counts, samples that
failed to decode, and the tar's size and SHA-256) goes to ``.progress/NAME.tar.json``, and only then is the
tar renamed to its final name. A shard is finished when both exist and the tar still has that size and hash.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import multiprocessing as mp
import os
import signal
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core import shard_format as fmt
from core.jsonio import write_json_atomic
from data_prep import audio

PROGRESS_DIR = ".progress"
_TAR_MTIME = 0  # fixed metadata so that tars are byte-deterministic
_INLINE_PROBE_FILES = 1000  # fewer files are probed in this process (a pool start costs more)


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
    for name in fmt.META_OPTIONAL:
        if sample.get(name) is not None:
            meta[name] = sample[name]
    return flac, fmt.encode_meta(meta), seconds


# ------------------------------------------------------------------------------------------ the tar writer


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it (tarfile needs write and tell)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.size


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
    report: Callable[[float], None],
) -> dict[str, Any]:
    """Write one planned shard from its rendered samples (in plan order), atomically (see module doc)."""
    set_dir = Path(task["dir"])
    tmp = set_dir / (task["name"] + ".tmp")
    count, seconds = 0, 0.0
    skipped: list[dict[str, str]] = []
    labels: Counter[str] = Counter()
    with open(tmp, "wb") as fh:
        writer = _HashingWriter(fh)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
            for sample in task["samples"]:
                result = next(rendered)
                report(sample["duration_s"])
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
        "bytes": writer.size,
        "sha256": writer.sha256.hexdigest(),
    }
    write_json_atomic(set_dir / PROGRESS_DIR / (task["name"] + ".json"), result)
    os.replace(tmp, set_dir / task["name"])
    return result


# -------------------------------------------------------------------------------------------- the pool


class Workers:
    """The worker pool, or the current process when ``workers == 1`` (no process or pickling overhead).

    Work is spread per sample, not per shard, so that a corpus with fewer shards than cores (the demo: one
    shard per split) still uses every core; the parent only writes the tars, in plan order.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Any = None
        self._threads: int | None = None

    def __enter__(self) -> Workers:
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
        self, tasks: list[dict[str, Any]], report: Callable[[float], None]
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Render and write the shards of ``tasks`` in order; yield ``(task, result)`` as each is done."""
        samples = (sample for task in tasks for sample in task["samples"])
        rendered = self._map(render_sample, samples, 2)  # small chunks: samples cost 10-1000 ms each
        for task in tasks:
            yield task, write_shard(task, rendered, report)
