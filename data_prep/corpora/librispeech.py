"""``librispeech``: ``[SUBSET/]SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac``; label = speaker, split by SUBSET."""

from __future__ import annotations

import os
import re
from itertools import islice
from pathlib import Path

from data_prep.corpora.base import (
    ScanOptions,
    SourceError,
    SourceItem,
    SourceScan,
    make_item,
    sorted_labels,
    walk_audio,
)

NAME = "librispeech"

_LIBRI_NAME = re.compile(r"(\d+)-(\d+)-(\d+)\.flac", re.IGNORECASE)


def _librispeech_split(subset: str) -> str | None:
    for prefix, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        if subset.lower() == prefix or subset.lower().startswith(prefix + "-"):
            return split
    return None


def _first_entries(path: str | Path, limit: int) -> list[os.DirEntry]:
    """At most ``limit`` visible entries of a directory (none if it cannot be listed)."""
    try:
        with os.scandir(path) as entries:
            return list(islice((e for e in entries if not e.name.startswith(".")), limit))
    except OSError:
        return []


def detect(root: Path, probe: int = 3, peek: int = 64) -> bool:
    """Cheap probe for SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac under SRC or under a subset dir of SRC.

    Looks at no more than ``peek`` entries per directory and ``probe`` speakers/chapters/subsets,
    so detection stays instant on a huge folder corpus.
    """
    def digit_dirs(path: str | Path) -> list[os.DirEntry]:
        return [e for e in _first_entries(path, peek) if e.name.isdigit() and e.is_dir()][:probe]

    def has_utterance(base: str | Path) -> bool:
        for speaker in digit_dirs(base):
            for chapter in digit_dirs(speaker.path):
                prefix = f"{speaker.name}-{chapter.name}-"
                for entry in _first_entries(chapter.path, peek):
                    if entry.name.startswith(prefix) and _LIBRI_NAME.fullmatch(entry.name):
                        return True
        return False

    if has_utterance(root):
        return True
    subdirs = sorted((e for e in _first_entries(root, peek) if e.is_dir()), key=lambda e: e.name)
    # Named subsets (train-clean-100, dev-other, ...) first, then a few others.
    named = [e for e in subdirs if _librispeech_split(e.name)]
    others = [e for e in subdirs if not _librispeech_split(e.name)][:probe]
    return any(has_utterance(e.path) for e in named + others)


def scan(root: Path, options: ScanOptions) -> SourceScan:
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    for rel, _ in walk_audio(root, skipped):
        parts = rel.split("/")
        match = _LIBRI_NAME.fullmatch(parts[-1])
        if len(parts) < 3 or not match or match.group(1) != parts[-3] or match.group(2) != parts[-2]:
            skipped.append((rel, "not SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac"))
            continue
        subset = parts[-4] if len(parts) >= 4 else root.name
        items.append(make_item(root, rel, labels=(parts[-3],), split=_librispeech_split(subset)))
    if not items:
        raise SourceError(f"librispeech layout: no SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac below {root}")
    return SourceScan("librispeech", items, skipped, sorted_labels(items), root=root)
