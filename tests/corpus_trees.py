"""Small fake corpus trees with each layout's real file and label-file names (used by tests/test_sources*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.sources import SourceItem

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


# ----------------------------------------------------------------------------------------------
# esc50


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


# ----------------------------------------------------------------------------------------------
# speechcommands


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


# ----------------------------------------------------------------------------------------------
# audioset


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


# ----------------------------------------------------------------------------------------------
# voxceleb1


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


# ----------------------------------------------------------------------------------------------
# librispeech


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
