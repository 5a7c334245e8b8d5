"""``python -m pretrain stats``: fbank mean/std over a shard set (no augmentation, padding excluded)."""

from __future__ import annotations

import sys
import time
from typing import Any

from .data import DataError, ShardStream, make_loader, resolve_shards
from .features import FeatureConfig, RunningStats, fbank
from .shard_reader import CorruptLog


def compute_stats(spec: str, max_samples: int | None = None, num_workers: int = 0, allow_pipe: bool = False,
                  features: FeatureConfig | None = None, batch_size: int = 16,
                  corrupt_shards: str = "skip") -> dict[str, Any]:
    """Mean and std of the (un-normalized) fbank over every real frame of every clip.

    Damaged shards and samples are skipped with a warning and listed (``corrupt_shards="error"``: fatal)."""
    shards = resolve_shards(spec, allow_pipe)
    features = features or FeatureConfig()
    workers = min(num_workers, len(shards.urls))
    # Whole clips: target_frames only bounds the crop, and 100k frames is ~17 minutes of audio.
    stream = ShardStream(shards, batch_size=batch_size, target_frames=100_000, mode="eval", num_workers=workers,
                         features=features, compute_features=False, corrupt_log=CorruptLog(corrupt_shards))
    stats = RunningStats()
    clips, t0 = 0, time.time()
    last = t0
    for batch in make_loader(stream):
        feats, frames = fbank(batch["waves"], batch["lengths"], features)
        stats.update(feats, frames)
        clips += len(batch["keys"])
        if time.time() - last > 2:
            last = time.time()
            print(f"stats: {clips} clips, {clips / max(last - t0, 1e-9):.1f} clips/s", file=sys.stderr)
        if max_samples and clips >= max_samples:
            break
    log = stream.corrupt_log
    if clips == 0:
        damaged = f" ({log.samples} lost to damaged data: {log.entries[0]})" if log.entries else ""
        raise DataError(f"{spec}: no readable clips{damaged}")
    return {"mean": stats.mean, "std": stats.std, "clips": clips, "values": int(stats.count), "shards": shards.source,
            "corrupt_samples": log.samples, "corrupt_list": log.entries}
