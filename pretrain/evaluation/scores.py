"""Probe scores: accuracy (single-label) and mAP (multi-label), and their chance levels."""

from __future__ import annotations

import math

import numpy as np
import torch


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class (area under the precision-recall curve, sklearn's step definition); NaN without positives."""
    pos = targets > 0.5
    n_pos = int(pos.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], pos[order]
    tp = np.cumsum(p)
    # evaluate only at the last index of each distinct score (ties count together)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp_at, k_at = tp[last], last + 1
    precision = tp_at / k_at
    recall = tp_at / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean AP over the classes that have positives (classes without any are left out, as AudioSet does)."""
    s, t = scores.double().cpu().numpy(), targets.double().cpu().numpy()
    aps = [average_precision(s[:, c], t[:, c]) for c in range(t.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else math.nan


def score(scores: torch.Tensor, targets: torch.Tensor, kind: str) -> float:
    """Accuracy (``single_label``: argmax vs the one true class) or mAP (``multi_label``)."""
    if kind == "single_label":
        return float((scores.argmax(1) == targets.argmax(1)).double().mean()) if len(targets) else math.nan
    return mean_average_precision(scores, targets)


def chance(train_targets: torch.Tensor, test_targets: torch.Tensor, kind: str) -> float:
    """Single-label: test accuracy of always answering the most frequent training class.
    Multi-label: the mAP of random scores, i.e. the mean positive rate of the test classes that have positives."""
    if kind == "single_label":
        top = int(train_targets.sum(0).argmax())
        return float(test_targets[:, top].double().mean()) if len(test_targets) else math.nan
    rates = test_targets.double().mean(0)
    rates = rates[rates > 0]
    return float(rates.mean()) if len(rates) else math.nan


def paired_gain(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, kind: str, resamples: int | None = None,
                seed: int = 0) -> dict[str, float | int | list[float]]:
    """``score(a) - score(b)`` on the same test clips, with a 95% paired-bootstrap interval: the clips
    are resampled with replacement (the same draw for both), so the interval reflects how much the
    difference moves with *which* clips are in the test set, the dominant noise of small test sets.
    Default ``resamples``: 1000 for accuracy, 200 for mAP (per-class AP is slower)."""
    n = len(targets)
    resamples = resamples or (1000 if kind == "single_label" else 200)
    gain = score(a, targets, kind) - score(b, targets, kind)
    if n == 0:
        return {"gain": math.nan, "ci95": [math.nan, math.nan], "resamples": 0}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = torch.as_tensor(rng.integers(0, n, n))
        draws.append(score(a[idx], targets[idx], kind) - score(b[idx], targets[idx], kind))
    d = np.asarray([x for x in draws if not math.isnan(x)])
    lo, hi = (np.percentile(d, [2.5, 97.5]).tolist() if len(d) else [math.nan, math.nan])
    return {"gain": gain, "ci95": [lo, hi], "resamples": resamples}
