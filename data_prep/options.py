"""What a sharding run is asked to do: its options, their defaults and checks, and its one-line summary.

Torch-free and light, so that ``python -m data_prep --help`` can show the defaults without loading the
audio stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.shard_format import SAMPLE_RATE

PLAN_VERSION = 2  # 2: the plan records the inputs it was made from
DEFAULT_MIN_SECONDS = 0.5
DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_MAX_SHARD_MB = 512.0


class ShardError(Exception):
    """A sharding run that cannot go on; the message says what is wrong and names the path/value."""


class OptionError(ShardError):
    """Options that cannot work together or out of range (a usage error: exit status 2 on the CLI)."""


@dataclass(frozen=True)
class ShardOptions:
    """Everything ``shard_corpus`` needs; see ``python -m data_prep shard --help`` for each option."""

    src: Path
    out: Path
    layout: str = "auto"
    clip_seconds: float | None = None
    min_seconds: float = DEFAULT_MIN_SECONDS
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    max_shard_mb: float = DEFAULT_MAX_SHARD_MB
    seed: int = 0
    name: str | None = None
    folder_labels: bool = False
    valid_fraction: float | None = None  # hold out this fraction of the source files as OUT/valid/
    workers: int | None = None  # None: one per available core
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    def output_params(self) -> dict[str, Any]:
        """The options that determine the shards' content (not ``workers``, ``strict``, ...)."""
        params = {
            "src": str(Path(self.src).resolve()),
            "layout": self.layout,
            "clip_seconds": self.clip_seconds,
            "min_seconds": self.min_seconds,
            "samples_per_shard": self.samples_per_shard,
            "max_shard_mb": self.max_shard_mb,
            "seed": self.seed,
            "name": self.name,
            "folder_labels": self.folder_labels,
            "sample_rate": SAMPLE_RATE,
            "plan_version": PLAN_VERSION,
        }
        if self.valid_fraction is not None:  # only when given: older plans stay resumable
            params["valid_fraction"] = self.valid_fraction
        return params


def validate(opts: ShardOptions, layouts: tuple[str, ...]) -> None:
    """Refuse options that cannot work, with one line naming the option and the value."""
    if not Path(opts.src).exists():
        raise ShardError(f"SRC does not exist: {opts.src}")
    if opts.layout not in layouts:
        raise ShardError(f"unknown layout {opts.layout!r}; choose one of {', '.join(layouts)}")
    checks = [
        (opts.clip_seconds is None or opts.clip_seconds > 0, "--clip-seconds must be > 0", opts.clip_seconds),
        (opts.min_seconds >= 0, "--min-seconds must be >= 0", opts.min_seconds),
        (opts.samples_per_shard >= 1, "--samples-per-shard must be >= 1", opts.samples_per_shard),
        (opts.max_shard_mb > 0, "--max-shard-mb must be > 0", opts.max_shard_mb),
        (opts.workers is None or opts.workers >= 1, "--workers must be >= 1", opts.workers),
        (opts.valid_fraction is None or 0 < opts.valid_fraction < 1, "--valid-fraction must be in (0, 1)",
         opts.valid_fraction),
    ]
    for ok, message, value in checks:
        if not ok:
            raise OptionError(f"{message}, got {value}")
    if opts.clip_seconds is not None and opts.clip_seconds < opts.min_seconds:
        raise OptionError(
            f"--clip-seconds {opts.clip_seconds:g} is below --min-seconds {opts.min_seconds:g}; "
            "give clips at least as long as the shortest audio kept (or lower --min-seconds)"
        )
    if opts.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", opts.name):
        raise OptionError(f"--name must use only letters, digits, '_' and '-', got {opts.name!r}")


@dataclass
class ShardSummary:
    """What a run produced; ``line()`` is the one-line summary printed on stdout."""

    out: Path
    samples: int
    seconds: float
    shards: int
    skipped: list[dict[str, str]]
    elapsed_s: float
    splits: list[str] = field(default_factory=list)
    rendered_shards: int = 0
    rebuilt_shards: list[str] = field(default_factory=list)  # finished shards found damaged

    def line(self) -> str:
        where = f"{self.out}" + (f" (splits: {', '.join(self.splits)})" if self.splits else "")
        return (
            f"sharded {self.samples} samples ({self.seconds / 3600:.3f} h) into {self.shards} shards "
            f"in {where}; skipped {len(self.skipped)} inputs; {self.elapsed_s:.1f} s"
        )
