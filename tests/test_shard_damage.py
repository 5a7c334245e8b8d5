"""Damaged shards: every reader keeps the samples before the damage, warns, counts the loss, goes on.

Readers: the pretraining loader (``ShardStream``), ``pretrain stats``, the fine-tuning loader (a
``ShardStream`` with the label vocabulary, as ``finetune`` and ``evaluate`` build it) and
``data_prep inspect``. The fuzz test applies 200 seeded corruptions to a real shard.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.__main__ import main as data_prep_main
from data_prep.inspect_shards import inspect
from pretrain.__main__ import main as pretrain_main
from pretrain.data import DataError, ShardStream, make_loader, resolve_shards
from pretrain.shard_reader import CorruptLog
from pretrain.stats import compute_stats

LABELS = ["high", "low", "mid"]


@pytest.fixture(scope="module")
def good_shard(tmp_path_factory) -> Path:
    """One real shard of 6 labeled 0.5 s clips, made by ``data_prep shard`` (with its index.json)."""
    root = tmp_path_factory.mktemp("damage")
    src = root / "src"
    src.mkdir()
    rows = []
    for i in range(6):
        label = LABELS[i % 3]
        t = np.arange(8000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(8000)
        sf.write(src / f"clip{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        rows.append((f"clip{i}.wav", label))
    with open(src / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "labels"), *rows])
    out = root / "shards"
    data_prep_main(["shard", str(src / "manifest.csv"), str(out), "--layout", "manifest",
                    "--samples-per-shard", "6", "--workers", "1", "-q"])
    (tar,) = sorted(out.glob("*.tar"))
    return tar


def _layout(tar: Path) -> tuple[list[str], dict[str, int], list[tuple[int, str]]]:
    """Keys in order, the byte where each sample's last member ends, and each member's header offset."""
    keys, ends, headers = [], {}, []
    with tarfile.open(tar) as t:
        for m in t:
            key = m.name.split(".", 1)[0]
            if key not in ends:
                keys.append(key)
            ends[key] = m.offset_data + m.size
            headers.append((m.offset, m.name))
    return keys, ends, headers


def corrupt(data: bytes, headers: list[tuple[int, str]], rng: random.Random) -> tuple[str, bytes, int]:
    """One seeded corruption: (kind, damaged bytes, offset of the first damaged byte)."""
    kind = rng.choice(["cut", "flip", "zero_header", "rename"])
    buf = bytearray(data)
    if kind == "cut":
        at = rng.randrange(0, len(data))
        return kind, bytes(buf[:at]), at
    if kind == "flip":
        spots = sorted(rng.randrange(0, len(data)) for _ in range(rng.randint(1, 4)))
        for at in spots:
            buf[at] ^= 1 << rng.randrange(8)
        return kind, bytes(buf), spots[0]
    at, name = rng.choice(headers)
    if kind == "zero_header":
        buf[at:at + 512] = bytes(512)
        return kind, bytes(buf), at
    # rename: another key or another extension, with a valid header checksum (tar sees a sound member)
    key, ext = name.split(".", 1)
    new = rng.choice([f"renamed{rng.randrange(99)}.{ext}", f"{key}.x{ext}", name.replace(ext, "json" if ext == "flac" else "flac")])
    field = new.encode()[:100].ljust(100, b"\0")
    buf[at:at + 100] = field
    buf[at + 148:at + 156] = b" " * 8
    buf[at + 148:at + 156] = b"%06o\0 " % sum(buf[at:at + 512])
    return kind, bytes(buf), at


def _index(directory: Path, tar: Path, good: Path) -> None:
    index = json.loads((good.parent / "index.json").read_text())
    index["shards"] = [dict(index["shards"][0], name=tar.name)]
    (directory / "index.json").write_text(json.dumps(index))


def _loader_keys(directory: Path, vocabulary: list[str] | None, mode: str) -> tuple[list[str], CorruptLog]:
    shards = resolve_shards(str(directory))
    log = CorruptLog()
    stream = ShardStream(shards, batch_size=1 if mode == "train" else 2, target_frames=32, mode=mode,
                         shuffle_buffer=0, vocabulary=vocabulary, drop_last=False, corrupt_log=log)
    keys: list[str] = []
    try:
        for batch in make_loader(stream):
            if batch["keys"][0] in keys:  # a training stream starts its next cycle
                break
            keys += batch["keys"]
    except DataError as e:  # only a training stream over shards with no readable sample may stop
        assert mode == "train" and "no readable sample" in str(e) and not keys, e
    return keys, log


def _read(reader: str, directory: Path, tar: Path) -> tuple[set[str], int]:
    """Keys a reader got whole, and how many samples it says were lost."""
    if reader == "pretrain":
        keys, log = _loader_keys(directory, None, "train")
        return set(keys), log.samples
    if reader == "finetune":
        keys, log = _loader_keys(directory, LABELS, "eval")
        return set(keys), log.samples
    if reader == "stats":
        try:
            s = compute_stats(str(directory), features=None, batch_size=4)
        except DataError as e:
            assert "no readable clips" in str(e), e
            return set(), 0
        return {f"#{i}" for i in range(s["clips"])}, s["corrupt_samples"]
    report = inspect(str(directory), workers=1)
    problems = sum(p.startswith(f"shard {tar.name}") for p in report.problems)
    return {f"#{i}" for i in range(report.sets[0].samples)}, problems


@pytest.fixture
def one_thread():
    """Tiny fbanks: one thread is ~20x faster than a pool on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(120)
def test_fuzz_every_reader_survives_200_corruptions(good_shard, tmp_path, one_thread):
    data = good_shard.read_bytes()
    keys, ends, headers = _layout(good_shard)
    rng = random.Random(13)
    readers = ["pretrain", "stats", "finetune", "inspect"]
    tried: dict[str, int] = {}
    for trial in range(200):
        kind, bad, at = corrupt(data, headers, rng)
        tried[kind] = tried.get(kind, 0) + 1
        d = tmp_path / f"t{trial}"
        d.mkdir()
        tar = d / "data-000000.tar"
        tar.write_bytes(bad)
        _index(d, tar, good_shard)
        before = [k for k in keys if ends[k] <= at]  # samples wholly before the first damaged byte
        reader = readers[trial % len(readers)]
        got, reported = _read(reader, d, tar)
        where = f"trial {trial} ({kind} at byte {at}, reader {reader})"
        if reader in ("pretrain", "finetune"):
            assert set(before) <= got, f"{where}: lost {sorted(set(before) - got)}"
            missing = len(set(keys) - got)
            assert reported >= missing, f"{where}: {missing} sample(s) missing but {reported} reported"
        else:  # counts only: stats and inspect do not name the clips
            assert len(got) >= len(before), f"{where}: {len(got)} read, {len(before)} before the damage"
            if reader == "stats":
                assert reported >= len(keys) - len(got) or not got, where
            elif len(got) < len(keys):
                assert reported > 0, f"{where}: samples lost without a problem reported"
    assert min(tried.values()) >= 30, tried


def _cut(tiny_shards: Path, tmp_path: Path, fraction: float) -> tuple[Path, Path]:
    """A copy of the tiny train set with its second shard cut to ``fraction`` of its bytes."""
    out = tmp_path / "train"
    out.mkdir()
    for p in (tiny_shards / "train").iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    victim = sorted(out.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * fraction)])
    return out, victim


@pytest.mark.timeout(120)
def test_pretrain_stats_on_a_cut_shard_warns_once_counts_and_goes_on(tiny_shards, tmp_path, capsys, one_thread):
    """The issue's repro: ``truncate -s 60%`` one tar, ``python -m pretrain stats DIR`` (2 loader workers)."""
    out, victim = _cut(tiny_shards, tmp_path, 0.6)
    index = json.loads((out / "index.json").read_text())
    with tarfile.open(tiny_shards / "train" / victim.name) as t:
        ends = [m.offset_data + m.size for m in t if m.name.endswith(".json")]
    whole = sum(end <= victim.stat().st_size for end in ends)
    listed = next(s["samples"] for s in index["shards"] if s["name"] == victim.name)
    pretrain_main(["stats", str(out), "--workers", "2"])
    p = capsys.readouterr()
    warnings = [line for line in p.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and victim.name in warnings[0], p.err
    assert f"{whole} of {listed} samples read, {listed - whole} lost" in warnings[0]
    stats = json.loads(p.out)
    assert stats["clips"] == index["samples"] - (listed - whole)
    assert stats["corrupt_samples"] == listed - whole and victim.name in stats["corrupt_list"][0]
    # the "error" policy (recipe key data.corrupt_shards, flag --corrupt-shards) stops with one line instead
    with pytest.raises(SystemExit) as e:
        pretrain_main(["stats", str(out), "--corrupt-shards", "error"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and victim.name in err.strip().splitlines()[-1]


def test_a_shard_unreadable_from_byte_0_is_skipped_by_every_reader(tiny_shards, tmp_path, one_thread):
    out, victim = _cut(tiny_shards, tmp_path, 1.0)
    victim.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)  # looks gzip-compressed, is not
    listed = next(s["samples"] for s in json.loads((out / "index.json").read_text())["shards"]
                  if s["name"] == victim.name)
    for workers in (0, 2):  # records travel from loader workers to the consuming process
        log = CorruptLog()
        stream = ShardStream(resolve_shards(str(out)), batch_size=3, target_frames=32, mode="eval",
                             num_workers=workers, drop_last=False, corrupt_log=log)
        n = sum(len(b["keys"]) for b in make_loader(stream))
        total = json.loads((out / "index.json").read_text())["samples"]
        assert n == total - listed and log.samples == listed, (workers, n, log.samples)
        assert len(log.entries) == 1 and victim.name in log.entries[0] and "0 of" in log.entries[0]
    report = inspect(str(out), workers=1)
    assert any(f"0 of the {listed} samples" in p for p in report.problems), report.problems
    stats = compute_stats(str(out))
    assert stats["corrupt_samples"] == listed
    with pytest.raises(DataError, match=victim.name):
        list(make_loader(ShardStream(resolve_shards(str(out)), batch_size=3, target_frames=32, mode="eval",
                                     corrupt_log=CorruptLog("error"))))


def test_training_stream_over_unreadable_shards_stops_with_an_error(tiny_shards, tmp_path):
    bad = tmp_path / "bad-000000.tar"
    bad.write_bytes(bytes(4096))
    stream = ShardStream(resolve_shards(str(bad)), batch_size=2, target_frames=32, mode="train")
    with pytest.raises(DataError, match="no readable sample"):
        next(iter(make_loader(stream)))


def test_recipe_key_corrupt_shards_in_both_schemas():
    from finetune.config import load_finetune_recipe
    from pretrain.config import RecipeError, load_recipe

    assert load_recipe(None).data.corrupt_shards == "skip"
    assert load_recipe(None, ["data.corrupt_shards=error"]).data.corrupt_shards == "error"
    assert load_finetune_recipe(None, ["data.corrupt_shards=error"]).data.corrupt_shards == "error"
    with pytest.raises(RecipeError, match="corrupt_shards"):
        load_finetune_recipe(None, ["data.corrupt_shards=ignore"])


def test_incomplete_sample_is_not_trained_on(tiny_shards, tmp_path):
    """A sample without its json (mid-shard, or where the shard ends) is counted, never kept without labels."""
    src = sorted((tiny_shards / "train").glob("*.tar"))[0]
    with tarfile.open(src) as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    for drop, says in ((1, "no json member"), (len(members) - 1, "ends inside sample")):
        bad = tmp_path / f"bad{drop}-000000.tar"
        with tarfile.open(bad, "w") as t:
            for i, (m, data) in enumerate(members):
                if i != drop:
                    t.addfile(m, io.BytesIO(data))
        log = CorruptLog()
        stream = ShardStream(resolve_shards(str(bad)), batch_size=1, target_frames=32, mode="eval", drop_last=False,
                             corrupt_log=log)
        keys = [k for b in make_loader(stream) for k in b["keys"]]
        assert len(keys) == len(members) // 2 - 1 and log.samples == 1 and says in log.entries[0], log.entries


@pytest.mark.timeout(300)
def test_finetune_run_lists_damaged_train_and_test_shards(tiny_shards, tmp_path, capsys, one_thread):
    """Fine-tuning: a cut training shard and a cut test shard are each warned about once and listed in
    metrics.json; the run finishes."""
    from finetune.train import finetune

    from .test_finetune import make_vit_export, tiny_recipe

    data = tmp_path / "data"
    cut = []
    for split in ("train", "valid", "test"):
        (data / split).mkdir(parents=True)
        for p in (tiny_shards / split).iterdir():
            if p.is_file():
                (data / split / p.name).write_bytes(p.read_bytes())
        for victim in sorted((data / split).glob("*.tar"))[: {"train": 9, "valid": 0, "test": 1}[split]]:
            victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * 0.6)])
            cut.append(victim.name)  # every training shard: the short run reads only some of them
    export = make_vit_export(tmp_path / "export")
    recipe = tiny_recipe(data, tmp_path / "runs", "damaged", **{"model.encoder": str(export)})
    result = finetune(recipe)
    err = capsys.readouterr().err
    warned = {name: sum(name in line and "lost" in line for line in err.splitlines()) for name in cut}
    listed = {name for name in cut if any(name in e and "lost" in e for e in result["corrupt_list"])}
    assert max(warned.values()) == 1 and listed == {name for name, n in warned.items() if n}, (warned, err)
    assert cut[-1] in listed and listed - {cut[-1]}, listed  # the test shard and some training shard
    assert result["corrupt_samples"] > 0 and "test" in result
    written = json.loads((tmp_path / "runs" / "damaged" / "metrics.json").read_text())
    assert written["corrupt_list"] == result["corrupt_list"]
