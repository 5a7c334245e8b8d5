"""Sharding end to end on the real demo corpus: read back, determinism, bad inputs, CLI errors, inspect."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from data_prep import plan
from data_prep.__main__ import main
from data_prep.options import validate
from data_prep.shards import ShardError, ShardOptions, shard_corpus
from data_prep.sources import LAYOUTS

CLIPS = 24  # the shared `corpus` fixture (conftest.py)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    shard_corpus(ShardOptions(src=corpus, out=out, samples_per_shard=3, workers=2, progress=False))
    return out


def _manifest(src: Path) -> dict[str, dict[str, str]]:
    with open(src / "manifest.csv", newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def _tar_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers()]


def _shard_keys(out: Path) -> dict[str, list[str]]:
    return {str(p.relative_to(out)): _tar_keys(p) for p in sorted(out.rglob("*.tar"))}


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process (a subprocess would import torch again: seconds)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.timeout(60)
def test_read_back_with_webdataset_and_tarfile(corpus, sharded):
    manifest = _manifest(corpus)
    top = json.loads((sharded / "index.json").read_text())
    assert set(top["splits"]) == {"train", "valid", "test"}
    seen_sources = {}
    for split, entry in top["splits"].items():
        index = json.loads((sharded / entry["index"]).read_text())
        assert index["vocabulary"] == top["vocabulary"]  # one vocabulary for every split
        urls = [str(sharded / split / s["name"]) for s in index["shards"]]
        assert len(urls) >= 2
        per_shard = {s["name"]: s for s in index["shards"]}
        counted = {name: [0, 0.0] for name in per_shard}
        labels = {}
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            key = sample["__key__"]
            assert "." not in key and set(sample) >= {"flac", "json"}
            wave, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=True)
            assert sr == 16000 and wave.shape[1] == 1 and np.isfinite(wave).all()
            meta = json.loads(sample["json"])
            row = manifest[meta["source"]]
            assert meta["labels"] == row["labels"].split(";")
            assert meta["split"] == row["split"] == split
            assert meta["offset_s"] == 0.0 and meta["duration_s"] == pytest.approx(len(wave) / 16000)
            # Resampling keeps the length: ceil(frames * 16000 / orig_sr) samples.
            info = sf.info(str(corpus / meta["source"]))
            assert meta["orig_sr"] == info.samplerate
            assert len(wave) == math.ceil(info.frames * 16000 / info.samplerate)
            shard_name = Path(sample["__url__"]).name
            counted[shard_name][0] += 1
            counted[shard_name][1] += len(wave) / 16000
            for label in meta["labels"]:
                labels[label] = labels.get(label, 0) + 1
            seen_sources[meta["source"]] = info.frames / info.samplerate
        for name, (count, seconds) in counted.items():
            assert count == per_shard[name]["samples"]
            assert seconds == pytest.approx(per_shard[name]["seconds"], abs=1e-4)
        assert labels == index["label_counts"]
        assert index["samples"] == sum(c for c, _ in counted.values()) == entry["samples"]
    # Every source is in the shards exactly once; total duration matches the sources.
    assert sorted(seen_sources) == sorted(manifest)
    assert top["seconds"] == pytest.approx(sum(seen_sources.values()), abs=1e-3 * CLIPS)
    assert top["vocabulary"] == sorted({row["labels"] for row in manifest.values()})
    assert top["skipped"] == []

    # Plain tarfile: KEY.flac then KEY.json per sample, fixed metadata, shuffled (not in source order).
    first = sorted((sharded / "train").glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert [n.split(".", 1)[1] for n in names] == ["flac", "json"] * (len(names) // 2)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in members)
    sources_in_order = [
        json.loads(sample["json"])["source"]
        for sample in wds.WebDataset(
            [str(p) for p in sorted((sharded / "train").glob("*.tar"))], shardshuffle=False, empty_check=False
        )
    ]
    assert sources_in_order != sorted(sources_in_order)


@pytest.mark.timeout(60)
def test_same_seed_same_shards_whatever_the_workers(corpus, sharded, tmp_path):
    one = tmp_path / "one"
    shard_corpus(ShardOptions(src=corpus, out=one, samples_per_shard=3, workers=1, progress=False))
    assert _shard_keys(one) == _shard_keys(sharded)
    for tar in sorted(one.rglob("*.tar")):
        assert tar.read_bytes() == (sharded / tar.relative_to(one)).read_bytes(), tar
    other_seed = tmp_path / "seed1"
    shard_corpus(
        ShardOptions(src=corpus, out=other_seed, samples_per_shard=3, seed=1, workers=1, progress=False)
    )
    assert _shard_keys(other_seed) != _shard_keys(one)
    assert sorted(k for v in _shard_keys(other_seed).values() for k in v) == sorted(
        k for v in _shard_keys(one).values() for k in v
    )


@pytest.mark.timeout(60)
def test_clip_seconds_segments_and_max_shard_mb(corpus, tmp_path):
    out = tmp_path / "seg"
    summary = shard_corpus(
        ShardOptions(
            src=corpus,
            out=out,
            layout="folder",
            clip_seconds=2.0,
            min_seconds=0.5,
            max_shard_mb=0.25,
            workers=2,
            progress=False,
        )
    )
    index = json.loads((out / "index.json").read_text())
    assert index["split"] is None and summary.splits == []
    total_source = 0.0
    expected = 0
    for path in sorted(corpus.rglob("*")):
        if path.suffix in (".wav", ".flac", ".ogg"):
            duration = sf.info(str(path)).duration
            tail = duration - 2.0 * math.floor(duration / 2.0)
            expected += math.floor(duration / 2.0) + (1 if tail >= 0.5 else 0)
            total_source += duration - (tail if tail < 0.5 else 0.0)
    assert index["samples"] == expected == summary.samples
    assert index["seconds"] == pytest.approx(total_source, abs=1e-3 * expected)
    for shard in index["shards"]:
        assert (out / shard["name"]).stat().st_size <= 0.25 * 1024 * 1024
        for name in _tar_keys(out / shard["name"]):
            assert "." not in name.split(".", 1)[0] and shard["name"].startswith("data-")
    assert len(index["shards"]) >= 3


def _bad_corpus(root: Path, good_src: Path, good: int) -> Path:
    """A manifest corpus with ``good`` real clips plus one input of every bad kind."""
    root.mkdir()
    rows = []
    for rel, row in list(_manifest(good_src).items())[:good]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good_src / rel, root / rel)
        rows.append((rel, row["labels"]))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "random.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    flac = io.BytesIO()
    sf.write(flac, np.sin(np.arange(48000) / 10.0).astype(np.float32) * 0.5, 16000, format="FLAC")
    (bad / "truncated.flac").write_bytes(flac.getvalue()[: len(flac.getvalue()) // 2])
    sf.write(bad / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    nan = np.full(16000, 0.1, dtype=np.float32)
    nan[100] = np.nan
    sf.write(bad / "nan.wav", nan, 16000, subtype="FLOAT")
    for name in ("empty.wav", "random.wav", "truncated.flac", "zero.wav", "nan.wav", "missing.wav"):
        rows.append((f"bad/{name}", "bad"))
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return root


@pytest.mark.timeout(60)
def test_bad_inputs_are_skipped_listed_and_counted(corpus, tmp_path, capsys):
    src = _bad_corpus(tmp_path / "src", corpus, good=4)
    out = tmp_path / "out"
    code, stdout, stderr = _run_cli(["shard", str(src), str(out), "--workers", "2"], capsys)
    assert code == 0, stderr
    assert "sharded 4 samples" in stdout and "skipped 6 inputs" in stdout
    # missing.wav is skipped by the scan; truncated.flac and nan.wav pass the header probe, fail to decode
    # Progress with rate and ETA also when stderr is not a terminal (here: captured).
    assert "probe: 100% 9/9 [" in stderr and "file/s]" in stderr
    assert "render: 100% " in stderr and "s audio/s, 6/6 files, " in stderr
    assert "h audio" in stderr
    index = json.loads((out / "index.json").read_text())
    reasons = {Path(s["source"]).name: s["reason"] for s in index["skipped"]}
    assert set(reasons) == {"empty.wav", "random.wav", "truncated.flac", "zero.wav", "nan.wav", "missing.wav"}
    assert "empty" in reasons["empty.wav"]
    assert "not audio" in reasons["random.wav"]
    assert "truncated" in reasons["truncated.flac"]
    assert "zero-length" in reasons["zero.wav"]
    assert "NaN" in reasons["nan.wav"]
    stages = {Path(s["source"]).name: s["stage"] for s in index["skipped"]}
    assert (
        stages["missing.wav"] == "scan" and stages["empty.wav"] == "probe" and stages["nan.wav"] == "decode"
    )
    assert index["samples"] == 4 and "bad" not in index["label_counts"]

    code, _, stderr = _run_cli(["shard", str(src), str(tmp_path / "strict"), "--strict", "-q"], capsys)
    assert code == 1 and "--strict" in stderr and "Traceback" not in stderr
    assert "bad/" in stderr  # names the first few skipped inputs

    all_bad = tmp_path / "all_bad"
    all_bad.mkdir()
    shutil.copytree(src / "bad", all_bad / "bad")
    code, _, stderr = _run_cli(["shard", str(all_bad), str(tmp_path / "none"), "-q"], capsys)
    assert code == 1 and "no usable audio" in stderr and str(all_bad) in stderr
    assert "Traceback" not in stderr


@pytest.mark.timeout(60)
def test_cli_errors_are_clear(corpus, tmp_path, capsys):
    missing = tmp_path / "does_not_exist"
    code, _, stderr = _run_cli(["shard", str(missing), str(tmp_path / "o")], capsys)
    assert code == 1 and str(missing) in stderr and stderr.startswith("error:")
    code, _, stderr = _run_cli(["shard", str(corpus), str(tmp_path / "o"), "--layout", "nosuch"], capsys)
    assert code == 2 and "nosuch" in stderr
    code, _, stderr = _run_cli(
        ["shard", str(corpus), str(tmp_path / "o"), "--samples-per-shard", "0"], capsys
    )
    assert code == 2 and "'0'" in stderr
    code, _, stderr = _run_cli(["shard", str(corpus), str(tmp_path / "o"), "--layout", "esc50"], capsys)
    assert code == 1 and "esc50" in stderr and "Traceback" not in stderr
    with pytest.raises(ShardError, match="--name"):
        shard_corpus(ShardOptions(src=corpus, out=tmp_path / "o", name="a.b"))
    # A real process too: status, one clear line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep", "shard", str(missing), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1 and str(missing) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_inspect_passes_good_shards_and_names_a_corrupt_member(sharded, tmp_path, capsys):
    code, stdout, stderr = _run_cli(["inspect", str(sharded)], capsys)
    assert code == 0, stderr
    assert "train:" in stdout and "valid:" in stdout and "test:" in stdout and "OK" in stdout
    code, stdout, _ = _run_cli(["inspect", str(sharded / "train" / "train-{000000..000001}.tar")], capsys)
    assert code == 0 and "counts match index.json" in stdout

    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    target = sorted((broken / "valid").glob("*.tar"))[0]
    with tarfile.open(target) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member.name == f"{bad_key}.flac":
                data = data[:40] + bytes(len(data) - 40)  # header kept, audio frames zeroed: corrupt
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    code, stdout, stderr = _run_cli(["inspect", str(broken)], capsys)
    assert code == 1
    assert target.name in stderr and bad_key in stderr

    altered = tmp_path / "altered"  # a byte changed where no decoder looks (tar padding): only the hash sees it
    shutil.copytree(sharded, altered)
    target = sorted((altered / "train").glob("*.tar"))[1]
    with tarfile.open(target) as tar:
        member = next(m for m in tar.getmembers() if m.size % 512)
    data = bytearray(target.read_bytes())
    data[member.offset_data + member.size] = 1  # the zero padding after a member's data
    target.write_bytes(bytes(data))
    code, stdout, stderr = _run_cli(["inspect", str(altered)], capsys)
    assert code == 1 and "1 problems found" in stderr
    assert f"shard {target.name}: {len(data)} bytes with another SHA-256 than index.json records" in stderr


@pytest.mark.timeout(30)
def test_sample_keys_are_stable_dot_free_and_unique():
    assert plan.sample_key("audio/dog/a.b c.wav", 3) == plan.sample_key("audio/dog/a.b c.wav", 3)
    key = plan.sample_key("audio/dog/a.b c.wav", 3)
    assert "." not in key and key.startswith("audio_dog_a_b_c-0003-")
    assert plan.sample_key("x/a.wav", 0) != plan.sample_key("x/a.flac", 0)
    assert "." not in plan.sample_key("..." + "é" * 200 + ".wav", 0)
    long = plan.sample_key("d/" + "x" * 300 + ".wav", 0)
    assert len(long) < 90  # fits a ustar member name with its extension


@pytest.mark.timeout(60)
def test_esc50_layout_keeps_folds_and_the_label_file_errors_are_clear(tmp_path, capsys):
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = [
        ("1-100-A-0.wav", 1, 0, "dog"),
        ("2-200-A-1.wav", 2, 1, "rooster"),
        ("3-300-A-0.wav", 3, 0, "dog"),
    ]
    t = np.arange(44100 * 2) / 44100
    for i, (name, *_rest) in enumerate(rows):
        sf.write(
            root / "audio" / name, (0.3 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(np.float32), 44100
        )
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows([(n, f, tgt, c, "True", n.split("-")[1], "A") for n, f, tgt, c in rows])
    out = tmp_path / "out"
    code, stdout, stderr = _run_cli(
        ["shard", str(root), str(out), "--name", "esc", "--workers", "1", "-q"], capsys
    )
    assert code == 0, stderr
    index = json.loads((out / "index.json").read_text())
    assert index["params"]["detected_layout"] == "esc50" and index["vocabulary"] == ["dog", "rooster"]
    assert [s["name"] for s in index["shards"]] == ["esc-000000.tar"]
    folds = {}
    for sample in wds.WebDataset([str(out / "esc-000000.tar")], shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        folds[Path(meta["source"]).name] = (meta["fold"], meta["labels"], meta["orig_sr"])
    assert folds == {n: (f, [c], 44100) for n, f, _, c in rows}

    # A label file that does not match the audio: clear error naming it, exit 1, no traceback.
    for name, *_rest in rows:
        (root / "audio" / name).rename(root / "audio" / ("x" + name))
    code, _, stderr = _run_cli(["shard", str(root), str(tmp_path / "o2"), "-q"], capsys)
    assert code == 1 and "esc50.csv" in stderr and "Traceback" not in stderr


@pytest.mark.timeout(60)
def test_clip_seconds_below_min_seconds_is_refused_in_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, stderr = _run_cli(["shard", str(corpus), str(out), "--clip-seconds", "0.001"], capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert stderr.count("\n") == 1 and stderr.startswith("error: --clip-seconds 0.001 is below --min-seconds 0.5")
    with pytest.raises(ShardError, match="--clip-seconds 0.2 is below --min-seconds 0.3"):
        shard_corpus(ShardOptions(src=corpus, out=out, clip_seconds=0.2, min_seconds=0.3))
    # With --min-seconds 0 the user asked for tiny clips explicitly: allowed.
    validate(ShardOptions(src=corpus, out=out, clip_seconds=0.001, min_seconds=0), LAYOUTS)


def _sources_of(set_dir: Path) -> set[str]:
    found = set()
    for tar in sorted(set_dir.glob("*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            found.add(json.loads(sample["json"])["source"])
    return found


@pytest.mark.timeout(120)
def test_valid_fraction_splits_by_source_file_deterministically(corpus, tmp_path, capsys):
    def run(out: Path, *extra: str) -> tuple[int, str]:
        code, stdout, stderr = _run_cli(["shard", str(corpus), str(out), "--layout", "folder", "--clip-seconds",
                                         "2", "--samples-per-shard", "8", "-q", *extra], capsys)
        return code, stdout + stderr

    code, text = run(tmp_path / "a", "--valid-fraction", "0.25", "--workers", "1")
    assert code == 0, text
    top = json.loads((tmp_path / "a" / "index.json").read_text())
    assert list(top["splits"]) == ["train", "valid"] and top["params"]["valid_fraction"] == 0.25
    train, valid = _sources_of(tmp_path / "a" / "train"), _sources_of(tmp_path / "a" / "valid")
    assert len(valid) == round(0.25 * CLIPS) and len(train) == CLIPS - len(valid)
    assert not train & valid  # every clip of a file is on one side
    for split in ("train", "valid"):
        index = json.loads((tmp_path / "a" / split / "index.json").read_text())
        assert index["split"] == split and index["samples"] == top["splits"][split]["samples"]
    assert top["splits"]["valid"]["samples"] > len(valid)  # files were cut into several clips each

    code, text = run(tmp_path / "b", "--valid-fraction", "0.25", "--workers", "2")
    assert code == 0, text
    assert _shard_keys(tmp_path / "b") == _shard_keys(tmp_path / "a")  # same seed: same split, same shards
    code, text = run(tmp_path / "c", "--valid-fraction", "0.25", "--seed", "1")
    assert code == 0, text
    assert _sources_of(tmp_path / "c" / "valid") != valid

    code, _, stderr = _run_cli(["shard", str(corpus), str(tmp_path / "d"), "--valid-fraction", "0.25"], capsys)
    assert code == 1 and "already has splits" in stderr and stderr.count("\n") == 1  # the manifest has splits
    code, _, stderr = _run_cli(["shard", str(corpus), str(tmp_path / "e"), "--valid-fraction", "1"], capsys)
    assert code == 2 and "strictly between 0 and 1" in stderr


def _imported_modules(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "data_prep", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    names = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, {name.split(".")[0] for name in names}


@pytest.mark.timeout(120)
def test_help_and_inspect_load_no_heavy_package(sharded):
    heavy = {"torch", "torchaudio", "webdataset", "numpy", "soundfile", "scipy"}
    for argv in (["--help"], ["shard", "--help"], ["synth", "--help"], ["inspect", "--help"]):
        proc, modules = _imported_modules(*argv)
        assert proc.returncode == 0 and "usage:" in proc.stdout
        assert not modules & heavy, (argv, sorted(modules & heavy))
    proc, modules = _imported_modules("inspect", str(sharded), "--workers", "1")
    assert proc.returncode == 0 and "torch" not in modules and "webdataset" not in modules


@pytest.mark.timeout(60)
def test_truncated_and_garbled_inputs_and_dangling_links_are_skipped_and_listed(corpus, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in sorted(p.name for p in (corpus / "audio").rglob("*.wav"))[:2]:
        shutil.copy(next((corpus / "audio").rglob(name)), src / name)
    tone = (0.3 * np.sin(np.arange(32000) / 5.0)).astype(np.float32)
    for name, fmt in (("cut.wav", "WAV"), ("cut.mp3", "MP3")):
        buf = io.BytesIO()
        sf.write(buf, tone, 16000, format=fmt)
        data = buf.getvalue()
        (src / name).write_bytes(data[: len(data) // 2] if fmt == "WAV" else
                                 data[: len(data) // 3] + bytes(40) + data[len(data) // 3 + 40 :])
    (src / "gone.flac").symlink_to(tmp_path / "unmounted" / "gone.flac")
    code, stdout, stderr = _run_cli(["shard", str(src), str(tmp_path / "out"), "--layout", "folder", "-q"], capsys)
    assert code == 0, stderr
    assert "sharded 2 samples" in stdout and "skipped 3 inputs" in stdout
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    skipped = {s["source"]: (s["stage"], s["reason"]) for s in index["skipped"]}
    assert skipped["cut.wav"][0] == "probe" and skipped["cut.wav"][1].startswith("truncated: the WAV data chunk")
    assert skipped["cut.mp3"][0] == "probe" and skipped["cut.mp3"][1].startswith("garbled: the MPEG frame chain")
    assert skipped["gone.flac"] == ("scan", f"dangling symlink (target {tmp_path / 'unmounted' / 'gone.flac'} "
                                            "does not exist)")
