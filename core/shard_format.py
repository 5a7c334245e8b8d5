"""The shard format: the contract between ``data_prep`` (writer) and every reader (pretrain, finetune, inspect).

A shard set is a folder of WebDataset tar shards ``NAME-000000.tar, ...`` and an ``index.json``. Each sample
is two adjacent tar members sharing a dot-free key: ``KEY.flac`` (16 kHz mono FLAC PCM_16) and ``KEY.json``
(a JSON object: :data:`META_REQUIRED` always, :data:`META_OPTIONAL` when known). A corpus with splits gets
one shard set per split (``OUT/train/``, ...) and a top-level ``OUT/index.json`` that lists them.

This module is torch-free and imports only the standard library, so that ``data_prep`` stays light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SAMPLE_RATE = 16000  # every audio member decodes to this rate, mono
AUDIO_MEMBER = "flac"  # the member suffix data_prep writes
META_MEMBER = "json"
MEMBERS = (AUDIO_MEMBER, META_MEMBER)
# Audio member suffixes a reader accepts (shards made by other tools may hold wav/ogg/mp3), in preference order.
READABLE_AUDIO_MEMBERS = ("flac", "wav", "ogg", "mp3")

META_REQUIRED = ("source", "offset_s", "duration_s", "orig_sr")
META_OPTIONAL = ("labels", "split", "fold")

INDEX_FILE = "index.json"
INDEX_FORMAT = "webdataset"
MEMBERS_DESCRIPTION = {
    AUDIO_MEMBER: "16 kHz mono PCM_16",
    META_MEMBER: ", ".join(META_REQUIRED + META_OPTIONAL),
}
# index.json of one shard set: these keys always; each entry of "shards" has SHARD_ENTRY_KEYS
# (data_prep also writes "bytes" and "sha256" of the tar; readers must not require them).
SET_INDEX_KEYS = ("format", "shards", "samples", "seconds", "hours", "vocabulary", "params", "skipped")
SHARD_ENTRY_KEYS = ("name", "samples", "seconds")
# Top-level index.json of a corpus with splits: "splits" maps a split name to SPLIT_ENTRY_KEYS.
SPLITS_INDEX_KEYS = ("format", "splits", "samples", "seconds", "hours", "vocabulary", "params", "skipped")
SPLIT_ENTRY_KEYS = ("index", "samples", "seconds", "shards")
SPLIT_ORDER = ("train", "valid", "test")

# Source audio files data_prep's folder layouts and finetune's predict pick up (compared lower-case).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class ShardFormatError(ValueError):
    """An index.json or member that breaks the contract; the message names the file and the field."""


def shard_name(prefix: str, index: int) -> str:
    """``NAME-000003.tar``: the file name of shard ``index`` of a set."""
    return f"{prefix}-{index:06d}.tar"


def split_member(name: str) -> tuple[str, str]:
    """``(key, suffix)`` of a tar member name, split at the first dot of its base name, as webdataset does."""
    base = name.rsplit("/", 1)[-1]
    key, dot, suffix = base.partition(".")
    if not dot or not key:
        raise ShardFormatError(f"member {name!r}: not KEY.SUFFIX")
    return key, suffix


def tar_digest(path: str | Path) -> tuple[int, str]:
    """``(bytes, sha256 hex)`` of a shard file: what index.json's optional ``bytes`` and ``sha256`` record."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def is_audio_file(name: str) -> bool:
    """True for a visible file name with one of :data:`AUDIO_SUFFIXES` (any case)."""
    return not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIXES)


def encode_meta(meta: dict[str, Any]) -> bytes:
    """The bytes of a ``KEY.json`` member (sorted keys, so a shard's bytes depend only on its content)."""
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise ShardFormatError(f"sample json lacks {missing}")
    return json.dumps(meta, sort_keys=True).encode()


def decode_meta(data: bytes, where: str = "sample") -> dict[str, Any]:
    """Parse a ``KEY.json`` member; it must be an object (fields of other tools' shards are not required)."""
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ShardFormatError(f"{where}: json does not parse: {err}") from None
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: json is a {type(meta).__name__}, not an object")
    return meta


def _require(obj: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ShardFormatError(f"{where}: missing {', '.join(missing)}")


def validate_index(index: Any, where: str = INDEX_FILE) -> dict[str, Any]:
    """Check an index.json object against the schema above; return it. ``where`` names it in errors."""
    if not isinstance(index, dict):
        raise ShardFormatError(f"{where}: expected a JSON object, got {type(index).__name__}")
    if "splits" in index:
        _require(index, SPLITS_INDEX_KEYS, where)
        if not isinstance(index["splits"], dict):
            raise ShardFormatError(f"{where}: 'splits' must be an object")
        for split, entry in index["splits"].items():
            if not isinstance(entry, dict):
                raise ShardFormatError(f"{where}: splits.{split} must be an object")
            _require(entry, SPLIT_ENTRY_KEYS, f"{where}: splits.{split}")
        return index
    _require(index, SET_INDEX_KEYS, where)
    if not isinstance(index["shards"], list):
        raise ShardFormatError(f"{where}: 'shards' must be a list")
    for i, entry in enumerate(index["shards"]):
        if not isinstance(entry, dict):
            raise ShardFormatError(f"{where}: shards[{i}] must be an object")
        _require(entry, SHARD_ENTRY_KEYS, f"{where}: shards[{i}]")
        if not isinstance(entry["samples"], int) or entry["samples"] < 0:
            raise ShardFormatError(f"{where}: shards[{i}].samples must be a whole number >= 0")
    return index


def read_index(path: str | Path) -> dict[str, Any]:
    """Read and validate an index.json (or the index.json in a folder); one-line :class:`ShardFormatError`."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ShardFormatError(f"{path}: unreadable index ({err})") from None
    return validate_index(index, str(path))
