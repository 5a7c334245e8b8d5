"""CLI: ``python -m finetune {train, evaluate, predict, embed, compare, probe}`` (train also under accelerate launch)."""

from __future__ import annotations

import argparse
import json
import sys

from core.allocator import rerun_with_tuned_allocator
from core.cli import non_negative_int, positive_float, positive_int, run_command


def cmd_train(args) -> None:
    from .config import load_finetune_recipe
    from .train import finetune_all

    recipe = load_finetune_recipe(args.recipe, args.set)
    res = finetune_all(recipe)
    print(json.dumps(_summary(res), indent=2))


def cmd_evaluate(args) -> None:
    from core.accel import make_accelerator
    from pretrain.data import resolve_shards

    from .config import load_finetune_recipe
    from .heads import Classifier
    from .metrics import compute_metrics
    from .session import check_labeled, check_targets, check_vocabulary
    from .train import predict_shards

    model = Classifier.from_pretrained(args.model)
    recipe = load_finetune_recipe(None, [f"data.target_frames={model.target_frames}",
                                         f"train.batch_size={args.batch_size}", f"data.num_workers={args.workers}"])
    shards = resolve_shards(args.shards, args.allow_pipe)
    check_labeled(shards, "evaluate")
    check_vocabulary(shards, model.labels)
    acc = make_accelerator(recipe.train.mixed_precision, recipe.run_dir)
    s, t, _ = predict_shards(acc, model, shards, recipe, model.encoder.config.normalization)
    check_targets(t, shards)
    m = compute_metrics(s, t, model.labels, model.kind)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(m, f, indent=2)
    print(json.dumps({k: v for k, v in m.items() if k != "per_class"}, indent=2))


def cmd_predict(args) -> None:
    from .predict import predict

    results, errors = predict(args.model, args.paths, args.top_k, args.hop, args.jsonl)
    print(f"predicted {len(results)} file(s); {len(errors)} unreadable", file=sys.stderr)
    if not results and errors:
        sys.exit(1)


def cmd_embed(args) -> None:
    from .predict import embed

    written, errors = embed(args.model, args.paths, args.out, args.hop, args.target_frames)
    print(f"embedded {len(written)} file(s) into {args.out}; {len(errors)} unreadable", file=sys.stderr)
    if not written and errors:
        sys.exit(1)


def cmd_compare(args) -> None:
    from .compare import compare

    compare(args.recipe, args.encoder, args.set)


def cmd_probe(args) -> None:
    from .probe import main_args

    main_args(args)


def _summary(res: dict) -> dict:
    if "folds" in res:
        return res
    return {k: ({kk: vv for kk, vv in v.items() if kk != "per_class"} if isinstance(v, dict) else v)
            for k, v in res.items() if k in ("valid", "test", "selected")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune an exported encoder on a labeled task")
    p.add_argument("--recipe", help="TOML recipe (recipes/finetune/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="metrics of a fine-tuned model on a labeled shard set")
    p.add_argument("--model", required=True, help="fine-tuned model directory")
    p.add_argument("shards", help="index.json, a directory holding one, a brace pattern or a comma list")
    p.add_argument("--out", help="write metrics JSON (with the per-class report) here")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--workers", type=non_negative_int, default=0)
    p.add_argument("--allow-pipe", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="top-k labels for audio files or folders")
    p.add_argument("--model", required=True)
    p.add_argument("paths", nargs="+")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--hop", type=positive_float, default=None, help="window hop in seconds (default: half a window)")
    p.add_argument("--jsonl", help="write one JSON line per file (per-window and aggregated scores)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("embed", help="pooled and per-layer features of any export (pretrained or fine-tuned)")
    p.add_argument("--model", required=True)
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True, help="directory for one .npz per file")
    p.add_argument("--hop", type=positive_float, default=None, help="window hop in seconds (default: half a window)")
    p.add_argument("--target-frames", type=positive_int, default=None, help="window length in frames (default: the model's)")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("compare", help="pretrained vs random init, linear probe and full fine-tuning (the demo)")
    p.add_argument("--recipe", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("probe", help="linear-evaluation suite: every layer of frozen encoders, baselines, chosen on valid")
    p.add_argument("--model", action="append", required=True, help="an export directory (repeatable)")
    p.add_argument("--task", action="append", required=True, metavar="NAME=SHARDS_DIR",
                   help="labeled shards with train/ and test/ (valid/ optional; else carved from train by group)")
    p.add_argument("--random-init", action="store_true", help="add each model's random-init twin (seed 0)")
    p.add_argument("--baseline", action="append", default=[], choices=["logmel"],
                   help="logmel: mean+std of the log-mel bands through the same probe")
    p.add_argument("--layers", default="all", help="all, last, or layer names (1,2,out)")
    p.add_argument("--pooling", default="mean,meanstd", help="mean and/or meanstd over the real patches")
    p.add_argument("--classifier", default="ridge", choices=["ridge", "logistic"])
    p.add_argument("--group-by", default="source", help="valid carving groups: source, dir, or a json field")
    p.add_argument("--max-clips", type=int, default=None, help="first N clips of each split")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default=None, help="directory for probe.json and probe.png")
    p.set_defaults(func=cmd_probe)
    args = ap.parse_args(argv)
    run_command(args.func, args, user_errors)


def user_errors() -> tuple[type[BaseException], ...]:
    """The error types a user of this CLI can cause (imported only once something failed)."""
    from core.cli import UsageError
    from core.recipe import RecipeError
    from pretrain.checkpoint import TrainingError
    from pretrain.data import DataError
    from pretrain.encoder import ExportError

    return UsageError, RecipeError, DataError, ExportError, TrainingError


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:  # training keeps less memory resident with a tuned allocator (core/allocator.py)
        rerun_with_tuned_allocator()
    main()
