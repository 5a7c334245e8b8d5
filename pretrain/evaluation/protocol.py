"""The probing protocol: probes for every (pooling, layer) and a weighted layer sum, chosen on valid.

:func:`select` sees train and valid only; :func:`evaluate` then scores the chosen probes (and, for
the layer curve, every probe) on test. :func:`carve_valid` makes a valid split out of train when a
set has none: whole groups (e.g. every clip of one source file or speaker) go to one side, so no
group's cues reward the choice of L2 or layer.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import DataError
from .embed import PooledLayers
from .linear import Linear, WeightedSum, fit_layer, fit_weighted_sum
from .scores import score


def carve_valid(groups: list[str], fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train indices, valid indices)``: about ``fraction`` of the groups, picked by a seeded hash of
    the group name (stable whatever the clip order), go to valid; at least one group each side."""
    names = sorted(set(groups))
    if len(names) < 2:
        raise DataError(f"cannot carve a validation split from {len(names)} group(s); give a valid split")
    ranked = sorted(names, key=lambda g: zlib.crc32(f"{seed}:{g}".encode()))
    take = min(max(1, round(fraction * len(names))), len(names) - 1)
    held = set(ranked[:take])
    train = [i for i, g in enumerate(groups) if g not in held]
    valid = [i for i, g in enumerate(groups) if g in held]
    return train, valid


@dataclass
class Selection:
    """The probes fitted on train with λ chosen on valid, and the choice among them."""

    kind: str
    layer_names: list[str]
    probes: dict[tuple[str, int], Linear] = field(default_factory=dict)
    valid: dict[tuple[str, int], float] = field(default_factory=dict)
    weighted: dict[str, WeightedSum] = field(default_factory=dict)
    weighted_valid: dict[str, float] = field(default_factory=dict)
    weighted_layers: list[int] = field(default_factory=list)

    @property
    def best(self) -> tuple[str, int]:
        """(pooling, layer index) with the best valid score; ties go to the earlier layer."""
        return max(self.valid, key=lambda k: (_finite(self.valid[k]), -k[1], k[0] == "mean"))

    @property
    def best_weighted(self) -> str | None:
        return max(self.weighted_valid, key=lambda p: _finite(self.weighted_valid[p])) if self.weighted_valid else None


def _finite(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def select(train: PooledLayers, train_y: torch.Tensor, valid: PooledLayers, valid_y: torch.Tensor, kind: str,
           poolings: tuple[str, ...] = ("mean", "meanstd"), layers: list[int] | None = None,
           classifier: str = "ridge", weighted: bool = True) -> Selection:
    """Fit a probe per (pooling, layer) and per pooling a weighted layer sum; everything is chosen on
    valid. ``layers`` are indices into ``train.names`` (default: all)."""
    layers = list(range(len(train.names))) if layers is None else layers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the probes' matrices are small: BLAS threads cost more than they save
    try:
        return _select(train, train_y, valid, valid_y, kind, poolings, layers, classifier, weighted)
    finally:
        torch.set_num_threads(threads)


def _select(train: PooledLayers, train_y: torch.Tensor, valid: PooledLayers, valid_y: torch.Tensor, kind: str,
            poolings: tuple[str, ...], layers: list[int], classifier: str, weighted: bool) -> Selection:
    sel = Selection(kind, list(train.names), weighted_layers=list(layers))
    for pooling in poolings:
        tr, va = train.features(pooling), valid.features(pooling)
        for i in layers:
            probe, v, _ = fit_layer(tr[i], train_y, va[i], valid_y, kind, classifier)
            sel.probes[(pooling, i)], sel.valid[(pooling, i)] = probe, v
        if weighted and len(layers) > 1:
            top = max(layers, key=lambda i: _finite(sel.valid[(pooling, i)]))
            ws, v = fit_weighted_sum([tr[i] for i in layers], train_y, [va[i] for i in layers], valid_y, kind,
                                     classifier, lam=sel.probes[(pooling, top)].lam)
            sel.weighted[pooling], sel.weighted_valid[pooling] = ws, v
    return sel


def best_scores(sel: Selection, test: PooledLayers) -> torch.Tensor:
    """The chosen (best-layer) probe's class scores on ``test``, for paired comparisons between models."""
    pooling, layer = sel.best
    return sel.probes[(pooling, layer)].scores(test.features(pooling)[layer])


def evaluate(sel: Selection, test: PooledLayers, test_y: torch.Tensor) -> dict[str, Any]:
    """Test scores of the chosen probe, of every probe (the layer curve) and of the weighted sum."""
    per_probe = {}
    for (pooling, i), probe in sel.probes.items():
        per_probe[(pooling, i)] = score(probe.scores(test.features(pooling)[i]), test_y, sel.kind)
    pooling, layer = sel.best
    out: dict[str, Any] = {
        "best": {"layer": sel.layer_names[layer], "layer_index": layer, "pooling": pooling,
                 "lambda": sel.probes[(pooling, layer)].lam, "valid": sel.valid[(pooling, layer)],
                 "test": per_probe[(pooling, layer)]},
        "layers": [{"layer": sel.layer_names[i], "layer_index": i, "pooling": p, "lambda": sel.probes[(p, i)].lam,
                    "valid": sel.valid[(p, i)], "test": per_probe[(p, i)]} for (p, i) in sel.probes],
    }
    wp = sel.best_weighted
    if wp is not None:
        ws = sel.weighted[wp]
        idx = sel.weighted_layers
        feats = test.features(wp)
        out["weighted_sum"] = {"pooling": wp, "lambda": ws.lam, "valid": sel.weighted_valid[wp],
                               "test": score(ws.scores([feats[i] for i in idx]), test_y, sel.kind),
                               "layer_weights": dict(zip([sel.layer_names[i] for i in idx], ws.layer_weights))}
    return out
