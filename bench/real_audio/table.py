"""Markdown rows from ``finetune probe`` reports: one row per (model, task) with the best layer (chosen on
valid), its test score, the weighted layer sum, the random-init twin, the log-mel baseline and chance.

    python bench/real_audio/table.py RUNS/*/probe/probe.json [--baselines RUNS/probe_init/*/probe.json]

Random-init twins (seed 0) and log-mel scores missing from a report are taken from ``--baselines``
(reports of the same architectures with ``--random-init --baseline logmel``); twins are matched by
model name after stripping a ``_sN`` seed suffix and the ``init_`` prefix.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def arch(name: str) -> str:
    return re.sub(r"^init_|_s\d+$", "", name)


def f(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def d(top: float, v: float | None) -> str:
    return "-" if v is None else f"{100 * (top - v):+.1f}"


def rows(reports: list[dict], bases: list[dict]) -> list[str]:
    twins, logmel = {}, {}
    for rep in bases + reports:
        for task, t in rep["tasks"].items():
            for m, r in t["results"].items():
                if m.endswith(":random"):
                    twins[(arch(m[: -len(":random")]), task)] = r["best"]["test"]
                elif m == "logmel":
                    logmel[task] = r["best"]["test"]
    out = ["| model | task | best layer (valid) | test | weighted sum | random init | log-mel | chance | "
           "read-out (valid) - random | - log-mel |", "|---" * 10 + "|"]
    for rep in reports:
        for m in rep["models"]:
            for task, t in rep["tasks"].items():
                best = t["results"][m]["best"]
                ws = t["results"][m].get("weighted_sum") or {}
                wsum = ws.get("test")
                rnd, lm = twins.get((arch(m), task)), logmel.get(task)
                # the suite's two read-outs (best layer, weighted sum): the one with the better valid score
                top = wsum if wsum is not None and ws.get("valid", -1.0) > best["valid"] else best["test"]
                out.append(f"| {m} | {task} | {best['layer']} {best['pooling']} | {f(best['test'])} | {f(wsum)} | "
                           f"{f(rnd)} | {f(lm)} | {f(t['chance'])} | {d(top, rnd)} | {d(top, lm)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--baselines", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    bases = [json.loads(p.read_text()) for p in args.baselines]
    print("\n".join(rows([json.loads(p.read_text()) for p in args.reports], bases)))


if __name__ == "__main__":
    main()
