"""``python -m pretrain stats``: fbank mean/std over a shard set (no augmentation, padding excluded)."""

from __future__ import annotations

from typing import Any

from core.progress import Progress

from .data import DataError, ShardStream, make_loader, resolve_shards
from .features import FeatureConfig, RunningStats, fbank


def compute_stats(spec: str, max_samples: int | None = None, num_workers: int = 0, allow_pipe: bool = False,
                  features: FeatureConfig | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Mean and std of the (un-normalized) fbank over every real frame of every clip."""
    shards = resolve_shards(spec, allow_pipe)
    features = features or FeatureConfig()
    workers = min(num_workers, len(shards.urls))
    # Whole clips: target_frames only bounds the crop, and 100k frames is ~17 minutes of audio.
    stream = ShardStream(shards, batch_size=batch_size, target_frames=100_000, mode="eval", num_workers=workers,
                         features=features, compute_features=False)
    stats = RunningStats()
    clips = 0
    total = shards.num_samples  # None without index.json: the display then shows no ETA
    if max_samples:
        total = min(total, max_samples) if total else max_samples
    with Progress(total, "stats", unit="clip") as progress:
        for batch in make_loader(stream):
            feats, frames = fbank(batch["waves"], batch["lengths"], features)
            stats.update(feats, frames)
            clips += len(batch["keys"])
            progress.update(clips)
            if max_samples and clips >= max_samples:
                break
    if clips == 0:
        raise DataError(f"{spec}: no readable clips")
    return {"mean": stats.mean, "std": stats.std, "clips": clips, "values": int(stats.count), "shards": shards.source}
