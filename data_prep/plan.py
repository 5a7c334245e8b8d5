"""The shard plan: which clip of which file goes into which shard, a pure function of the inputs and options.

``build_plan`` scans SRC, probes every file's header (through the ``probe`` function it is given: the worker
pool's), cuts long files into segments, gives every segment a stable key, groups the samples by split,
shuffles each split with the seed and cuts it into shards by ``samples_per_shard`` and by ``max_shard_mb``
(estimated from the raw PCM16 size, an upper bound of the FLAC size). The plan records every input (size,
modification time, labels, split), so that a rerun on changed sources is refused instead of resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.progress import Progress
from core.shard_format import SAMPLE_RATE, SPLIT_ORDER, shard_name
from data_prep import sources
from data_prep.audio import segment_bounds
from data_prep.options import PLAN_VERSION, ShardError, ShardOptions

PLAN_FILE = ".plan.json"

# FLAC of PCM16 is at most the raw PCM plus a little framing (verbatim subframes for noise-like audio),
# and every sample adds tar headers and its json: these bound a sample's bytes in a shard from above.
_FLAC_OVERHEAD = 1.01
_PER_SAMPLE_BYTES = 4096
_PER_SHARD_BYTES = 2 * tarfile.RECORDSIZE
_KEY_BASE_CHARS = 64

ProbeResult = tuple[float, int, int] | str  # (duration_s, sample_rate, channels) or the reason to skip
Prober = Callable[[list[str]], Iterator[ProbeResult]]


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
    return int(math.ceil(duration_s * SAMPLE_RATE) * 2 * _FLAC_OVERHEAD) + _PER_SAMPLE_BYTES


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


def hash_json(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (the options of a run, the samples of a shard)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _split_sort_key(split: str | None) -> tuple[int, str]:
    if split in SPLIT_ORDER:
        return SPLIT_ORDER.index(split), ""
    return len(SPLIT_ORDER), split or ""


# ------------------------------------------------------------------------------------------- the inputs


def scan_sources(opts: ShardOptions) -> sources.SourceScan:
    """Scan SRC as the options say; with ``valid_fraction``, hold out that share of the files as ``valid``."""
    scanned = sources.scan(opts.src, layout=opts.layout, folder_labels=opts.folder_labels)
    if opts.valid_fraction is not None:
        scanned.items = hold_out(scanned.items, opts.valid_fraction, opts.seed, str(opts.src))
    return scanned


def hold_out(
    items: list[sources.SourceItem], fraction: float, seed: int, where: str
) -> list[sources.SourceItem]:
    """Mark ``round(fraction * n)`` source files (at least 1, at most n - 1) as ``valid``, the rest ``train``.

    By source file, never by clip, so the clips of one recording never land on both sides. The choice is a
    pure function of the sorted file list and the seed.
    """
    taken = [item for item in items if item.split is not None]
    if taken:
        raise ShardError(
            f"--valid-fraction: {where} already has splits (e.g. {taken[0].rel} is in {taken[0].split!r}); "
            "drop --valid-fraction to use them"
        )
    if len(items) < 2:
        raise ShardError(f"--valid-fraction needs at least 2 source files, {where} has {len(items)}")
    rels = sorted(item.rel for item in items)
    random.Random(f"{seed}:valid-fraction").shuffle(rels)
    n_valid = min(max(1, round(fraction * len(rels))), len(rels) - 1)
    valid = set(rels[:n_valid])
    return [
        sources.SourceItem(item.path, item.rel, item.labels, "valid" if item.rel in valid else "train", item.fold)
        for item in items
    ]


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
    state = source_state(scan_sources(opts))
    if state != plan["inputs"]:  # JSON keeps these lists, strings, ints and nulls as they were
        raise ShardError(
            f"{opts.src} has changed since the shards in {out} were planned "
            f"({_describe_changes(plan['inputs'], state)}); "
            "add --overwrite to shard it again, or choose another OUT"
        )


# ------------------------------------------------------------------------------------------- the plan


def _probe_all(items: list[sources.SourceItem], probe: Prober, show: bool) -> list[ProbeResult]:
    progress = Progress(len(items), "probe", unit="file", enabled=show and bool(items))
    infos = []
    for info in probe([str(item.path) for item in items]):
        infos.append(info)
        progress.advance()
    progress.close()
    return infos


def _segments(
    opts: ShardOptions, items: list[sources.SourceItem], infos: list[ProbeResult], skipped: list[dict[str, Any]]
) -> dict[str | None, list[dict[str, Any]]]:
    """The planned samples of every split; inputs that cannot be used are appended to ``skipped``."""
    has_splits = any(item.split is not None for item in items)
    by_split: dict[str | None, list[dict[str, Any]]] = {}
    seen_keys: dict[str, str] = {}
    for item, info in zip(items, infos):
        split = (item.split or "train") if has_splits else None
        if isinstance(info, str):
            skipped.append({"source": item.rel, "reason": info, "stage": "probe", "split": split})
            continue
        duration, orig_sr, _channels = info
        bounds = segment_bounds(duration, opts.clip_seconds, opts.min_seconds)
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
            by_split.setdefault(split, []).append({
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
            })
    return by_split


def _shard_sets(
    opts: ShardOptions, items: list[sources.SourceItem], by_split: dict[str | None, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Shuffle every split with the seed and cut it into named shards."""
    max_bytes = int(opts.max_shard_mb * 1024 * 1024)
    splits = sorted(by_split, key=_split_sort_key)
    if any(item.split is not None for item in items):  # every split the layout defines gets its set
        splits = sorted(set(splits) | {item.split or "train" for item in items}, key=_split_sort_key)
    sets = []
    for split in splits:
        samples = sorted(by_split.get(split, []), key=lambda s: s["key"])
        # Seeded per split, after sorting by key: independent of scan order and of the other splits.
        random.Random(f"{opts.seed}:{split}").shuffle(samples)
        name = opts.name or split or "data"
        shards = [
            {"name": shard_name(name, index), "shard_hash": hash_json(part), "samples": part}
            for index, part in enumerate(cut_into_shards(samples, opts.samples_per_shard, max_bytes))
        ]
        sets.append({"split": split, "dir": split or "", "shards": shards})
    return sets


def build_plan(opts: ShardOptions, probe: Prober) -> dict[str, Any]:
    """Scan, probe and plan every shard; the result is a pure function of the inputs and the options."""
    scanned = scan_sources(opts)
    items = sorted(scanned.items, key=lambda item: item.rel)
    skipped: list[dict[str, Any]] = [
        {"source": str(src), "reason": str(reason), "stage": "scan", "split": None}
        for src, reason in scanned.skipped
    ]
    infos = _probe_all(items, probe, opts.progress)
    by_split = _segments(opts, items, infos, skipped)
    if scanned.vocabulary is not None:
        vocabulary = list(scanned.vocabulary)
    else:
        vocabulary = sorted({label for item in items for label in (item.labels or ())})
    params = opts.output_params()
    return {
        "version": PLAN_VERSION,
        "args_hash": hash_json(params),
        "params": params,
        "inputs": source_state(scanned),
        "layout": scanned.layout,
        "vocabulary": vocabulary,
        "display_names": scanned.display_names,
        "skipped": skipped,
        "sets": _shard_sets(opts, items, by_split),
    }
