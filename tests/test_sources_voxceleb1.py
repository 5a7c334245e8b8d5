"""The ``voxceleb1`` layout (data_prep/corpora/voxceleb1.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import SourceError, scan
from tests.corpus_trees import (
    assert_sorted_and_absolute,
    by_rel,
    make_voxceleb1,
    write_text,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("under_wav", [True, False])
def test_voxceleb1(tmp_path, under_wav):
    root = make_voxceleb1(tmp_path / "VoxCeleb1", under_wav)
    prefix = "wav/" if under_wav else ""
    result = scan(root, "voxceleb1")
    items = by_rel(result.items)
    assert len(items) == 5
    assert items[prefix + "id10001/1zcIwhmdeo4/00001.wav"].split == "train"
    assert items[prefix + "id10001/7gWzIy6yIIk/00001.wav"].split == "valid"
    assert items[prefix + "id10002/0_laIeN-Q44/00001.wav"].split == "test"
    assert items[prefix + "id10002/0_laIeN-Q44/00001.wav"].labels == ("id10002",)
    assert result.vocabulary == ["id10001", "id10002", "id10003", "id10004"]
    skipped = dict(result.skipped)
    assert skipped[prefix + "id10009/extraVideo/00001.wav"] == "not in iden_split.txt"
    assert "missing" in skipped["id10004/missingVid0/00001.wav"]
    assert_sorted_and_absolute(result.items, root)


def test_voxceleb1_errors(tmp_path):
    root = make_voxceleb1(tmp_path / "vox")
    write_text(root / "iden_split.txt", "4 id10001/1zcIwhmdeo4/00001.wav\n")
    with pytest.raises(SourceError, match=r"iden_split\.txt line 1"):
        scan(root)
    write_text(root / "iden_split.txt", "1 id99999/nothingHere/00001.wav\n")
    with pytest.raises(SourceError, match="does not match the audio"):
        scan(root)
