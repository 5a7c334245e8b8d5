"""Find audio files and their labels in a corpus: folder trees, manifests and known corpus layouts.

(Layouts to be implemented: see issue 2. The dataclasses and the ``scan`` signature are the contract.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
LAYOUTS = ("auto", "folder", "manifest", "esc50", "speechcommands", "audioset", "voxceleb1", "librispeech")


class SourceError(Exception):
    """A corpus that cannot be read as asked; the message names the path/value and what is wrong."""


@dataclass(frozen=True)
class SourceItem:
    """One input audio file and what the layout knows about it."""

    path: Path  # absolute path of the audio file
    rel: str  # path relative to SRC, POSIX separators: the shard's ``source`` field
    labels: tuple[str, ...] | None = None
    split: str | None = None  # "train" | "valid" | "test" | None
    fold: int | None = None


@dataclass
class SourceScan:
    """Result of scanning a corpus."""

    layout: str
    items: list[SourceItem]
    # Inputs skipped before decoding (e.g. manifest rows whose file is missing): (path or row, reason).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Ordered label vocabulary when the layout defines one (else derived from the labels seen).
    vocabulary: list[str] | None = None


def scan(src: str | Path, layout: str = "auto") -> SourceScan:
    """Scan ``src`` with the given layout (``auto`` detects it)."""
    raise NotImplementedError
