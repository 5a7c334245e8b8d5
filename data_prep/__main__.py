"""Command line: ``python -m data_prep {shard, synth, inspect}``.

Errors the user can fix (bad options, missing paths, unusable corpora, corrupt shards) are printed as one
``error: ...`` line on stderr, with exit status 2 for usage errors and 1 for data errors; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_DATA = 1
EXIT_USAGE = 2


def fail(message: str, status: int = EXIT_DATA) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``status`` (1: data error, 2: usage error)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(minimum: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = value >= minimum if inclusive else value > minimum
        if not ok or value != value or value == float("inf"):
            relation = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"expected a finite number {relation} {minimum:g}, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text!r}")
    return value


SHARD_EPILOG = """\
layouts (--layout, default auto detects them):
  folder          every audio file (wav, flac, ogg, mp3) below SRC; --folder-labels uses the parent
                  folder's name as the label
  manifest        a CSV or JSONL file (SRC itself, or manifest.csv / manifest.jsonl in SRC) with
                  `path` and optional `labels` (';'-separated or a list), `split`, `fold`
  esc50, speechcommands, audioset, voxceleb1, librispeech
                  the corpora's own layouts (see README)

output:
  OUT/NAME-000000.tar ...   WebDataset shards: KEY.flac (16 kHz mono PCM_16) + KEY.json (source,
                            offset_s, duration_s, orig_sr, labels, split, fold)
  OUT/index.json            shards, totals, label vocabulary and counts, parameters, skipped inputs
  corpora with splits get OUT/train/, OUT/valid/, OUT/test/ (each with its index.json) and a top-level
  OUT/index.json listing them.

segments: without --clip-seconds every file is one sample. With it, files are cut into consecutive
clips of that length; a tail of at least --min-seconds becomes a shorter clip, a shorter tail is
dropped. Files shorter than --min-seconds are skipped (and listed).

resume: run the same command again after an interruption (even SIGKILL): finished shards are kept
if their tar still has the size and SHA-256 recorded when it was written; the others (unfinished, or
truncated/altered since) are rendered again. Other arguments on an existing OUT are refused unless
--overwrite.
bad inputs (unreadable, empty, non-audio, NaN/inf, missing, dangling symlinks, and truncated or garbled
files: a WAV/AIFF data chunk cut short, an MP3 frame chain broken, a FLAC that loses sync) are skipped
and listed in index.json with their reason; the run fails only when nothing is usable, or on any skip
with --strict.
valid split: --valid-fraction F holds out round(F x files) source files (seeded by --seed; all clips of
a file stay on one side) as OUT/valid/ and shards the rest as OUT/train/, for corpora without splits.
"""


def _add_shard_parser(sub: Any) -> None:
    from data_prep import options, sources

    shard = sub.add_parser(
        "shard",
        help="turn a corpus into WebDataset tar shards (FLAC 16 kHz mono + json)",
        description="Turn the audio corpus SRC into WebDataset tar shards in OUT: planned up front\n"
        "(deterministic for a seed, whatever --workers is), rendered in parallel, resumable.",
        epilog=SHARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = shard.add_argument
    add("src", metavar="SRC", type=Path, help="corpus folder (or manifest file)")
    add("out", metavar="OUT", type=Path, help="output folder for the shards")
    add("--layout", default="auto", choices=sources.LAYOUTS, help="corpus layout (default: auto-detect)")
    add("--clip-seconds", type=_float(0, False), default=None, metavar="S",
        help="cut files into clips of S seconds, at least --min-seconds (default: one sample per file)")
    add("--min-seconds", type=_float(0, True), default=options.DEFAULT_MIN_SECONDS, metavar="S",
        help="drop tails and skip files shorter than S seconds (default: %(default)s)")
    add("--samples-per-shard", type=_positive_int, default=options.DEFAULT_SAMPLES_PER_SHARD, metavar="N",
        help="at most N samples per shard (default: %(default)s)")
    add("--max-shard-mb", type=_float(0, False), default=options.DEFAULT_MAX_SHARD_MB, metavar="MB",
        help="at most MB megabytes (MiB) per shard, estimated from the raw PCM16 size, an upper bound of "
        "the FLAC size (default: %(default)s)")
    add("--workers", type=_positive_int, default=None, metavar="N",
        help="worker processes, one thread each (default: one per available core)")
    add("--seed", type=_int, default=0, help="seed of the shuffle across shards (default: %(default)s)")
    add("--name", default=None, help="shard name prefix (default: the split name, or 'data' for unsplit corpora)")
    add("--folder-labels", action="store_true", help="folder layout: label each file with its parent folder's name")
    add("--valid-fraction", type=_fraction, default=None, metavar="F",
        help="corpus without splits: hold out the fraction F of the source files (never of the clips; "
        "seeded by --seed) as OUT/valid/, the rest as OUT/train/")
    add("--strict", action="store_true", help="fail on any skipped input instead of listing it")
    add("--overwrite", action="store_true",
        help="replace shards in OUT made with other arguments (other files are kept)")
    add("-q", "--quiet", action="store_true", help="no progress on stderr")


def _add_synth_parser(sub: Any) -> None:
    synth = sub.add_parser(
        "synth",
        help="write the built-in demo corpus (procedural labeled sounds)",
        description="Write the demo corpus: procedural sounds in labeled classes, 1-10 s, as a folder tree "
        "of wav/flac/ogg at 16/22.05/44.1 kHz plus manifest.csv (path, labels, split).",
    )
    synth.add_argument("out", metavar="OUT", type=Path, help="output folder")
    synth.add_argument(
        "--clips", type=_positive_int, default=400, metavar="N", help="number of clips (default: %(default)s)"
    )
    synth.add_argument("--seed", type=_int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument(
        "--workers", type=_positive_int, default=min(os.cpu_count() or 1, 8), metavar="N",
        help="rendering processes; the files are identical whatever N (default: %(default)s)",
    )
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _add_inspect_parser(sub: Any) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="summarize a shard set and decode-check every member",
        description="Summarize a shard set (samples, hours, durations and labels histograms, per split) and "
        "decode every member: each flac must decode to 16 kHz mono, each json must parse, keys must "
        "pair up and counts must match index.json. Exit status 1 on any problem, naming shard and key.",
    )
    inspect.add_argument(
        "shards",
        metavar="SHARDS",
        help="a shard folder (with index.json), an index.json, a .tar, or a brace pattern "
        "such as 'out/data-{000000..000009}.tar'",
    )
    inspect.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="processes decoding shards in parallel (default: one per available core)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m data_prep`` parser; it imports only light modules (no torch, no audio stack)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare raw audio corpora as WebDataset shards for self-supervised pretraining.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{shard,synth,inspect}")
    _add_shard_parser(sub)
    _add_synth_parser(sub)
    _add_inspect_parser(sub)
    return parser


def _run_shard(args: argparse.Namespace) -> None:
    from data_prep import options, shards, sources

    opts = options.ShardOptions(
        src=args.src,
        out=args.out,
        layout=args.layout,
        clip_seconds=args.clip_seconds,
        min_seconds=args.min_seconds,
        samples_per_shard=args.samples_per_shard,
        max_shard_mb=args.max_shard_mb,
        seed=args.seed,
        name=args.name,
        folder_labels=args.folder_labels,
        valid_fraction=args.valid_fraction,
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    try:
        summary = shards.shard_corpus(opts)
    except options.OptionError as err:
        fail(str(err), EXIT_USAGE)
    except (options.ShardError, sources.SourceError) as err:
        fail(str(err))
    print(summary.line())


def _run_synth(args: argparse.Namespace) -> None:
    from data_prep import synth

    try:
        manifest = synth.synthesize(args.out, clips=args.clips, seed=args.seed, progress=not args.quiet,
                                    workers=args.workers)
    except (OSError, ValueError) as err:
        fail(str(err))
    print(f"wrote {args.clips} clips to {args.out} (manifest: {manifest})")


def _run_inspect(args: argparse.Namespace) -> None:
    from data_prep import inspect_shards

    try:
        report = inspect_shards.inspect(args.shards, workers=args.workers)
    except inspect_shards.InspectError as err:
        fail(str(err))
    print(report.text())
    if report.problems:
        fail(
            f"{len(report.problems)} problems found: "
            + "; ".join(report.problems[:5])
            + (" ..." if len(report.problems) > 5 else "")
        )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        {"shard": _run_shard, "synth": _run_synth, "inspect": _run_inspect}[args.command](args)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:  # output piped into e.g. `head`, which exited: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
