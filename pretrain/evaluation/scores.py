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
