"""The ``folder`` layout (data_prep/corpora/folder.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import scan
from tests.corpus_trees import (
    assert_sorted_and_absolute,
    by_rel,
    make_folder,
)

pytestmark = pytest.mark.timeout(60)


def test_folder_lists_every_audio_file_recursively(tmp_path):
    root = make_folder(tmp_path / "corpus")
    result = scan(root, "folder")
    assert result.layout == "folder"
    assert [item.rel for item in result.items] == [
        "birds/song.ogg",
        "birds/tweet.Mp3",
        "dogs/bark 1.wav",
        "dogs/deep/growl.FLAC",
        "top.wav",
    ]
    assert all(item.labels is None and item.split is None and item.fold is None for item in result.items)
    assert result.vocabulary is None and result.skipped == []
    assert result.root == root
    assert_sorted_and_absolute(result.items, root)


def test_folder_labels_from_parent_directory(tmp_path):
    root = make_folder(tmp_path / "corpus")
    result = scan(root, "folder", folder_labels=True)
    labels = {rel: item.labels for rel, item in by_rel(result.items).items()}
    assert labels == {
        "birds/song.ogg": ("birds",),
        "birds/tweet.Mp3": ("birds",),
        "dogs/bark 1.wav": ("dogs",),
        "dogs/deep/growl.FLAC": ("deep",),
    }
    assert result.vocabulary == ["birds", "deep", "dogs"]
    assert [rel for rel, _ in result.skipped] == ["top.wav"]
    assert "no parent folder" in result.skipped[0][1]


def test_folder_follows_directory_links_without_looping(tmp_path):
    root = make_folder(tmp_path / "corpus")
    (root / "dogs" / "loop").symlink_to(root / "dogs", target_is_directory=True)
    result = scan(root, "folder")
    # dogs/ is visited once, whichever path reaches it first; no file is listed twice
    assert len(result.items) == 5
    assert len({item.path.resolve() for item in result.items}) == 5


def test_a_dangling_symlink_is_listed_not_passed_over(tmp_path):
    root = make_folder(tmp_path / "corpus")
    (root / "dogs" / "gone.wav").symlink_to(tmp_path / "elsewhere" / "gone.wav")
    (root / "moved").symlink_to(tmp_path / "old_disk" / "birds")  # a folder that is not there any more
    (root / "notes.txt").symlink_to(tmp_path / "nothing.txt")  # not audio: not an input
    result = scan(root, "folder")
    assert "dogs/gone.wav" not in by_rel(result.items)
    reasons = dict(result.skipped)
    assert set(reasons) == {"dogs/gone.wav", "moved"}
    assert reasons["dogs/gone.wav"] == f"dangling symlink (target {tmp_path / 'elsewhere' / 'gone.wav'} does not exist)"
