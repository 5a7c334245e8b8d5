"""``data_prep inspect`` on 200 seeded corruptions of a real shard: never a traceback, no sample lost before
the damage, and every damaged shard reported."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.inspect_shards import check_shard, inspect
from data_prep.options import ShardOptions
from data_prep.shards import shard_corpus

CASES = 200


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[Path, list[int]]:
    """One real shard of 8 short samples, and the byte offset where each sample's last member ends."""
    src = tmp_path_factory.mktemp("fuzz_src")
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(src / f"c{i}.wav", (0.2 * rng.standard_normal(8000 + 500 * i)).astype(np.float32), 16000)
    out = tmp_path_factory.mktemp("fuzz_out") / "out"
    shard_corpus(ShardOptions(src=src, out=out, layout="folder", workers=1, progress=False))
    path = out / "data-000000.tar"
    with tarfile.open(path) as tar:
        ends = [m.offset_data + m.size for m in tar.getmembers()][1::2]
    return path, ends


def _corrupt(data: bytes, rng: random.Random) -> tuple[bytes, int]:
    """A damaged copy and the first byte it changed (the cut, the flip, the zeroed or renamed header)."""
    kind = rng.choice(["cut", "flip", "zero_header", "rename"])
    headers = [i for i in range(0, len(data) - 512, 512) if data[i + 257 : i + 262] == b"ustar"]
    if kind == "cut":
        at = rng.randrange(1, len(data))
        return data[:at], at
    if kind == "flip":
        out = bytearray(data)
        at = rng.randrange(len(data))
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(at, min(len(data), at + 2000))] ^= 1 << rng.randrange(8)
        out[at] ^= 0xFF
        return bytes(out), at
    at = rng.choice(headers)
    out = bytearray(data)
    if kind == "zero_header":
        out[at : at + 512] = bytes(512)
    else:  # a member renamed to another key (the checksum is fixed, so tar reads it as valid)
        out[at : at + 4] = b"zzzz"
        out[at + 148 : at + 156] = b"        "
        out[at + 148 : at + 155] = f"{sum(out[at : at + 512]):06o}\0".encode()
    return bytes(out), at


@pytest.mark.timeout(120)
def test_inspect_survives_200_corruptions_and_keeps_every_sample_before_the_damage(shard, tmp_path):
    path, ends = shard
    data = path.read_bytes()
    total = len(ends)
    rng = random.Random(0)
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "index.json").write_text((path.parent / "index.json").read_text())
    target = set_dir / path.name
    for case in range(CASES):
        damaged, at = _corrupt(data, rng)
        target.write_bytes(damaged)
        report, problems = check_shard(target)  # must not raise
        intact = sum(1 for end in ends if end <= at)
        assert report.samples >= intact, (case, at, report.samples, intact, problems)
        assert report.samples <= total
        result = inspect(set_dir, workers=1)  # against index.json: nothing lost goes unreported
        assert result.sets[0].samples == report.samples
        if report.samples < total or damaged != data:
            assert result.problems, (case, at, "damage not reported")
        assert all(path.name in p for p in result.problems) and not any("\n" in p for p in result.problems)
