"""``speechcommands`` (v0.02): a folder per word; ``validation_list.txt``/``testing_list.txt`` give splits."""

from __future__ import annotations

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

NAME = "speechcommands"
_BACKGROUND_NOISE = "_background_noise_"


def detect(root: Path) -> bool:
    return (root / "validation_list.txt").is_file() and (root / "testing_list.txt").is_file()


def _read_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip().replace("\\", "/") for line in f if line.strip()]


def scan(root: Path, options: ScanOptions) -> SourceScan:
    lists = {"valid": root / "validation_list.txt", "test": root / "testing_list.txt"}
    missing = [str(p) for p in lists.values() if not p.is_file()]
    if missing:
        raise SourceError(f"speechcommands layout: {' and '.join(missing)} not found")
    split_of: dict[str, str] = {}
    for split, path in lists.items():
        for line_no, rel in enumerate(_read_list(path), start=1):
            other = split_of.setdefault(rel, split)
            if other != split:
                raise SourceError(f"{path} line {line_no}: {rel} is in both the {other} and {split} lists")
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    found: set[str] = set()
    for rel, _ in walk_audio(root, skipped):
        word, sep, _ = rel.partition("/")
        if not sep:
            skipped.append((rel, "not in a word folder"))
        elif word == _BACKGROUND_NOISE:
            skipped.append((rel, "background noise, not a word"))
        else:
            found.add(rel)
            items.append(make_item(root, rel, labels=(word,), split=split_of.get(rel, "train")))
    for rel in sorted(set(split_of) - found):
        list_name = lists[split_of[rel]].name
        skipped.append((rel, f"listed in {list_name} but the file is missing"))
    return SourceScan("speechcommands", items, skipped, sorted_labels(items), root=root)
