"""core/shard_format.py: the contract holds for what data_prep writes, and breaches are named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from core import shard_format as fmt


def test_data_prep_output_follows_the_contract(tiny_shards):
    top = fmt.read_index(tiny_shards)
    assert set(top["splits"]) == {"train", "valid", "test"}
    for split, entry in top["splits"].items():
        index = fmt.read_index(tiny_shards / entry["index"])
        assert index["format"] == fmt.INDEX_FORMAT and index["split"] == split
        assert index["members"] == fmt.MEMBERS_DESCRIPTION
        for i, shard in enumerate(index["shards"]):
            assert shard["name"] == fmt.shard_name(split, i)
            with tarfile.open(tiny_shards / split / shard["name"]) as tar:
                names = tar.getnames()
                meta = fmt.decode_meta(tar.extractfile(names[1]).read())
            keys = [fmt.split_member(n) for n in names]
            assert [suffix for _, suffix in keys] == list(fmt.MEMBERS) * shard["samples"]
            assert set(fmt.META_REQUIRED) <= set(meta) <= set(fmt.META_REQUIRED + fmt.META_OPTIONAL)


def test_index_breaches_are_one_line_errors_naming_file_and_field(tmp_path):
    path = tmp_path / fmt.INDEX_FILE
    cases = [
        ("[1, 2]", "expected a JSON object, got list"),
        ("{not json", "unreadable index"),
        (json.dumps({"format": "webdataset", "shards": []}), "missing samples, seconds, hours"),
        (json.dumps({k: [] for k in fmt.SET_INDEX_KEYS} | {"shards": [{"name": "a.tar"}]}),
         "shards[0]: missing samples, seconds"),
        (json.dumps({k: [] for k in fmt.SET_INDEX_KEYS} | {"shards": [{"name": "a", "samples": -1, "seconds": 0}]}),
         "shards[0].samples must be a whole number >= 0"),
        (json.dumps({k: [] for k in fmt.SPLITS_INDEX_KEYS} | {"splits": {"train": {"index": "x"}}}),
         "splits.train: missing samples, seconds, shards"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(fmt.ShardFormatError) as err:
            fmt.read_index(tmp_path)
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(fmt.ShardFormatError, match="not found"):
        fmt.read_index(tmp_path / "nothing")


def test_members_and_meta():
    assert fmt.split_member("dir/a_b-0001-ff.flac") == ("a_b-0001-ff", "flac")
    assert fmt.split_member("k.seg.json") == ("k", "seg.json")  # webdataset splits at the first dot
    for bad in ("noext", ".hidden", "dir/"):
        with pytest.raises(fmt.ShardFormatError):
            fmt.split_member(bad)
    meta = {"source": "a.wav", "offset_s": 0.0, "duration_s": 1.0, "orig_sr": 44100}
    assert fmt.encode_meta(dict(reversed(meta.items()))) == fmt.encode_meta(meta)  # sorted: byte-stable
    assert fmt.decode_meta(fmt.encode_meta(meta)) == meta
    with pytest.raises(fmt.ShardFormatError, match="lacks"):
        fmt.encode_meta({"source": "a.wav"})
    with pytest.raises(fmt.ShardFormatError, match="not an object"):
        fmt.decode_meta(b"[1]", "shard x key k")
    assert fmt.is_audio_file("A.WAV") and not fmt.is_audio_file("._a.wav") and not fmt.is_audio_file("a.txt")


def test_the_format_module_imports_no_third_party_package():
    code = ("import sys; import core.shard_format; "
            "bad = [m for m in ('torch', 'numpy', 'soundfile', 'webdataset') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
