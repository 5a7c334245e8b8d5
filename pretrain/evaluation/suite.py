"""One labeled task through the probing protocol, for ``finetune probe`` and the online probe.

A task is a shard directory with ``train/`` and ``test/`` (``valid/`` optional: otherwise carved
from train by group). :func:`probe_task` embeds every split once per group of encoders that read the
same windows, fits and chooses the probes on valid and scores them on test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import DataError, ShardSet, resolve_shards
from ..encoder import Encoder
from .embed import POOLINGS, LabeledClips, PooledLayers, WindowSpec, embed_clips, read_labeled
from .protocol import best_scores, carve_valid, evaluate, select
from .scores import chance, paired_gain


@dataclass
class ProbeSettings:
    poolings: tuple[str, ...] = POOLINGS
    layers: str = "all"
    classifier: str = "ridge"
    group_by: str = "source"
    max_clips: int | None = None
    batch_windows: int = 32
    device: str = "cpu"
    weighted: bool = True  # also the learned weighted sum of all layers


def parse_task(spec: str, where: str = "--task") -> tuple[str, dict[str, ShardSet]]:
    """``NAME=DIR`` -> the name and the shard sets of ``DIR/train``, ``DIR/test`` and, if present,
    ``DIR/valid``; errors start with ``where`` (the option or recipe key that gave ``spec``)."""
    name, sep, directory = spec.partition("=")
    if not sep or not name or not directory:
        raise DataError(f"{where} {spec!r}: expected NAME=SHARDS_DIR")
    root = Path(directory)
    splits = {}
    for split in ("train", "valid", "test"):
        if (root / split / "index.json").is_file():
            splits[split] = resolve_shards(str(root / split))
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise DataError(f"{where} {name}: {root} has no {' or '.join(f'{s}/index.json' for s in missing)} "
                        "(shard a corpus with train/test splits: python -m data_prep shard)")
    if not splits["train"].vocabulary:
        raise DataError(f"{where} {name}: {root / 'train' / 'index.json'} has no label vocabulary (unlabeled shards)")
    return name, splits


def embed_split(shards: ShardSet, vocabulary: list[str], models: dict[str, Encoder], logmel: bool,
                settings: ProbeSettings, name: str) -> tuple[LabeledClips, dict[str, PooledLayers]]:
    """Pooled features of one split for every model (and the log-mel baseline): one read of the shards
    per group of models that read the same windows."""
    groups: dict[tuple, list[str]] = {}
    for m, enc in models.items():
        groups.setdefault(WindowSpec.of(enc).key(), []).append(m)
    feats: dict[str, PooledLayers] = {}
    clips: LabeledClips | None = None
    for i, names in enumerate(groups.values()):
        read = LabeledClips(name, vocabulary)
        spec = WindowSpec.of(models[names[0]])
        waves = read_labeled(shards, read, settings.max_clips, settings.group_by)
        feats |= embed_clips(waves, spec, {m: models[m] for m in names}, logmel=logmel and i == 0,
                             batch_windows=settings.batch_windows, device=settings.device)
        clips = clips or read
    if clips is None or not clips.keys:
        raise DataError(f"{shards.source}: no readable clips")
    return clips, feats


def layer_indices(spec: str, names: list[str]) -> list[int]:
    """``all``, ``last`` (the encoder's output) or a comma list of layer names (``1,4,out``)."""
    if spec == "all":
        return list(range(len(names)))
    if spec == "last":
        return [len(names) - 1]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [w for w in wanted if w not in names]
    if bad:
        raise DataError(f"--layers: unknown layer(s) {bad}; this model has {', '.join(names)}")
    return [names.index(w) for w in wanted]


def probe_task(name: str, splits: dict[str, ShardSet], models: dict[str, Encoder], logmel: bool,
               settings: ProbeSettings) -> dict[str, Any]:
    """Embed the task's splits, fit and choose probes on valid, score them on test."""
    vocabulary = list(splits["train"].vocabulary or [])
    t0 = time.perf_counter()
    data = {s: embed_split(shards, vocabulary, models, logmel, settings, f"{name}/{s}") for s, shards in splits.items()}
    embed_s = time.perf_counter() - t0
    train_clips, train_feats = data["train"]
    y = {s: clips.targets() for s, (clips, _) in data.items()}
    kind = "single_label" if bool((y["train"].sum(1) == 1).all()) else "multi_label"
    valid_source = "split"
    if "valid" not in data:  # carve valid from train, whole groups on each side
        tr, va = carve_valid(train_clips.groups)
        valid_source = f"carved from train by {settings.group_by} ({len(va)} clips)"
        data["valid"] = (train_clips, {m: f.select(va) for m, f in train_feats.items()})
        data["train"] = (train_clips, {m: f.select(tr) for m, f in train_feats.items()})
        y["valid"], y["train"] = y["train"][va], y["train"][tr]
    t1 = time.perf_counter()
    results, test_scores = {}, {}
    for m, feats in data["train"][1].items():
        pool = ("meanstd",) if m == "logmel" else settings.poolings
        layers = layer_indices(settings.layers, feats.names) if m != "logmel" else [0]
        sel = select(feats, y["train"], data["valid"][1][m], y["valid"], kind, pool, layers, settings.classifier,
                     settings.weighted)
        results[m] = evaluate(sel, data["test"][1][m], y["test"])
        test_scores[m] = best_scores(sel, data["test"][1][m])
    for m in results:  # best layer vs best layer, paired over the same test clips
        for key, other in (("gain_vs_random", f"{m}:random"), ("gain_vs_logmel", "logmel")):
            if other in results and other != m and not m.endswith(":random") and m != "logmel":
                results[m][key] = paired_gain(test_scores[m], test_scores[other], y["test"], kind)
    return {"kind": kind, "metric": "accuracy" if kind == "single_label" else "mAP",
            "classes": len(vocabulary), "chance": chance(y["train"], y["test"], kind),
            "clips": {s: len(v) for s, v in y.items()}, "valid": valid_source,
            "skipped": {s: clips.skipped for s, (clips, _) in data.items() if clips.skipped},
            "seconds": {"features": round(embed_s, 2), "probes": round(time.perf_counter() - t1, 2)},
            "results": results}
