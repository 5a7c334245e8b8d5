"""``audioset``: ``*segments*.csv`` + ``class_labels_indices.csv``; audio anywhere below SRC.

Audio files are named ``YTID.<ext>`` or ``YTID_<start>[...].<ext>`` (each already holds its 10 s segment).
Labels are mids (vocabulary ordered by index); ``eval`` segments → test, ``*train*`` → train.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_prep.corpora.base import (
    SPLIT_ALIASES,
    ScanOptions,
    SourceError,
    SourceItem,
    SourceScan,
    read_csv_dicts,
    walk_audio,
)

NAME = "audioset"


def detect(root: Path) -> bool:
    return (root / "class_labels_indices.csv").is_file()


# What may follow the YTID in a file stem: nothing, or "_START" then optionally "_END..."/"-END...".
_AUDIOSET_TAIL = re.compile(r"_(\d+(?:\.\d+)?)(?:[_-].*)?")


def _start_matches(token: str | None, start: float) -> bool:
    """Does a file-name start token (seconds, e.g. ``30`` / ``30.000``, or integer ms ``30000``)
    denote the CSV start time?"""
    if token is None:
        return False
    value = float(token)
    if abs(value - start) < 1e-3:
        return True
    return "." not in token and abs(value / 1000.0 - start) < 1e-3


def _index_audioset_files(
    root: Path, skipped: list[tuple[str, str]]
) -> tuple[dict[str, list[tuple[str | None, str]]], set[str]]:
    """Map every possible YTID prefix of every audio file's stem to ``(start token, rel)``.

    A YTID may contain ``_`` and ``-``, so each ``_`` of the stem is a candidate end of the YTID; the
    rest must then read as ``_START[_END...]``. The CSV lookup is exact, so spurious prefixes never match.
    """
    index: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    all_rels: set[str] = set()
    for rel, _ in walk_audio(root, skipped):
        all_rels.add(rel)
        name = rel.rpartition("/")[2]
        stem = name[: name.rfind(".")]
        index[stem].append((None, rel))
        position = stem.find("_", 1)
        while position > 0:
            match = _AUDIOSET_TAIL.fullmatch(stem, position)
            if match:
                index[stem[:position]].append((match.group(1), rel))
            position = stem.find("_", position + 1)
    return index, all_rels


def _split_from_segments_name(name: str) -> str | None:
    for token in re.split(r"[^a-z]+", name.lower()):
        if token in SPLIT_ALIASES:
            return SPLIT_ALIASES[token]
    return None


def _read_audioset_classes(path: Path) -> tuple[list[str], dict[str, str]]:
    by_index: dict[int, tuple[str, str]] = {}
    for line_no, row in read_csv_dicts(path, ("index", "mid", "display_name")):
        try:
            index = int(row["index"])
        except ValueError:
            raise SourceError(f"{path} line {line_no}: index {row['index']!r} is not an integer") from None
        if index in by_index:
            raise SourceError(f"{path} line {line_no}: index {index} appears twice")
        by_index[index] = (row["mid"], row["display_name"])
    vocabulary = [by_index[i][0] for i in sorted(by_index)]
    if len(set(vocabulary)) != len(vocabulary):
        raise SourceError(f"{path}: a mid appears twice")
    if not vocabulary:
        raise SourceError(f"{path} lists no classes")
    return vocabulary, {mid: display for mid, display in by_index.values()}


def _audioset_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of a segments CSV, skipping ``#`` comments and blank lines."""
    line_no = 0

    def data_lines(f: Iterable[str]) -> Iterator[str]:
        nonlocal line_no
        for line_no, line in enumerate(f, start=1):  # noqa: B007 - read by the caller through nonlocal
            if line.strip() and not line.lstrip().startswith("#"):
                yield line

    with open(path, newline="", encoding="utf-8-sig") as f:
        # One reader over the filtered lines: a reader per line costs as much as the whole parse.
        for fields in csv.reader(data_lines(f), skipinitialspace=True):
            yield line_no, fields


def _parse_row(
    fields: list[str], where: str, known: set[str], classes_name: str, label_cache: dict[str, tuple[str, ...]]
) -> tuple[str, str, str, float, tuple[str, ...]]:
    """``(ytid, start text, end text, start seconds, labels)`` of a segments row; its errors name ``where``."""
    if len(fields) < 4:
        raise SourceError(f"{where}: expected YTID, start_seconds, end_seconds, positive_labels")
    ytid, start_text, end_text, label_text = (x.strip() for x in fields[:4])
    try:
        start = float(start_text)
    except ValueError:
        raise SourceError(f"{where}: start_seconds {start_text!r} is not a number") from None
    labels = label_cache.get(label_text)
    if labels is None:  # rows share few distinct label strings: check each once
        labels = tuple(mid.strip() for mid in label_text.split(",") if mid.strip())
        for mid in labels:
            if mid not in known:
                raise SourceError(f"{where}: label {mid!r} is not in {classes_name}")
        label_cache[label_text] = labels
    return ytid, start_text, end_text, start, labels


def _choose_files(candidates: list[tuple[str | None, str]], start: float) -> list[str]:
    """The files of a YTID that hold the segment starting at ``start`` (sorted when several)."""
    chosen = [rel for token, rel in candidates if _start_matches(token, start)]
    if not chosen:  # a bare YTID.<ext> (or a name without a start) holds the only segment
        chosen = [rel for token, rel in candidates if token is None]
    return sorted(set(chosen)) if len(chosen) > 1 else chosen


def scan(root: Path, options: ScanOptions) -> SourceScan:
    classes = root / "class_labels_indices.csv"
    if not classes.is_file():
        raise SourceError(f"audioset layout: {classes} not found")
    segment_files = sorted(p for p in root.glob("*.csv") if "segments" in p.name.lower())
    if not segment_files:
        raise SourceError(f"audioset layout: no *segments*.csv file at the top of {root}")
    vocabulary, display_names = _read_audioset_classes(classes)
    known = set(vocabulary)
    skipped: list[tuple[str, str]] = []
    index, all_rels = _index_audioset_files(root, skipped)
    used: dict[str, tuple[str, int]] = {}  # rel -> (segments file, line) of the row that took it
    items: list[SourceItem] = []
    label_cache: dict[str, tuple[str, ...]] = {}
    n_rows = 0
    for segments in segment_files:
        split = _split_from_segments_name(segments.name)
        for line_no, fields in _audioset_rows(segments):
            ytid, start_text, end_text, start, labels = _parse_row(fields, f"{segments} line {line_no}",
                                                                   known, classes.name, label_cache)
            n_rows += 1
            candidates = index.get(ytid)
            if candidates is None:  # the common case in real copies: the clip was never downloaded
                skipped.append((f"{ytid} {start_text}-{end_text}",
                                f"no audio file for this segment ({segments.name} line {line_no})"))
                continue
            chosen = _choose_files(candidates, start)
            here = (segments.name, line_no)
            if not chosen:
                names = ", ".join(sorted({rel for _, rel in candidates}))
                skipped.append((f"{ytid} {start_text}-{end_text}",
                                f"audio for {ytid} starts elsewhere ({names}), not at {start_text} "
                                f"({here[0]} line {here[1]})"))
                continue
            rel = chosen[0]
            for extra in chosen[1:]:
                if extra not in used:
                    used[extra] = here
                    skipped.append((extra, f"another file holds the same segment: {rel} "
                                           f"({here[0]} line {here[1]})"))
            if rel in used:
                by = used[rel]
                skipped.append((f"{ytid} {start_text}-{end_text}",
                                f"its file {rel} is already used by {by[0]} line {by[1]} "
                                f"({here[0]} line {here[1]})"))
                continue
            used[rel] = here
            items.append(SourceItem(root / rel, rel, labels, split))
    for rel in sorted(all_rels - set(used)):
        skipped.append((rel, "matches no row of the segments CSVs"))
    if n_rows and not items:
        names = ", ".join(p.name for p in segment_files)
        raise SourceError(
            f"the AudioSet segments CSVs ({names}) do not match the audio in {root}: none of their "
            f"{n_rows} segments has a file named YTID.<ext> or YTID_<start>...<ext>"
        )
    return SourceScan("audioset", items, skipped, vocabulary, display_names, root=root)
