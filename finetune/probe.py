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
from pathlib import Path
from typing import Any

import torch

from core.jsonio import write_json_atomic
from pretrain.data import DataError
from pretrain.encoder import Encoder
from pretrain.evaluation.embed import POOLINGS
from pretrain.evaluation.linear import CLASSIFIERS
from pretrain.evaluation.suite import ProbeSettings, parse_task, probe_task

from .heads import load_encoder

RANDOM_SEED = 0  # the random-init twins' seed (fixed, so reruns compare the same baseline)


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


def _gain(g: dict[str, Any] | None) -> str:
    if not g:
        return "-"
    lo, hi = g["ci95"]
    return f"{100 * g['gain']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def table(report: dict[str, Any], models: list[str]) -> str:
    """One row per (model, task): best layer (pooling), its valid and test score, weighted sum, baselines,
    and the best layer's gain over the random twin's with a 95% paired-bootstrap interval over test clips."""
    head = (f"{'model':<18} {'task':<14} {'metric':<8} {'layer':<12} {'valid':>6} {'test':>6} {'wsum':>6} "
            f"{'random':>6} {'logmel':>6} {'chance':>6}  gain vs random [95% CI]")
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
                f"{fmt(r['logmel']['best']['test'] if 'logmel' in r else None)} {fmt(t['chance'])}  "
                f"{_gain(r[m].get('gain_vs_random'))}")
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
    settings = ProbeSettings(poolings=tuple(p.strip() for p in args.pooling.split(",") if p.strip()),
                             layers=args.layers, classifier=args.classifier, group_by=args.group_by,
                             max_clips=args.max_clips, batch_windows=args.batch_size,
                             device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.no_grad():  # a context, not a global switch: an error must leave grad mode as it was
        run_probe(args.model, args.task, args.random_init, tuple(args.baseline), settings, args.out)
