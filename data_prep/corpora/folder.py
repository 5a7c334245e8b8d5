"""``folder``: every audio file below SRC; ``--folder-labels`` labels each with its parent folder's name."""

from __future__ import annotations

from pathlib import Path

from data_prep.corpora.base import ScanOptions, SourceItem, SourceScan, make_item, sorted_labels, walk_audio

NAME = "folder"


def detect(root: Path) -> bool:
    """Any tree is a folder corpus: the fallback of ``auto``."""
    return True


def scan(root: Path, options: ScanOptions) -> SourceScan:
    folder_labels = options.folder_labels
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    for rel, _ in walk_audio(root, skipped):
        if not folder_labels:
            items.append(make_item(root, rel))
            continue
        parent, _, _ = rel.rpartition("/")
        if not parent:
            skipped.append((rel, "directly under SRC: no parent folder to take a label from"))
            continue
        items.append(make_item(root, rel, labels=(parent.rpartition("/")[2],)))
    vocabulary = sorted_labels(items) if folder_labels else None
    return SourceScan("folder", items, skipped, vocabulary, root=root)
