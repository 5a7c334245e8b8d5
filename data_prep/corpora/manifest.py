"""``manifest``: a CSV or JSONL file with ``path`` and optional ``labels``, ``split``, ``fold``."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from data_prep.corpora.base import (
    ScanOptions,
    SourceError,
    SourceItem,
    SourceScan,
    normalize_split,
    parse_fold,
    sorted_labels,
)

NAME = "manifest"
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


def detect(root: Path) -> bool:
    """``manifest.csv`` or ``manifest.jsonl`` at the top of SRC (SRC being the file is decided earlier)."""
    return any((root / name).is_file() for name in MANIFEST_NAMES)


def _find_manifest(root: Path) -> Path:
    if root.is_file():
        if root.suffix.lower() not in (".csv", ".jsonl"):
            raise SourceError(f"manifest {root} must be a .csv or .jsonl file")
        return root
    found = [root / name for name in MANIFEST_NAMES if (root / name).is_file()]
    if not found:
        raise SourceError(f"no manifest in {root}: expected manifest.csv or manifest.jsonl at its top")
    if len(found) > 1:
        raise SourceError(f"both manifest.csv and manifest.jsonl in {root}: keep one (ambiguous)")
    return found[0]


def _split_labels(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(";") if part.strip())
    if isinstance(value, list):
        labels = []
        for label in value:
            if isinstance(label, bool) or not isinstance(label, str | int):
                raise SourceError(f"{where}: label {label!r} is not a string")
            if str(label).strip():
                labels.append(str(label).strip())
        return tuple(labels)
    if isinstance(value, int) and not isinstance(value, bool):
        return (str(value),)
    raise SourceError(f"{where}: labels {value!r} must be a string or a list of strings")



def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, row dict)`` from a CSV or JSONL manifest."""
    name = manifest.name
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in columns:
                raise SourceError(f"manifest {manifest} has no 'path' column; columns found: {columns}")
            reader.fieldnames = columns
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        return
    with open(manifest, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{manifest} line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{name} line {line_no}: expected a JSON object, got {type(row).__name__}")
            if "path" not in row:
                raise SourceError(
                    f"manifest {manifest} line {line_no} has no 'path' key; keys found: {sorted(row)}"
                )
            yield line_no, row



def scan(root: Path, options: ScanOptions) -> SourceScan:
    manifest = _find_manifest(root)
    base = manifest.parent
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    has_labels = False
    n_rows = 0
    for line_no, row in _manifest_rows(manifest):
        n_rows += 1
        where = f"{manifest} line {line_no}"
        raw_path = row.get("path")
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise SourceError(f"{where}: empty or non-string path {raw_path!r}")
        if "labels" in row and "label" in row:
            raise SourceError(f"{where}: both 'labels' and 'label' given; use 'labels'")
        label_key = "labels" if "labels" in row else "label" if "label" in row else None
        labels = None
        if label_key is not None:
            has_labels = True
            labels = _split_labels(row[label_key], where)
        split_value = row.get("split")
        split = None
        if split_value is not None and str(split_value).strip():
            split = normalize_split(str(split_value), where)
        fold = parse_fold(row.get("fold"), where)
        path = Path(os.path.normpath(base / os.path.expanduser(raw_path.strip())))
        rel = Path(os.path.relpath(path, base)).as_posix()
        if rel in first_line:
            skipped.append((rel, f"duplicate of {manifest.name} line {first_line[rel]} ({manifest.name} "
                                 f"line {line_no})"))
            continue
        first_line[rel] = line_no
        if not path.is_file():
            what = "dangling symlink" if path.is_symlink() else "file not found"
            skipped.append((rel, f"{what} ({manifest.name} line {line_no})"))
            continue
        items.append(SourceItem(path=path, rel=rel, labels=labels, split=split, fold=fold))
    if n_rows and not items:
        raise SourceError(
            f"the manifest does not match the audio: none of the {n_rows} files listed in {manifest} "
            f"exists (paths resolve against {base})"
        )
    if not n_rows:
        raise SourceError(f"manifest {manifest} lists no files")
    vocabulary = sorted_labels(items) if has_labels else None
    return SourceScan("manifest", items, skipped, vocabulary, root=base)
