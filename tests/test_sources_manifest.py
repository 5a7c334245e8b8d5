"""The ``manifest`` layout (data_prep/corpora/manifest.py), scanned from a small fake tree."""

from __future__ import annotations

import json

import pytest

from data_prep.sources import SourceError, SourceItem, scan
from tests.corpus_trees import (
    by_rel,
    make_csv_manifest,
    write_audio,
    write_text,
)

pytestmark = pytest.mark.timeout(60)


def test_manifest_csv(tmp_path):
    manifest = make_csv_manifest(tmp_path / "corpus")
    for src in (manifest, manifest.parent):  # the file itself or its directory
        result = scan(src, "manifest")
        assert result.layout == "manifest" and result.root == manifest.parent
        items = by_rel(result.items)
        assert sorted(items) == ["../elsewhere/d.wav", "clips/a.wav", "clips/b.flac", "clips/c.ogg"]
        assert items["clips/a.wav"] == SourceItem(
            manifest.parent / "clips/a.wav", "clips/a.wav", ("dog", "bark"), "train", 1
        )
        assert items["../elsewhere/d.wav"].labels == ("cat",)
        assert items["../elsewhere/d.wav"].split == "valid"
        assert items["clips/b.flac"].labels == ("bird", "song")
        assert items["clips/b.flac"].split == "test" and items["clips/b.flac"].fold is None
        assert items["clips/c.ogg"].labels == () and items["clips/c.ogg"].split == "valid"
        assert items["clips/c.ogg"].fold == 3
        assert result.vocabulary == ["bark", "bird", "cat", "dog", "song"]
        skipped = dict(result.skipped)
        assert "file not found" in skipped["clips/missing.wav"]
        assert "line 5" in skipped["clips/missing.wav"]
        assert "duplicate" in skipped["clips/a.wav"] and "line 2" in skipped["clips/a.wav"]
        assert [item.rel for item in result.items] == sorted(items)


def test_manifest_jsonl(tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "x" / "one.wav")
    write_audio(root / "x" / "two.flac")
    rows = [
        {"path": "x/one.wav", "labels": ["speech", "music"], "split": "val", "fold": "4"},
        {"path": "x/two.flac", "labels": "noise;hum", "split": "test", "fold": 5},
        {"path": "x/three.wav", "labels": "gone"},
    ]
    write_text(root / "manifest.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = scan(root)
    assert result.layout == "manifest"
    items = by_rel(result.items)
    assert items["x/one.wav"].labels == ("speech", "music")
    assert items["x/one.wav"].split == "valid" and items["x/one.wav"].fold == 4
    assert items["x/two.flac"].labels == ("noise", "hum") and items["x/two.flac"].fold == 5
    assert result.skipped == [("x/three.wav", "file not found (manifest.jsonl line 3)")]
    assert result.vocabulary == ["hum", "music", "noise", "speech"]


def test_manifest_without_labels_has_no_vocabulary(tmp_path):
    write_audio(tmp_path / "a.wav")
    manifest = write_text(tmp_path / "list.csv", "path\na.wav\n")
    result = scan(manifest)
    assert result.items[0].labels is None and result.vocabulary is None


def test_manifest_errors(tmp_path):
    write_audio(tmp_path / "a.wav")
    no_path = write_text(tmp_path / "nopath.csv", "file,labels\na.wav,dog\n")
    with pytest.raises(SourceError, match=r"nopath\.csv.*'path'.*\['file', 'labels'\]"):
        scan(no_path)
    no_match = write_text(tmp_path / "wrong.csv", "path,labels\nb.wav,dog\nc.wav,cat\n")
    with pytest.raises(SourceError, match="the manifest does not match the audio"):
        scan(no_match)
    bad_split = write_text(tmp_path / "split.csv", "path,split\na.wav,holdout\n")
    with pytest.raises(SourceError, match=r"'holdout' in .*split\.csv line 2"):
        scan(bad_split)
    bad_fold = write_text(tmp_path / "fold.csv", "path,fold\na.wav,first\n")
    with pytest.raises(SourceError, match=r"fold\.csv line 2.*'first'"):
        scan(bad_fold)
    bad_json = write_text(tmp_path / "bad.jsonl", '{"path": "a.wav"}\n{"path": \n')
    with pytest.raises(SourceError, match=r"bad\.jsonl line 2"):
        scan(bad_json)
    no_key = write_text(tmp_path / "nokey.jsonl", '{"file": "a.wav"}\n')
    with pytest.raises(SourceError, match=r"nokey\.jsonl line 1.*'path'.*\['file'\]"):
        scan(no_key)
    both = tmp_path / "both"
    write_text(both / "manifest.csv", "path\n")
    write_text(both / "manifest.jsonl", "")
    with pytest.raises(SourceError, match="ambiguous"):
        scan(both, "manifest")
    with pytest.raises(SourceError, match="no manifest in"):
        scan(tmp_path, "manifest")  # CSV files, but none named manifest.csv


def test_a_dangling_symlink_in_a_manifest_is_named_as_such(tmp_path):
    write_audio(tmp_path / "a.wav")
    (tmp_path / "b.wav").symlink_to(tmp_path / "gone.wav")
    write_text(tmp_path / "manifest.csv", "path\na.wav\nb.wav\nc.wav\n")
    result = scan(tmp_path, "manifest")
    assert dict(result.skipped) == {"b.wav": "dangling symlink (manifest.csv line 3)",
                                    "c.wav": "file not found (manifest.csv line 4)"}
