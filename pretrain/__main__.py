"""CLI: ``[accelerate launch -m] python -m pretrain {train, stats, import-checkpoint, export-hf}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from core.allocator import rerun_with_tuned_allocator
from core.cli import non_negative_int, positive_int, run_command

from .interop import add_cli


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .train import train

    recipe = load_recipe(args.recipe, args.set)
    train(recipe)


def cmd_stats(args: argparse.Namespace) -> None:
    from core.jsonio import write_json_atomic

    from .stats import compute_stats

    stats = compute_stats(args.shards, max_samples=args.max_samples, num_workers=args.workers,
                          allow_pipe=args.allow_pipe, corrupt_shards=args.corrupt_shards)
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
    p.add_argument("--max-samples", type=positive_int, default=None, help="stop after this many clips")
    p.add_argument("--workers", type=non_negative_int, default=0, help="loader processes (0 = in this process)")
    p.add_argument("--allow-pipe", action="store_true", help="allow pipe: URLs (they run shell commands)")
    p.add_argument("--corrupt-shards", choices=("skip", "error"), default="skip",
                   help="damaged shards or samples: skip them with a warning (default) or stop")
    p.set_defaults(func=cmd_stats)

    add_cli(sub)  # import-checkpoint, export-hf
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_command(args.func, args, user_errors)


def user_errors() -> tuple[type[BaseException], ...]:
    """The error types a user of this CLI can cause (imported only once something failed)."""
    from core.recipe import RecipeError

    from .checkpoint import TrainingError
    from .data import DataError
    from .encoder import ExportError

    return RecipeError, DataError, ExportError, TrainingError


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:  # training keeps less memory resident with a tuned allocator (core/allocator.py)
        rerun_with_tuned_allocator()
    main()
