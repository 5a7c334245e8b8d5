"""CLI: ``[accelerate launch -m] python -m pretrain {train, stats, import-checkpoint, export-hf}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _fail(msg: str, code: int = 1) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .train import train

    recipe = load_recipe(args.recipe, args.set)
    train(recipe)


def cmd_stats(args: argparse.Namespace) -> None:
    from core.jsonio import write_json_atomic

    from .stats import compute_stats

    stats = compute_stats(args.shards, max_samples=args.max_samples, num_workers=args.workers,
                          allow_pipe=args.allow_pipe)
    if args.out:
        write_json_atomic(args.out, stats)
    print(json.dumps(stats, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pretrain an encoder with the SSAST objective (works under accelerate launch)")
    p.add_argument("--recipe", help="TOML recipe (recipes/pretrain/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=1e-4 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stats", help="mean/std of the fbank over a shard set (for features.stats)")
    p.add_argument("shards", help="index.json, a directory holding one, a brace pattern or a comma list")
    p.add_argument("--out", help="write the statistics JSON here too")
    p.add_argument("--max-samples", type=int, default=None, help="stop after this many clips")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--allow-pipe", action="store_true", help="allow pipe: URLs (they run shell commands)")
    p.set_defaults(func=cmd_stats)

    from .interop import add_cli

    add_cli(sub)  # import-checkpoint, export-hf
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from core.recipe import RecipeError

    from .checkpoint import TrainingError
    from .data import DataError
    from .encoder import ExportError

    try:
        args.func(args)
    except (RecipeError, DataError, ExportError, TrainingError, FileNotFoundError) as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
