"""Writing ``index.json``: one per shard set, and a top-level one listing the sets of a split corpus.

The fields are the shard format's (``core/shard_format.py``): shards with their sample counts, seconds,
size and SHA-256; totals; the label vocabulary (one per corpus, shared by its splits) and counts; the run's
parameters; and every skipped input with its reason and the stage that skipped it (scan, probe, decode).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core import shard_format as fmt
from core.jsonio import write_json_atomic


def unique_skips(skips: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (source, reason): a long file's segments that fail to decode count as one input."""
    seen, out = set(), []
    for s in skips:
        if (s["source"], s["reason"]) not in seen:
            seen.add((s["source"], s["reason"]))
            out.append(s)
    return out


def _set_index(
    plan: dict[str, Any], shard_set: dict[str, Any], results: dict[str, dict[str, Any]], has_splits: bool
) -> dict[str, Any]:
    """The index.json of one shard set, from the plan and its shards' results (keyed by tar path)."""
    set_dir = Path(shard_set["out"])
    shards, labels = [], Counter()
    skips = [
        {"source": s["source"], "reason": s["reason"], "stage": s["stage"]}
        for s in plan["skipped"]
        if s["split"] == shard_set["split"] or not has_splits
    ]
    for shard in shard_set["shards"]:
        result = results[str(set_dir / shard["name"])]
        entry = {"name": shard["name"], "samples": result["samples"], "seconds": result["seconds"]}
        entry.update({k: result[k] for k in ("bytes", "sha256") if k in result})
        shards.append(entry)
        labels.update(result["label_counts"])
        skips += [{**s, "stage": "decode"} for s in result["skipped"]]
    seconds = round(sum(s["seconds"] for s in shards), 6)
    return {
        "format": fmt.INDEX_FORMAT,
        "members": dict(fmt.MEMBERS_DESCRIPTION),
        "split": shard_set["split"],
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "seconds": seconds,
        "hours": round(seconds / 3600, 6),
        "vocabulary": plan["vocabulary"],
        "label_counts": dict(sorted(labels.items())),
        "display_names": plan["display_names"],
        "params": {**plan["params"], "detected_layout": plan["layout"]},
        "skipped": unique_skips(skips),
    }


def write_indexes(out: Path, plan: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write every set's ``index.json`` (and the top-level one for split corpora); return the totals."""
    has_splits = any(s["split"] is not None for s in plan["sets"])
    all_skips: list[dict[str, Any]] = [s for s in plan["skipped"] if s["split"] is None]
    split_entries = {}
    total_samples, total_seconds, total_shards = 0, 0.0, 0
    for shard_set in plan["sets"]:
        index = _set_index(plan, {**shard_set, "out": out / shard_set["dir"]}, results, has_splits)
        write_json_atomic(out / shard_set["dir"] / fmt.INDEX_FILE, index)
        total_samples += index["samples"]
        total_seconds += index["seconds"]
        total_shards += len(index["shards"])
        if has_splits:
            all_skips += [{**s, "split": shard_set["split"]} for s in index["skipped"]]
            split_entries[shard_set["split"]] = {
                "index": f"{shard_set['dir']}/{fmt.INDEX_FILE}",
                "samples": index["samples"],
                "seconds": index["seconds"],
                "shards": len(index["shards"]),
            }
        else:
            all_skips = index["skipped"]
    if has_splits:
        write_json_atomic(out / fmt.INDEX_FILE, {
            "format": fmt.INDEX_FORMAT,
            "splits": split_entries,
            "samples": total_samples,
            "seconds": round(total_seconds, 6),
            "hours": round(total_seconds / 3600, 6),
            "vocabulary": plan["vocabulary"],
            "display_names": plan["display_names"],
            "params": {**plan["params"], "detected_layout": plan["layout"]},
            "skipped": all_skips,
        })
    return {
        "samples": total_samples,
        "seconds": total_seconds,
        "shards": total_shards,
        "skipped": all_skips,
        "splits": [s["split"] for s in plan["sets"]] if has_splits else [],
    }
