"""``python -m data_prep inspect``: summarize a shard set and decode-check every member.

Checks, for every shard: the tar opens; members are regular files named ``KEY.EXT`` with a dot-free key;
every key has exactly one ``flac`` and one ``json`` and appears once; every flac decodes to 16 kHz mono with
finite samples; every json parses to an object with ``source`` and a ``duration_s`` that matches the audio;
sample counts and seconds match ``index.json``, and every shard it lists exists.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import soundfile as sf

from core.shard_format import (
    AUDIO_MEMBER,
    INDEX_FILE,
    META_MEMBER,
    SPLIT_ORDER,
    ShardFormatError,
    decode_meta,
    read_index,
    split_member,
    tar_digest,
)
from core.shard_format import SAMPLE_RATE as TARGET_SR

_DURATION_BINS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, float("inf"))
_SECONDS_TOLERANCE = 1e-3


class InspectError(Exception):
    """SHARDS cannot be inspected at all (nothing found, unreadable index)."""


@dataclass
class SetReport:
    """What one shard set holds."""

    name: str
    shards: int = 0
    samples: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    index_checked: bool = False
    digest: tuple[int, str] | None = None  # (bytes, sha256) of a single shard's tar


@dataclass
class InspectReport:
    """All shard sets found, and every problem (``"shard X: key Y: what"``)."""

    sets: list[SetReport]
    problems: list[str]

    def text(self) -> str:
        lines = []
        for s in self.sets:
            check = "counts match index.json" if s.index_checked else "no index.json compared"
            lines.append(
                f"{s.name}: {s.shards} shards, {s.samples} samples, {s.seconds / 3600:.4f} h ({check})"
            )
            lines.append("  durations: " + _duration_histogram(s.durations))
            if s.labels:
                width = max(s.labels.values())
                lines.append(f"  labels ({len(s.labels)}):")
                for label, count in sorted(s.labels.items(), key=lambda kv: (-kv[1], kv[0]))[:40]:
                    bar = "#" * max(1, round(30 * count / width))
                    lines.append(f"    {label[:30]:30s} {count:7d} {bar}")
                if len(s.labels) > 40:
                    lines.append(f"    ... and {len(s.labels) - 40} more")
            else:
                lines.append("  labels: none")
        lines.append("OK: every member decodes" if not self.problems else f"{len(self.problems)} PROBLEMS:")
        lines.extend(f"  {p}" for p in self.problems[:50])
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(lines)


def _duration_histogram(durations: list[float]) -> str:
    counts = np.histogram(np.asarray(durations, dtype=float), bins=np.asarray(_DURATION_BINS))[0]
    parts = []
    for lo, hi, n in zip(_DURATION_BINS[:-1], _DURATION_BINS[1:], counts):
        label = f">={lo:g}s" if hi == float("inf") else f"{lo:g}-{hi:g}s"
        parts.append(f"{label} {int(n)}")
    return " | ".join(parts)


def _check_sample(key: str, members: dict[str, bytes], report: SetReport) -> list[str]:
    problems = []
    if set(members) != {AUDIO_MEMBER, META_MEMBER}:
        problems.append(f"members {sorted(members)} (expected {AUDIO_MEMBER} and {META_MEMBER})")
    frames = None
    if AUDIO_MEMBER in members:
        try:
            data, sr = sf.read(io.BytesIO(members[AUDIO_MEMBER]), dtype="float32", always_2d=True)
            if sr != TARGET_SR:
                problems.append(f"flac sample rate {sr} (expected {TARGET_SR})")
            if data.shape[1] != 1:
                problems.append(f"flac has {data.shape[1]} channels (expected mono)")
            if data.shape[0] == 0:
                problems.append("flac has no samples")
            elif not np.isfinite(data).all():
                problems.append("flac has NaN/inf samples")
            frames = data.shape[0]
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            problems.append(f"flac does not decode: {err}")
    meta: Any = None
    if META_MEMBER in members:
        try:
            meta = decode_meta(members[META_MEMBER], key)
            if "source" not in meta or "duration_s" not in meta:
                problems.append("json lacks source/duration_s")
                meta = None
        except ShardFormatError as err:
            problems.append(str(err).removeprefix(f"{key}: "))
    if frames is not None and meta is not None:
        seconds = frames / TARGET_SR
        if abs(float(meta["duration_s"]) - seconds) > _SECONDS_TOLERANCE:
            problems.append(f"json duration_s {meta['duration_s']} but flac lasts {seconds:.6f} s")
    if not problems and frames is not None:
        report.samples += 1
        report.seconds += frames / TARGET_SR
        report.durations.append(frames / TARGET_SR)
        report.labels.update(meta.get("labels") or ())
    return problems


def _data_after(path: Path, offset: int) -> bool:
    """Is any byte after ``offset`` not zero (tar pads its end with zero blocks)?"""
    with open(path, "rb") as fh:
        fh.seek(offset)
        while block := fh.read(1 << 20):
            if block.strip(b"\0"):
                return True
    return False


def check_shard(path: Path) -> tuple[SetReport, list[str]]:
    """Decode-check one tar: its good samples (as a one-shard report) and its problems."""
    report = SetReport(name=path.name, shards=1)
    problems: list[str] = []
    seen: set[str] = set()
    current_key: str | None = None
    current: dict[str, bytes] = {}

    def finish() -> None:
        nonlocal current_key
        if current_key is not None:
            problems.extend(
                f"shard {path.name}: key {current_key}: {p}"
                for p in _check_sample(current_key, current, report)
            )
        current_key = None  # checked once, even if an error follows

    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"shard {path.name}: member {member.name}: not a regular file")
                    continue
                try:
                    key, ext = split_member(member.name)
                except ShardFormatError:
                    problems.append(f"shard {path.name}: member {member.name}: no extension")
                    continue
                if key != current_key:
                    finish()
                    if key in seen:
                        problems.append(f"shard {path.name}: key {key}: appears twice (members not adjacent)")
                    seen.add(key)
                    current_key, current = key, {}
                if ext in current:
                    problems.append(f"shard {path.name}: key {key}: duplicate member {ext}")
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
            finish()
            end = tar.offset  # where tarfile saw the end-of-archive marker
        if _data_after(path, end):  # a zeroed header reads as the end: members after it would be lost
            problems.append(f"shard {path.name}: data after the end-of-archive marker at byte {end} "
                                "(a damaged member header?)")
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(f"shard {path.name}: cannot read tar: {err}")
        finish()  # the sample read before the damage counts (an incomplete one is reported as such)
    with contextlib.suppress(OSError):
        report.digest = tar_digest(path)
    return report, problems


def _check_all(tars: list[Path], workers: int) -> Iterator[tuple[SetReport, list[str]]]:
    """``check_shard`` over ``tars`` in order, in a process pool when ``workers > 1``."""
    if workers <= 1 or len(tars) <= 1:
        yield from map(check_shard, tars)
        return
    ctx = mp.get_context("fork" if sys.platform == "linux" else None)
    with ctx.Pool(min(workers, len(tars))) as pool:
        yield from pool.imap(check_shard, tars)


def _load_index(path: Path) -> dict[str, Any]:
    try:
        return read_index(path)
    except ShardFormatError as err:
        raise InspectError(str(err)) from None


def _inspect_set(
    name: str, tars: list[Path], index: dict[str, Any] | None, complete: bool, workers: int = 1
) -> tuple[SetReport, list[str]]:
    """Check ``tars``; compare with ``index`` (``complete``: every shard the index lists must be there)."""
    report = SetReport(name=name, shards=len(tars), index_checked=index is not None)
    problems: list[str] = []
    listed = {s["name"]: s for s in (index or {}).get("shards", [])}
    if index is not None and complete:
        present = {t.name for t in tars}
        problems += [f"shard {n}: listed in index.json but missing" for n in listed if n not in present]
    for tar, (part, shard_problems) in zip(tars, _check_all(tars, workers)):
        samples, seconds = part.samples, part.seconds
        report.samples += samples
        report.seconds += seconds
        report.durations += part.durations
        report.labels.update(part.labels)
        problems += shard_problems
        if index is None:
            continue
        entry = listed.get(tar.name)
        if entry is None:
            problems.append(f"shard {tar.name}: not listed in index.json")
            continue
        if "sha256" in entry and part.digest is not None and part.digest != (entry.get("bytes"), entry["sha256"]):
            problems.append(f"shard {tar.name}: {part.digest[0]} bytes with another SHA-256 than index.json "
                            f"records ({entry.get('bytes')} bytes): changed since it was written")
        if not shard_problems and (
            entry["samples"] != samples
            or abs(entry["seconds"] - seconds) > _SECONDS_TOLERANCE * max(1, samples)
        ):
            problems.append(
                f"shard {tar.name}: holds {samples} samples / {seconds:.3f} s, "
                f"index.json says {entry['samples']} / {entry['seconds']:.3f} s"
            )
    if index is not None and complete and not problems and index.get("samples") != report.samples:
        problems.append(f"{name}: {report.samples} samples, index.json says {index.get('samples')}")
    return report, problems


def _set_from_dir(name: str, directory: Path, workers: int) -> tuple[SetReport, list[str]]:
    index_path = directory / INDEX_FILE
    if not index_path.exists():
        raise InspectError(f"no {INDEX_FILE} in {directory}")
    index = _load_index(index_path)
    tars = sorted(p for p in directory.glob("*.tar"))
    return _inspect_set(name, tars, index, complete=True, workers=workers)


def inspect(target: str | Path, workers: int | None = None) -> InspectReport:
    """Inspect SHARDS: a folder with index.json, an index.json, a .tar, or a brace pattern of tars.

    ``workers``: processes decoding shards in parallel (default: one per available core).
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    path = Path(target)
    if path.is_file() and path.name.endswith(".json"):
        path = path.parent
    results: list[tuple[SetReport, list[str]]] = []
    if path.is_dir():
        index_path = path / INDEX_FILE
        if not index_path.exists():
            raise InspectError(
                f"no {INDEX_FILE} in {path} (give a .tar or a brace pattern to check tars alone)"
            )
        index = _load_index(index_path)
        if "splits" in index:
            order = {name: i for i, name in enumerate(SPLIT_ORDER)}
            for split, entry in sorted(index["splits"].items(), key=lambda kv: (order.get(kv[0], 3), kv[0])):
                results.append(_set_from_dir(split, path / Path(entry["index"]).parent, workers))
        else:
            results.append(_set_from_dir(index.get("split") or path.name, path, workers))
    else:
        tars = [Path(p) for p in braceexpand.braceexpand(str(target))]
        missing = [str(t) for t in tars if not t.is_file()]
        if missing:
            raise InspectError(f"not found: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        parents = {t.parent for t in tars}
        index = None
        if len(parents) == 1 and (next(iter(parents)) / INDEX_FILE).exists():
            index = _load_index(next(iter(parents)) / INDEX_FILE)
        results.append(_inspect_set(str(target), tars, index, complete=False, workers=workers))
    return InspectReport(sets=[r for r, _ in results], problems=[p for _, ps in results for p in ps])
