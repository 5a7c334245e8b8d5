"""Corpus scanning: auto detection, the layout registry and the errors every layout shares.

Each layout's own tests are in tests/test_sources_<layout>.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep import corpora
from data_prep.sources import LAYOUTS, SourceError, detect_layout, normalize_split, scan
from tests.corpus_trees import (
    make_audioset,
    make_csv_manifest,
    make_esc50,
    make_folder,
    make_librispeech,
    make_speechcommands,
    make_voxceleb1,
    write_audio,
    write_text,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("maker", "expected"),
    [
        (make_folder, "folder"),
        (lambda root: make_csv_manifest(root).parent, "manifest"),
        (make_csv_manifest, "manifest"),  # the manifest file itself
        (make_esc50, "esc50"),
        (make_speechcommands, "speechcommands"),
        (make_audioset, "audioset"),
        (make_voxceleb1, "voxceleb1"),
        (lambda root: make_voxceleb1(root, under_wav=False), "voxceleb1"),
        (make_librispeech, "librispeech"),
        (lambda root: make_librispeech(root) / "test-clean", "librispeech"),
    ],
)
def test_auto_detection(tmp_path, maker, expected):
    src = maker(tmp_path / "corpus")
    assert detect_layout(src) == expected
    auto = scan(src)
    assert auto.layout == expected
    assert auto == scan(src, expected)


def test_a_folder_of_flac_without_librispeech_names_is_a_folder(tmp_path):
    write_audio(tmp_path / "12" / "34" / "take.flac")
    write_audio(tmp_path / "12" / "34" / "1-2-3.flac")  # numbers, but not SPEAKER-CHAPTER-UTT
    assert detect_layout(tmp_path) == "folder"


def test_errors(tmp_path):
    with pytest.raises(SourceError, match="nowhere.*does not exist"):
        scan(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="unknown layout 'esc51'.*" + ", ".join(LAYOUTS)):
        scan(tmp_path, "esc51")
    empty = tmp_path / "empty"
    write_text(empty / "notes.txt", "no audio here")
    with pytest.raises(SourceError, match="no audio found in .*empty"):
        scan(empty)
    plain = tmp_path / "plain"
    write_audio(plain / "a.wav")
    for layout, marker in [
        ("esc50", r"meta/esc50\.csv not found"),
        ("speechcommands", r"validation_list\.txt and .*testing_list\.txt not found"),
        ("audioset", r"class_labels_indices\.csv not found"),
        ("voxceleb1", r"iden_split\.txt not found"),
        ("manifest", "no manifest"),
        ("librispeech", "no SPEAKER/CHAPTER"),
    ]:
        with pytest.raises(SourceError, match=marker):
            scan(plain, layout)
    with pytest.raises(SourceError, match="is a file"):
        scan(plain / "a.wav")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("train", "train"),
        ("Training", "train"),
        ("val", "valid"),
        ("valid", "valid"),
        ("validation", "valid"),
        ("DEV", "valid"),
        ("test", "test"),
        ("eval", "test"),
        (" testing ", "test"),
    ],
)
def test_normalize_split(value, expected):
    assert normalize_split(value) == expected


def test_normalize_split_rejects_unknown_names():
    with pytest.raises(SourceError, match="'heldout' in rows.csv line 3"):
        normalize_split("heldout", "rows.csv line 3")


def test_every_registered_layout_has_a_module_a_cli_name_and_its_own_test_file():
    tests = Path(__file__).parent
    assert list(corpora.BY_NAME) == [m.NAME for m in corpora.CORPORA]
    assert set(LAYOUTS) == {"auto", *corpora.BY_NAME}
    assert corpora.CORPORA[-1].NAME == "folder"  # the fallback of auto detection comes last
    for module in corpora.CORPORA:
        assert module.__name__ == f"data_prep.corpora.{module.NAME}"
        assert callable(module.detect) and callable(module.scan)
        assert (tests / f"test_sources_{module.NAME}.py").is_file(), f"{module.NAME} has no test file"
