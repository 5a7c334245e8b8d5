"""The ``speechcommands`` layout (data_prep/corpora/speechcommands.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import scan
from tests.corpus_trees import (
    assert_sorted_and_absolute,
    by_rel,
    make_speechcommands,
)

pytestmark = pytest.mark.timeout(60)


def test_speechcommands(tmp_path):
    root = make_speechcommands(tmp_path / "speech_commands_v0.02")
    result = scan(root, "speechcommands")
    items = by_rel(result.items)
    assert len(items) == 6
    assert items["right/9f869f70_nohash_0.wav"].split == "valid"
    assert items["yes/004ae714_nohash_0.wav"].split == "valid"
    assert items["right/0a7c2a8d_nohash_0.wav"].split == "test"
    assert items["right/bd76a7fd_nohash_1.wav"].split == "train"
    assert items["backward/0165e0e8_nohash_0.wav"].labels == ("backward",)
    assert result.vocabulary == ["backward", "right", "yes"]
    skipped = dict(result.skipped)
    assert skipped["_background_noise_/white_noise.wav"] == "background noise, not a word"
    assert skipped["_background_noise_/running_tap.wav"] == "background noise, not a word"
    assert "testing_list.txt" in skipped["no/gone_nohash_0.wav"]
    assert_sorted_and_absolute(result.items, root)
