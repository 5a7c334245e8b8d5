"""Evaluation metrics: accuracy, top-5, macro-F1 (single-label); mAP, mAUC, d-prime (multi-label).

Classes without positives (or without negatives) in the evaluated set have no AP/AUC; they are
left out of the means and listed, as AudioSet evaluations do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm

from pretrain.evaluation.scores import average_precision  # one AP for fine-tuning and probes


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of one class via the rank-sum statistic (ties get half credit); NaN if one class is absent."""
    pos = targets > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def d_prime(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC), as AST/SSAST report it."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def multi_label_metrics(scores: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict[str, Any]:
    aps = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    aucs = np.array([roc_auc(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    have = ~np.isnan(aps) & ~np.isnan(aucs)
    mean_auc = float(np.nanmean(aucs)) if (~np.isnan(aucs)).any() else math.nan
    return {
        "mAP": float(np.nanmean(aps)) if (~np.isnan(aps)).any() else math.nan,
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc) if not math.isnan(mean_auc) else math.nan,
        "classes_scored": int(have.sum()),
        "classes_without_positives": [labels[c] for c in range(len(labels)) if np.isnan(aps[c])],
        "per_class": {labels[c]: {"AP": _num(aps[c]), "AUC": _num(aucs[c]), "positives": int((targets[:, c] > 0.5).sum())}
                      for c in range(len(labels))},
    }


def single_label_metrics(scores: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict[str, Any]:
    truth = targets.argmax(1)
    pred = scores.argmax(1)
    k = min(5, scores.shape[1])
    topk = np.argsort(-scores, axis=1)[:, :k]
    f1s, per_class = [], {}
    for c, name in enumerate(labels):
        tp = int(((pred == c) & (truth == c)).sum())
        fp = int(((pred == c) & (truth != c)).sum())
        fn = int(((pred != c) & (truth == c)).sum())
        support = tp + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else math.nan
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
        if support:  # macro-F1 over classes present in the evaluated set
            f1s.append(f1)
        per_class[name] = {"precision": precision, "recall": _num(recall), "f1": _num(f1), "support": support}
    return {
        "accuracy": float((pred == truth).mean()),
        "top5": float((topk == truth[:, None]).any(1).mean()),
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "per_class": per_class,
    }


def compute_metrics(scores: np.ndarray, targets: np.ndarray, labels: list[str], kind: str) -> dict[str, Any]:
    """All metrics of a task kind, plus ``main`` (the model-selection metric: accuracy or mAP)."""
    if len(scores) == 0:
        raise ValueError("no samples to evaluate")
    if kind == "multi_label":
        m = multi_label_metrics(scores, targets, labels)
        m["main"] = m["mAP"]
    else:
        m = single_label_metrics(scores, targets, labels)
        m["main"] = m["accuracy"]
    m["num_samples"] = int(len(scores))
    return m


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
