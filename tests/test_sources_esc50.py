"""The ``esc50`` layout (data_prep/corpora/esc50.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import SourceError, scan
from tests.corpus_trees import (
    ESC50_HEADER,
    assert_sorted_and_absolute,
    by_rel,
    make_esc50,
    write_text,
)

pytestmark = pytest.mark.timeout(60)


def test_esc50(tmp_path):
    root = make_esc50(tmp_path / "ESC-50-master")
    result = scan(root, "esc50")
    items = by_rel(result.items)
    assert sorted(items) == [
        "audio/1-100032-A-0.wav",
        "audio/1-100038-A-14.wav",
        "audio/2-109505-A-21.wav",
        "audio/5-9032-A-0.wav",
    ]
    assert items["audio/1-100038-A-14.wav"].labels == ("chirping_birds",)
    assert items["audio/5-9032-A-0.wav"].fold == 5 and items["audio/5-9032-A-0.wav"].labels == ("dog",)
    assert all(item.split is None for item in result.items)
    # ordered by target: 0 dog, 10 rain (listed, even though its clip is missing), 14, 21
    assert result.vocabulary == ["dog", "rain", "chirping_birds", "sneezing"]
    skipped = dict(result.skipped)
    assert "file not found" in skipped["audio/4-181286-A-10.wav"]
    assert skipped["audio/3-999999-A-0.wav"] == "not listed in meta/esc50.csv"
    assert_sorted_and_absolute(result.items, root)


def test_esc50_errors(tmp_path):
    root = make_esc50(tmp_path / "esc")
    write_text(root / "meta" / "esc50.csv", "filename,fold,category\n1-100032-A-0.wav,1,dog\n")
    with pytest.raises(SourceError, match=r"esc50\.csv lacks column\(s\) \['target'\]"):
        scan(root)
    write_text(root / "meta" / "esc50.csv", ESC50_HEADER + "9-1-A-0.wav,1,0,dog,True,1,A\n")
    with pytest.raises(SourceError, match="does not match the audio"):
        scan(root)
