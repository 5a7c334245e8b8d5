"""Corpus scanning: each layout parsed from a small fake tree with the real layout and file names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.sources import LAYOUTS, SourceError, SourceItem, detect_layout, normalize_split, scan

pytestmark = pytest.mark.timeout(60)

_RNG = np.random.default_rng(0)
_FORMAT = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def write_audio(path: Path, seconds: float = 0.1, sr: int = 16000) -> Path:
    """A tiny real audio file (noise) in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = (0.1 * _RNG.standard_normal(int(seconds * sr))).astype(np.float32)
    sf.write(str(path), noise, sr, format=_FORMAT[path.suffix.lower()])
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_rel(items: list[SourceItem]) -> dict[str, SourceItem]:
    return {item.rel: item for item in items}


def assert_sorted_and_absolute(items: list[SourceItem], root: Path) -> None:
    rels = [item.rel for item in items]
    assert rels == sorted(rels)
    for item in items:
        assert item.path.is_absolute() and item.path.is_file()
        assert item.path == root / item.rel


# ----------------------------------------------------------------------------------------------
# folder


def make_folder(root: Path) -> Path:
    write_audio(root / "dogs" / "bark 1.wav")
    write_audio(root / "dogs" / "deep" / "growl.FLAC")
    write_audio(root / "birds" / "song.ogg")
    write_audio(root / "birds" / "tweet.Mp3")
    write_audio(root / "top.wav")
    write_text(root / "birds" / "notes.txt", "not audio")
    write_text(root / "dogs" / "._bark 1.wav", "macOS resource fork, not audio")
    write_audio(root / ".cache" / "hidden.wav")
    return root


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


# ----------------------------------------------------------------------------------------------
# manifest


def make_csv_manifest(root: Path) -> Path:
    write_audio(root / "clips" / "a.wav")
    write_audio(root / "clips" / "b.flac")
    write_audio(root / "clips" / "c.ogg")
    outside = write_audio(root.parent / "elsewhere" / "d.wav")
    return write_text(
        root / "manifest.csv",
        "path,labels,split,fold,comment\n"
        "clips/a.wav,dog;bark,training,1,x\n"
        f"{outside},cat,dev,2,absolute path\n"
        "clips/b.flac, bird ; song ,eval,,\n"
        "clips/missing.wav,dog,train,1,not on disk\n"
        "clips/c.ogg,,VALIDATION,3,no labels\n"
        "./clips/a.wav,dog,train,1,duplicate\n",
    )


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


# ----------------------------------------------------------------------------------------------
# ESC-50

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def make_esc50(root: Path) -> Path:
    rows = [
        ("1-100032-A-0.wav", 1, 0, "dog", "True", "100032", "A"),
        ("1-100038-A-14.wav", 1, 14, "chirping_birds", "False", "100038", "A"),
        ("2-109505-A-21.wav", 2, 21, "sneezing", "False", "109505", "A"),
        ("5-9032-A-0.wav", 5, 0, "dog", "True", "9032", "A"),
        ("4-181286-A-10.wav", 4, 10, "rain", "True", "181286", "A"),  # not on disk
    ]
    lines = "".join(",".join(map(str, row)) + "\n" for row in rows)
    write_text(root / "meta" / "esc50.csv", ESC50_HEADER + lines)
    for name, *_ in rows[:4]:
        write_audio(root / "audio" / name, sr=44100)
    write_audio(root / "audio" / "3-999999-A-0.wav")  # on disk, not in the CSV
    write_text(root / "README.md", "ESC-50")
    return root


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


# ----------------------------------------------------------------------------------------------
# Speech Commands v0.02


def make_speechcommands(root: Path) -> Path:
    names = [
        "right/9f869f70_nohash_0.wav",
        "right/0a7c2a8d_nohash_0.wav",
        "right/bd76a7fd_nohash_1.wav",
        "yes/004ae714_nohash_0.wav",
        "yes/00f0204f_nohash_1.wav",
        "backward/0165e0e8_nohash_0.wav",
    ]
    for name in names:
        write_audio(root / name)
    write_audio(root / "_background_noise_" / "white_noise.wav", seconds=0.2)
    write_audio(root / "_background_noise_" / "running_tap.wav", seconds=0.2)
    write_text(root / "_background_noise_" / "README.md", "noise")
    write_text(root / "validation_list.txt", "right/9f869f70_nohash_0.wav\nyes/004ae714_nohash_0.wav\n")
    write_text(root / "testing_list.txt", "right/0a7c2a8d_nohash_0.wav\nno/gone_nohash_0.wav\n")
    write_text(root / "LICENSE", "CC-BY-4.0")
    return root


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


# ----------------------------------------------------------------------------------------------
# AudioSet

CLASSES = (
    "index,mid,display_name\n"
    '0,/m/09x0r,"Speech"\n'
    '1,/m/05zppz,"Male speech, man speaking"\n'
    '2,/m/0jbk,"Animal"\n'
    '3,/m/04rlf,"Music"\n'
)


def segments_csv(rows: list[str]) -> str:
    return (
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=4, num_positive_labels=5\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n" + "".join(r + "\n" for r in rows)
    )


def make_audioset(root: Path) -> Path:
    write_text(root / "class_labels_indices.csv", CLASSES)
    write_text(
        root / "balanced_train_segments.csv",
        segments_csv([
            '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"',  # leading dashes
            '-0RWZT-miFs, 420.000, 430.000, "/m/0jbk"',  # start in ms in the file name
            'a_b-c_d_e1F, 0.000, 10.000, "/m/04rlf"',  # underscores in the YTID, bare file name
            'twoSegments, 30.000, 40.000, "/m/04rlf"',  # two files share this YTID
            'missingClip, 10.000, 20.000, "/m/09x0r"',  # never downloaded
        ]),
    )
    write_text(
        root / "eval_segments.csv",
        segments_csv([
            '--4gqARaEJE, 0.000, 10.000, "/m/0jbk,/m/04rlf"',
            'otherStartX, 50.000, 60.000, "/m/0jbk"',  # only a file for start 20 exists
        ]),
    )
    write_audio(root / "audio" / "bal" / "--PJHxphWEs_30.000.wav")
    write_audio(root / "audio" / "bal" / "-0RWZT-miFs_420000_430000.flac")
    write_audio(root / "audio" / "bal" / "a_b-c_d_e1F.wav")
    write_audio(root / "audio" / "bal" / "twoSegments_10.000.wav")
    write_audio(root / "audio" / "bal" / "twoSegments_30.000.flac")
    write_audio(root / "audio" / "eval" / "--4gqARaEJE_0.wav")
    write_audio(root / "audio" / "eval" / "otherStartX_20.000.wav")
    write_audio(root / "audio" / "stray" / "notInCSVxyz.wav")
    return root


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


# ----------------------------------------------------------------------------------------------
# VoxCeleb1


def make_voxceleb1(root: Path, under_wav: bool = True) -> Path:
    audio = root / "wav" if under_wav else root
    for rel in [
        "id10001/1zcIwhmdeo4/00001.wav",
        "id10001/1zcIwhmdeo4/00002.wav",
        "id10001/7gWzIy6yIIk/00001.wav",
        "id10002/0_laIeN-Q44/00001.wav",
        "id10003/5ablueV_1tw/00001.wav",
    ]:
        write_audio(audio / rel)
    write_audio(audio / "id10009" / "extraVideo" / "00001.wav")  # not in the split list
    write_text(
        root / "iden_split.txt",
        "1 id10001/1zcIwhmdeo4/00001.wav\n"
        "1 id10001/1zcIwhmdeo4/00002.wav\n"
        "2 id10001/7gWzIy6yIIk/00001.wav\n"
        "3 id10002/0_laIeN-Q44/00001.wav\n"
        "1 id10003/5ablueV_1tw/00001.wav\n"
        "3 id10004/missingVid0/00001.wav\n",
    )
    return root


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


# ----------------------------------------------------------------------------------------------
# LibriSpeech


def make_librispeech(root: Path) -> Path:
    for subset, speaker, chapter, utts in [
        ("train-clean-100", "19", "198", 2),
        ("train-other-500", "20", "205", 1),
        ("dev-clean", "1272", "128104", 1),
        ("test-clean", "1089", "134686", 1),
    ]:
        chapter_dir = root / subset / speaker / chapter
        for utt in range(utts):
            write_audio(chapter_dir / f"{speaker}-{chapter}-{utt:04d}.flac")
        write_text(chapter_dir / f"{speaker}-{chapter}.trans.txt", f"{speaker}-{chapter}-0000 HELLO\n")
    write_audio(root / "train-clean-100" / "19" / "198" / "stray.flac")
    write_text(root / "LICENSE.TXT", "CC BY 4.0")
    return root


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


# ----------------------------------------------------------------------------------------------
# auto detection and errors


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
