"""The ``audioset`` layout (data_prep/corpora/audioset.py), scanned from a small fake tree."""

from __future__ import annotations

import pytest

from data_prep.sources import SourceError, scan
from tests.corpus_trees import (
    CLASSES,
    assert_sorted_and_absolute,
    by_rel,
    make_audioset,
    segments_csv,
    write_audio,
    write_text,
)

pytestmark = pytest.mark.timeout(60)


def test_audioset(tmp_path):
    root = make_audioset(tmp_path / "audioset")
    result = scan(root, "audioset")
    items = by_rel(result.items)
    assert sorted(items) == [
        "audio/bal/--PJHxphWEs_30.000.wav",
        "audio/bal/-0RWZT-miFs_420000_430000.flac",
        "audio/bal/a_b-c_d_e1F.wav",
        "audio/bal/twoSegments_30.000.flac",
        "audio/eval/--4gqARaEJE_0.wav",
    ]
    assert items["audio/bal/--PJHxphWEs_30.000.wav"].labels == ("/m/09x0r", "/m/05zppz")
    assert items["audio/bal/--PJHxphWEs_30.000.wav"].split == "train"
    assert items["audio/bal/-0RWZT-miFs_420000_430000.flac"].labels == ("/m/0jbk",)
    assert items["audio/eval/--4gqARaEJE_0.wav"].split == "test"
    assert items["audio/eval/--4gqARaEJE_0.wav"].labels == ("/m/0jbk", "/m/04rlf")
    assert result.vocabulary == ["/m/09x0r", "/m/05zppz", "/m/0jbk", "/m/04rlf"]
    assert result.display_names == {
        "/m/09x0r": "Speech",
        "/m/05zppz": "Male speech, man speaking",
        "/m/0jbk": "Animal",
        "/m/04rlf": "Music",
    }
    skipped = dict(result.skipped)
    assert "no audio file" in skipped["missingClip 10.000-20.000"]
    assert "balanced_train_segments.csv line 8" in skipped["missingClip 10.000-20.000"]
    assert "starts elsewhere" in skipped["otherStartX 50.000-60.000"]
    assert skipped["audio/stray/notInCSVxyz.wav"] == "matches no row of the segments CSVs"
    assert "matches no row" in skipped["audio/bal/twoSegments_10.000.wav"]
    assert "audio/eval/otherStartX_20.000.wav" in skipped
    assert_sorted_and_absolute(result.items, root)


def test_audioset_errors(tmp_path):
    root = make_audioset(tmp_path / "audioset")
    write_text(root / "eval_segments.csv", segments_csv(['--4gqARaEJE, 0.000, 10.000, "/m/0jbk,/m/unknown"']))
    with pytest.raises(SourceError, match=r"eval_segments\.csv line 4: label '/m/unknown'"):
        scan(root)
    root2 = tmp_path / "audioset2"
    write_text(root2 / "class_labels_indices.csv", CLASSES)
    write_text(root2 / "eval_segments.csv", segments_csv(['zzzzzzzzzzz, 0.000, 10.000, "/m/0jbk"']))
    write_audio(root2 / "yyyyyyyyyyy.wav")
    with pytest.raises(SourceError, match="do not match the audio"):
        scan(root2)
    (root2 / "eval_segments.csv").unlink()
    with pytest.raises(SourceError, match=r"no \*segments\*\.csv"):
        scan(root2, "audioset")
