"""The ``librispeech`` layout (data_prep/corpora/librispeech.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import scan
from tests.corpus_trees import (
    by_rel,
    make_librispeech,
)

pytestmark = pytest.mark.timeout(60)


def test_librispeech(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    result = scan(root, "librispeech")
    items = by_rel(result.items)
    assert sorted(items) == [
        "dev-clean/1272/128104/1272-128104-0000.flac",
        "test-clean/1089/134686/1089-134686-0000.flac",
        "train-clean-100/19/198/19-198-0000.flac",
        "train-clean-100/19/198/19-198-0001.flac",
        "train-other-500/20/205/20-205-0000.flac",
    ]
    assert items["dev-clean/1272/128104/1272-128104-0000.flac"].split == "valid"
    assert items["test-clean/1089/134686/1089-134686-0000.flac"].split == "test"
    assert items["train-other-500/20/205/20-205-0000.flac"].split == "train"
    assert items["train-clean-100/19/198/19-198-0001.flac"].labels == ("19",)
    assert result.vocabulary == ["1089", "1272", "19", "20"]
    assert result.skipped == [
        ("train-clean-100/19/198/stray.flac", "not SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac")
    ]
    # a subset directory as SRC takes its split from its own name; an unnamed one has none
    subset = scan(root / "dev-clean", "librispeech")
    assert [(i.rel, i.split) for i in subset.items] == [("1272/128104/1272-128104-0000.flac", "valid")]
    (root / "train-other-500").rename(tmp_path / "my_speakers")
    plain = scan(tmp_path / "my_speakers")
    assert plain.layout == "librispeech" and [i.split for i in plain.items] == [None]
