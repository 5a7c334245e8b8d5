"""Standardized linear probes on pooled features, with the L2 strength and the layer chosen on valid.

Features are standardized with the training set's per-dimension mean and std (constant dimensions
stay 0). Two classifiers, both in float64:

* ``ridge``: one-vs-rest least squares on centered 0/1 targets, ``W = (XᵀX/n + λI)⁻¹ XᵀY/n``, solved
  for the whole λ grid from one eigendecomposition of ``XᵀX/n`` (closed form, milliseconds);
* ``logistic``: multinomial (single-label) or per-class binary (multi-label) logistic regression,
  ``mean loss + λ/2 ||W||²``, fitted with L-BFGS, warm-started along the λ grid from strong to weak.

Besides one probe per layer, a SUPERB-style probe learns a softmax-weighted sum of all (standardized,
zero-padded to the widest) layers jointly with its classifier, by L-BFGS.

Selection never sees test data: :func:`select` takes train and valid only; :func:`test_scores`
applies the fitted probes to test afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scores import score

RIDGE_LAMBDAS = tuple(10.0 ** e for e in range(-4, 4))  # relative to the unit diagonal of XᵀX/n
LOGISTIC_LAMBDAS = tuple(10.0 ** e for e in range(-1, -6, -1))  # strong -> weak (warm starts)
CLASSIFIERS = ("ridge", "logistic")


@dataclass
class Linear:
    """A fitted probe: standardization, weights and bias; ``scores(x)`` gives class scores."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    lam: float

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return standardize(x, self.mean, self.std) @ self.weight + self.bias


def fit_standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.double() - mean) / std


def ridge_path(x: torch.Tensor, y: torch.Tensor, lambdas: tuple[float, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(W, b)`` of ridge regression of ``y`` on standardized ``x`` for every λ (one eigendecomposition)."""
    n = x.shape[0]
    y = y.double()
    y_mean = y.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / n)
    proj = evecs.T @ (x.T @ (y - y_mean) / n)  # (D, C)
    out = []
    for lam in lambdas:
        w = evecs @ (proj / (evals.clamp_min(0.0) + lam)[:, None])
        out.append((w, y_mean.clone()))
    return out


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "single_label":
        return F.cross_entropy(logits, y.argmax(1))
    return F.binary_cross_entropy_with_logits(logits, y)


def _lbfgs(params: list[torch.Tensor], closure_loss, max_iter: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = closure_loss()
        loss.backward()
        return loss

    opt.step(closure)


def logistic_fit(x: torch.Tensor, y: torch.Tensor, lam: float, kind: str,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression on standardized ``x``: ``mean loss + lam/2 ||W||²`` minimized by L-BFGS."""
    c = y.shape[1]
    w = (init[0].clone() if init else torch.zeros(x.shape[1], c, dtype=torch.float64)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(c, dtype=torch.float64)).requires_grad_(True)
    y = y.double()
    with torch.enable_grad():
        _lbfgs([w, b], lambda: _loss(x @ w + b, y, kind) + 0.5 * lam * (w * w).sum(), max_iter)
    return w.detach(), b.detach()


def fit_layer(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor, valid_y: torch.Tensor,
              kind: str, classifier: str = "ridge") -> tuple[Linear, float, dict[float, float]]:
    """The probe of one feature set with λ chosen on valid: ``(probe, its valid score, score per λ)``."""
    mean, std = fit_standardizer(train_x)
    xs, xv = standardize(train_x, mean, std), standardize(valid_x, mean, std)
    if classifier == "ridge":
        fits = list(zip(RIDGE_LAMBDAS, ridge_path(xs, train_y, RIDGE_LAMBDAS)))
    elif classifier == "logistic":
        fits, prev = [], None
        for lam in LOGISTIC_LAMBDAS:
            prev = logistic_fit(xs, train_y, lam, kind, init=prev)
            fits.append((lam, prev))
    else:
        raise ValueError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
    per_lam = {lam: score(xv @ w + b, valid_y, kind) for lam, (w, b) in fits}
    best = max(per_lam, key=lambda lam: (_finite(per_lam[lam]), lam))  # ties -> the stronger L2
    w, b = dict(fits)[best]
    return Linear(mean, std, w, b, best), per_lam[best], per_lam


def _finite(v: float) -> float:
    return -math.inf if math.isnan(v) else v


@dataclass
class WeightedSum:
    """SUPERB-style probe: ``softmax(logits)``-weighted sum of the standardized layers (zero-padded to
    the widest), then a standardized linear probe on that sum."""

    stats: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor  # (L,)
    width: int
    head: Linear

    def mix(self, layers: list[torch.Tensor]) -> torch.Tensor:
        return _mix(_stack(layers, self.stats, self.width), self.logits)

    def scores(self, layers: list[torch.Tensor]) -> torch.Tensor:
        return self.head.scores(self.mix(layers))

    @property
    def lam(self) -> float:
        return self.head.lam

    @property
    def layer_weights(self) -> list[float]:
        return torch.softmax(self.logits, 0).tolist()


def _stack(layers: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> torch.Tensor:
    """``(n, L, width)``: each layer standardized, zero-padded to the widest layer."""
    return torch.stack([F.pad(standardize(x, m, s), (0, width - x.shape[1])) for x, (m, s) in zip(layers, stats)], 1)


def _mix(stacked: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nld,l->nd", stacked, torch.softmax(logits, 0))


def fit_weighted_sum(train: list[torch.Tensor], train_y: torch.Tensor, valid: list[torch.Tensor],
                     valid_y: torch.Tensor, kind: str, classifier: str = "ridge", lam: float = 1.0,
                     max_iter: int = 50) -> tuple[WeightedSum, float]:
    """The weighted-sum probe: the layer weights are learned jointly with a linear classifier (L2 ``lam``,
    e.g. the best single layer's) by L-BFGS on train; then the classifier on the weighted sum is refitted
    with its λ chosen on valid. Returns the probe and its valid score."""
    stats = [fit_standardizer(x) for x in train]
    width = max(x.shape[1] for x in train)
    xs = _stack(train, stats, width)
    y = train_y.double()
    a = torch.zeros(len(train), dtype=torch.float64, requires_grad=True)
    w = torch.zeros(width, y.shape[1], dtype=torch.float64, requires_grad=True)
    b = (y.mean(0) if classifier == "ridge" else torch.zeros(y.shape[1], dtype=torch.float64)).requires_grad_(True)

    def objective() -> torch.Tensor:
        out = _mix(xs, a) @ w + b
        if classifier == "ridge":  # the ridge objective of ridge_path: mean squared error + lam ||W||²
            return ((out - y) ** 2).mean(0).sum() + lam * (w * w).sum()
        return _loss(out, y, kind) + 0.5 * lam * (w * w).sum()

    with torch.enable_grad():
        _lbfgs([a, w, b], objective, max_iter)
    logits = a.detach()
    mixed_train = _mix(xs, logits)
    mixed_valid = _mix(_stack(valid, stats, width), logits)
    head, v, _ = fit_layer(mixed_train, train_y, mixed_valid, valid_y, kind, classifier)
    return WeightedSum(stats, logits, width, head), v
