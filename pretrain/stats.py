"""Normalization statistics: ``python -m pretrain stats`` (fbank mean/std over a shard set, no augmentation,
padding excluded), the running accumulator, and the normalization a recipe asks for."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.progress import Progress
from core.recipe import RecipeError

from .data import DataError, ShardStream, make_loader, resolve_shards
from .features import FeatureConfig, Normalization, fbank


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


def resolve_normalization(mean: float | None, std: float | None, stats: str | None,
                          fallback: Callable[[], Normalization]) -> Normalization:
    """The recipe's ``features`` normalization: ``mean``/``std`` given together, else a ``stats`` JSON
    (``python -m pretrain stats``), else ``fallback()`` (AudioSet's, the encoder's, or computed)."""
    if (mean is None) != (std is None):
        raise RecipeError("features.mean and features.std must be given together")
    if mean is not None and std is not None:
        return Normalization(mean=mean, std=std)
    if stats:
        try:
            s = json.loads(Path(stats).read_text())
            return Normalization(mean=float(s["mean"]), std=float(s["std"]))
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise RecipeError(f"features.stats {stats}: cannot read mean/std ({e})") from e
    return fallback()


class RunningStats:
    """Mean and std of un-normalized fbank values over real (non-padded) frames, mergeable.

    Exact over every value seen (float64 sum, sum of squares and count), unlike AST's
    ``get_norm_stats.py`` which averages per-batch means and stds. Merge the partial stats of
    several workers or ranks with ``merge`` (or all-reduce ``to_tensor()`` and ``from_tensor``).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.total_sq = 0.0
        self.count = 0

    def update(self, features: Tensor, num_frames: Tensor | None = None) -> RunningStats:
        """Add ``(B, T, F)`` (or ``(T, F)``) fbanks; only the first ``num_frames[b]`` frames count."""
        if features.dim() == 2:
            features = features.unsqueeze(0)
        if features.dim() != 3:
            raise ValueError(f"RunningStats.update expects (B, T, F) features, got {tuple(features.shape)}")
        x = features.detach().to(torch.float64)
        if num_frames is not None:
            num_frames = torch.as_tensor(num_frames, device=x.device).long()
            real = torch.arange(x.shape[1], device=x.device) < num_frames[:, None]
            x = x * real[:, :, None]
            count = int(num_frames.clamp(0, x.shape[1]).sum()) * x.shape[2]
        else:
            count = x.numel()
        self.total += float(x.sum())
        self.total_sq += float(x.square().sum())
        self.count += count
        return self

    def merge(self, other: RunningStats) -> RunningStats:
        """Add another accumulator's values into this one (in place) and return self."""
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count
        return self

    def to_tensor(self) -> Tensor:
        """``[sum, sum of squares, count]`` in float64, e.g. for an all-reduce across ranks."""
        return torch.tensor([self.total, self.total_sq, float(self.count)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: Tensor) -> RunningStats:
        stats = cls()
        stats.total, stats.total_sq, count = (float(v) for v in values.tolist())
        stats.count = int(round(count))
        return stats

    @property
    def mean(self) -> float:
        if self.count == 0:
            raise ValueError("RunningStats: no values seen yet")
        return self.total / self.count

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's default, ddof=0)."""
        mean = self.mean
        return math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))

    def normalization(self) -> Normalization:
        return Normalization(mean=self.mean, std=self.std)
