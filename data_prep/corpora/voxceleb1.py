"""``voxceleb1``: ``[wav/]idXXXXX/VIDEO/UTT.wav`` + ``iden_split.txt`` (1 train, 2 valid, 3 test), by speaker."""

from __future__ import annotations

from pathlib import Path

from data_prep.corpora.base import ScanOptions, SourceError, SourceItem, SourceScan, make_item, walk_audio

NAME = "voxceleb1"


def detect(root: Path) -> bool:
    return (root / "iden_split.txt").is_file()


_VOX_MISSING = "listed in iden_split.txt but the file is missing"


def scan(root: Path, options: ScanOptions) -> SourceScan:
    split_file = root / "iden_split.txt"
    if not split_file.is_file():
        raise SourceError(f"voxceleb1 layout: {split_file} not found")
    codes = {"1": "train", "2": "valid", "3": "test"}
    split_of: dict[str, str] = {}
    with open(split_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in codes or parts[1].count("/") != 2:
                raise SourceError(
                    f"{split_file} line {line_no}: expected '<1|2|3> idXXXXX/VIDEO/UTT.wav', "
                    f"got {line.strip()!r}"
                )
            split_of[parts[1]] = codes[parts[0]]
    # Key every file by its last three components, so wav/idX/..., idX/... directly under SRC, and
    # the official vox1_dev_wav/wav + vox1_test_wav/wav side by side all work.
    items: list[SourceItem] = []
    skipped: list[tuple[str, str]] = []
    dangling: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for rel, _ in sorted(walk_audio(root, dangling)):
        key = "/".join(rel.split("/")[-3:])
        if key not in split_of:
            skipped.append((rel, "not in iden_split.txt"))
        elif key in taken:
            skipped.append((rel, f"same speaker/video/utterance as {taken[key]}"))
        else:
            taken[key] = rel
            items.append(make_item(root, rel, labels=(key.partition("/")[0],), split=split_of[key]))
    for key in sorted(set(split_of) - set(taken)):
        skipped.append((key, _VOX_MISSING))
    skipped += dangling
    if not items and skipped and skipped[0][1] != _VOX_MISSING:  # audio present, none of it listed
        raise SourceError(
            f"{split_file} does not match the audio: none of the files it lists is below {root}"
        )
    vocabulary = sorted({key.partition("/")[0] for key in split_of})
    return SourceScan("voxceleb1", items, skipped, vocabulary, root=root)
