"""The demo's proof: the same fine-tuning from the pretrained encoder and from a random init.

Linear probes follow MAE's protocol: a frozen encoder, a standardizing head (see ``Classifier``) and
no SpecAugment or mixup (augmenting frozen features only adds noise to the probe). A probe trains only
the head, without a backward pass through the encoder, so it gets more epochs. Both policies are the
recipe's ``[compare]`` keys (``probe_overrides``, ``probe_epochs_factor``, default 4x).
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState

from core.accel import end_process_group
from core.jsonio import write_json_atomic

from .config import FinetuneRecipe, load_finetune_recipe
from .train import finetune


def compare(recipe_path: str, encoder: str, overrides: list[str]) -> dict:
    """Linear probe and full fine-tuning, pretrained vs random init; prints a table, writes compare.json."""
    base = load_finetune_recipe(recipe_path, overrides)
    try:
        rows = _runs(recipe_path, encoder, overrides, base)
    finally:
        end_process_group()
    if PartialState().is_main_process:
        _report(rows, base.train.seed, encoder)
        out = Path(base.run.output_dir) / f"{base.run.name}_compare.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, {f"{m}/{i}": v for (m, i), v in rows.items()})
    return rows


def _runs(recipe_path: str, encoder: str, overrides: list[str], base: FinetuneRecipe) -> dict:
    rows = {}
    c = base.compare
    probe = c.probe_overrides + [f"train.epochs={c.probe_epochs_factor * base.train.epochs}"]
    for mode in ("linear_probe", "full"):
        for init in ("pretrained", "random"):
            r = load_finetune_recipe(recipe_path, overrides + [
                f"model.encoder={json.dumps(encoder)}", f"model.mode={mode}",
                f"model.random_init={'true' if init == 'random' else 'false'}",
                f"run.name={json.dumps(f'{base.run.name}_{mode}_{init}')}",
            ] + (probe if mode == "linear_probe" else []))
            res = finetune(r)
            split = "test" if "test" in res else "valid"
            rows[(mode, init)] = {k: res[split][k] for k in ("accuracy", "macro_f1", "top5") if k in res[split]} | {
                "split": split, "seconds": round(res["seconds"], 1)}
    return rows


def _report(rows: dict, seed: int, encoder: str) -> None:
    print(f"\n  seed {seed} (random init, data order, augmentation); encoder: {encoder}")
    print("  mode          init         accuracy  macro-F1   (split)")
    for (mode, init), m in rows.items():
        print(f"  {mode:<13} {init:<11} {m.get('accuracy', float('nan')):8.3f}  {m.get('macro_f1', float('nan')):8.3f}   ({m['split']})")
    for mode in ("linear_probe", "full"):
        gain = rows[(mode, "pretrained")]["accuracy"] - rows[(mode, "random")]["accuracy"]
        print(f"  {mode}: pretraining gain {100 * gain:+.1f} accuracy points")
