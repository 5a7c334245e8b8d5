"""``python -m finetune probe``: the linear-evaluation suite (frozen encoders, every layer, baselines).

For every task (a shard directory with ``train/``, ``test/`` and optionally ``valid/``) and every model
(an export; with ``--random-init`` also its random twin from seed 0; with ``--baseline logmel`` the
mean+std of the log-mel bands), the pooled features of every layer are computed once per split
(:mod:`pretrain.evaluation.embed`), probes are fitted and chosen on valid
(:mod:`pretrain.evaluation.protocol`) and reported on test: a table on stdout, ``probe.json`` and,
with matplotlib installed, ``probe.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.jsonio import write_json_atomic
from pretrain.data import DataError, ShardSet, resolve_shards
from pretrain.encoder import Encoder
from pretrain.evaluation.embed import (
    POOLINGS,
    LabeledClips,
    PooledLayers,
    WindowSpec,
    embed_clips,
    read_labeled,
)
from pretrain.evaluation.linear import CLASSIFIERS
from pretrain.evaluation.protocol import carve_valid, evaluate, select
from pretrain.evaluation.scores import chance

from .heads import load_encoder

RANDOM_SEED = 0  # the random-init twins' seed (fixed, so reruns compare the same baseline)


@dataclass
class ProbeSettings:
    poolings: tuple[str, ...] = POOLINGS
    layers: str = "all"
    classifier: str = "ridge"
    group_by: str = "source"
    max_clips: int | None = None
    batch_windows: int = 32
    device: str = "cpu"


def parse_task(spec: str) -> tuple[str, dict[str, ShardSet]]:
    """``NAME=DIR`` -> the name and the shard sets of ``DIR/train``, ``DIR/test`` and, if present, ``DIR/valid``."""
    name, sep, directory = spec.partition("=")
    if not sep or not name or not directory:
        raise DataError(f"--task {spec!r}: expected NAME=SHARDS_DIR")
    root = Path(directory)
    splits = {}
    for split in ("train", "valid", "test"):
        if (root / split / "index.json").is_file():
            splits[split] = resolve_shards(str(root / split))
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise DataError(f"--task {name}: {root} has no {' or '.join(f'{s}/index.json' for s in missing)} "
                        "(shard a corpus with train/test splits: python -m data_prep shard)")
    if not splits["train"].vocabulary:
        raise DataError(f"--task {name}: {root / 'train' / 'index.json'} has no label vocabulary (unlabeled shards)")
    return name, splits


def model_name(path: str, taken: set[str]) -> str:
    """A short unique name: the export folder's name, or its parent's when the folder is ``export``."""
    p = Path(path).resolve()
    base = p.parent.name if p.name == "export" and p.parent.name else p.name
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def load_models(paths: list[str], random_init: bool, device: str) -> dict[str, Encoder]:
    """Name -> encoder in eval mode; each export's random twin follows it as ``NAME:random``."""
    models: dict[str, Encoder] = {}
    taken: set[str] = set()
    for path in paths:
        name = model_name(path, taken)
        models[name] = load_encoder(path).eval().to(device)
        if random_init:
            models[f"{name}:random"] = load_encoder(path, random_init=True, seed=RANDOM_SEED).eval().to(device)
    return models


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
    results = {}
    for m, feats in data["train"][1].items():
        pool = ("meanstd",) if m == "logmel" else settings.poolings
        layers = layer_indices(settings.layers, feats.names) if m != "logmel" else [0]
        sel = select(feats, y["train"], data["valid"][1][m], y["valid"], kind, pool, layers, settings.classifier)
        results[m] = evaluate(sel, data["test"][1][m], y["test"])
    return {"kind": kind, "metric": "accuracy" if kind == "single_label" else "mAP",
            "classes": len(vocabulary), "chance": chance(y["train"], y["test"], kind),
            "clips": {s: len(v) for s, v in y.items()}, "valid": valid_source,
            "skipped": {s: clips.skipped for s, (clips, _) in data.items() if clips.skipped},
            "seconds": {"features": round(embed_s, 2), "probes": round(time.perf_counter() - t1, 2)},
            "results": results}


def table(report: dict[str, Any], models: list[str]) -> str:
    """One row per (model, task): best layer (pooling), its valid and test score, weighted sum, baselines."""
    head = (f"{'model':<18} {'task':<14} {'metric':<8} {'layer':<12} {'valid':>6} {'test':>6} {'wsum':>6} "
            f"{'random':>6} {'logmel':>6} {'chance':>6}")
    lines = [head, "-" * len(head)]
    fmt = lambda v: "     -" if v is None else f"{100 * v:6.1f}"  # noqa: E731
    for task, t in report["tasks"].items():
        r = t["results"]
        for m in models:
            best = r[m]["best"]
            twin = r.get(f"{m}:random")
            lines.append(
                f"{m:<18.18} {task:<14.14} {t['metric']:<8} {best['layer'] + ' ' + best['pooling']:<12.12} "
                f"{fmt(best['valid'])} {fmt(best['test'])} {fmt(r[m].get('weighted_sum', {}).get('test'))} "
                f"{fmt(twin['best']['test'] if twin else None)} "
                f"{fmt(r['logmel']['best']['test'] if 'logmel' in r else None)} {fmt(t['chance'])}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    """``probe.png``: test score vs layer per model (best pooling per layer on valid), baselines as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = report["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        for m, r in t["results"].items():
            if m == "logmel":
                ax.axhline(100 * r["best"]["test"], color="gray", linestyle="--", label="log-mel mean+std")
                continue
            per_layer: dict[int, dict] = {}
            for row in r["layers"]:  # per layer, the pooling chosen on valid
                cur = per_layer.get(row["layer_index"])
                if cur is None or row["valid"] > cur["valid"]:
                    per_layer[row["layer_index"]] = row
            xs = sorted(per_layer)
            ax.plot(xs, [100 * per_layer[i]["test"] for i in xs], marker="o",
                    linestyle=":" if m.endswith(":random") else "-", label=m)
            ax.set_xticks(xs, [per_layer[i]["layer"] for i in xs])
        ax.axhline(100 * t["chance"], color="black", linewidth=0.8, label="chance")
        ax.set_title(f"{task} ({t['metric']}, test)")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"test {t['metric']} (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_probe(model_paths: list[str], task_specs: list[str], random_init: bool = False, baselines: tuple[str, ...] = (),
              settings: ProbeSettings | None = None, out_dir: str | None = None) -> dict[str, Any]:
    """The suite: prints the table, writes ``probe.json`` (and ``probe.png``) to ``out_dir``."""
    settings = settings or ProbeSettings()
    if settings.classifier not in CLASSIFIERS:
        raise DataError(f"--classifier {settings.classifier!r}: choose one of {', '.join(CLASSIFIERS)}")
    bad = [p for p in settings.poolings if p not in POOLINGS]
    if bad:
        raise DataError(f"--pooling: unknown {bad}; choose from {', '.join(POOLINGS)}")
    unknown = [b for b in baselines if b != "logmel"]
    if unknown:
        raise DataError(f"--baseline: unknown {unknown}; the only baseline is logmel")
    tasks = [parse_task(s) for s in task_specs]
    models = load_models(model_paths, random_init, settings.device)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"models": {m: p for m, p in zip([m for m in models if not m.endswith(":random")],
                                                               model_paths)},
                              "random_init_seed": RANDOM_SEED if random_init else None,
                              "settings": {"poolings": list(settings.poolings), "layers": settings.layers,
                                           "classifier": settings.classifier, "group_by": settings.group_by,
                                           "max_clips": settings.max_clips},
                              "tasks": {}}
    for name, splits in tasks:
        report["tasks"][name] = probe_task(name, splits, models, "logmel" in baselines, settings)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    print(table(report, list(report["models"])))
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "probe.json", report)
        if plot(report, out / "probe.png"):
            print(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")
        else:
            print(f"wrote {out / 'probe.json'}; no probe.png (matplotlib is not installed: pip install -e '.[plot]')")
    return report


def main_args(args) -> None:
    """Entry point of ``python -m finetune probe`` (argparse namespace from ``finetune.__main__``)."""
    torch.set_grad_enabled(False)
    settings = ProbeSettings(poolings=tuple(p.strip() for p in args.pooling.split(",") if p.strip()),
                             layers=args.layers, classifier=args.classifier, group_by=args.group_by,
                             max_clips=args.max_clips, batch_windows=args.batch_size,
                             device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_probe(args.model, args.task, args.random_init, tuple(args.baseline), settings, args.out)
