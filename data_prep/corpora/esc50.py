"""``esc50``: ``meta/esc50.csv`` + ``audio/*.wav``; label = ``category`` (ordered by ``target``), folds kept."""

from __future__ import annotations

import os
from pathlib import Path

from data_prep.corpora.base import (
    ScanOptions,
    SourceError,
    SourceItem,
    SourceScan,
    is_audio_name,
    make_item,
    parse_fold,
    read_csv_dicts,
)

NAME = "esc50"


def detect(root: Path) -> bool:
    return (root / "meta" / "esc50.csv").is_file()


def scan(root: Path, options: ScanOptions) -> SourceScan:
    meta = root / "meta" / "esc50.csv"
    audio_dir = root / "audio"
    if not meta.is_file():
        raise SourceError(f"esc50 layout: {meta} not found")
    if not audio_dir.is_dir():
        raise SourceError(f"esc50 layout: audio folder {audio_dir} not found")
    present = {e.name for e in os.scandir(audio_dir) if is_audio_name(e.name) and e.is_file()}
    category_of_target: dict[int, str] = {}
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    listed: set[str] = set()
    for line_no, row in read_csv_dicts(meta, ("filename", "fold", "target", "category")):
        where = f"{meta} line {line_no}"
        try:
            target = int(row["target"])
        except ValueError:
            raise SourceError(f"{where}: target {row['target']!r} is not an integer") from None
        category = row["category"]
        if category_of_target.setdefault(target, category) != category:
            raise SourceError(
                f"{where}: target {target} is {category!r} but was {category_of_target[target]!r} before"
            )
        filename = row["filename"]
        listed.add(filename)
        rel = f"audio/{filename}"
        if filename not in present:
            skipped.append((rel, f"file not found (meta/esc50.csv line {line_no})"))
            continue
        items.append(make_item(root, rel, labels=(category,), fold=parse_fold(row["fold"], where)))
    for name in sorted(present - listed):
        skipped.append((f"audio/{name}", "not listed in meta/esc50.csv"))
    if listed and not items:
        raise SourceError(
            f"{meta} does not match the audio: none of its {len(listed)} files is in {audio_dir}"
        )
    categories = [category_of_target[t] for t in sorted(category_of_target)]
    if len(set(categories)) != len(categories):
        raise SourceError(f"{meta}: one category has several targets: {categories}")
    return SourceScan("esc50", items, skipped, categories, root=root)
