"""Tests for data_prep.synth: the demo corpus on disk, its manifest, splits, determinism and the sounds."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import find_peaks

from data_prep import synth
from data_prep.audio import TARGET_SR, load_audio, probe

CLIPS = 24


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "labels", "split"]
        return list(reader)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "demo"
    manifest = synth.synthesize(out, clips=CLIPS, seed=0, progress=False)
    assert manifest == out / "manifest.csv"
    return out


@pytest.mark.timeout(120)
def test_manifest_matches_files(corpus):
    rows = _read_manifest(corpus / "manifest.csv")
    assert len(rows) == CLIPS
    on_disk = {str(p.relative_to(corpus)) for p in (corpus / "audio").rglob("*") if p.is_file()}
    assert {r["path"] for r in rows} == on_disk  # no temporary files left, nothing missing
    for r in rows:
        # audio/<label>/<index>.<ext>, label in the manifest = folder name
        parts = r["path"].split("/")
        assert parts[0] == "audio" and parts[1] == r["labels"] and r["labels"] in synth.CLASSES
        assert r["split"] in synth.SPLITS


def test_classes_formats_rates_channels_are_mixed(corpus):
    rows = _read_manifest(corpus / "manifest.csv")
    assert len(synth.CLASSES) >= 10
    assert len({r["labels"] for r in rows}) >= 10
    infos = [sf.info(corpus / r["path"]) for r in rows]
    assert {Path(r["path"]).suffix for r in rows} == {".wav", ".flac", ".ogg"}
    assert {i.samplerate for i in infos} == set(synth.SAMPLE_RATES)
    assert {i.channels for i in infos} == {1, 2}
    assert {r["split"] for r in rows} == set(synth.SPLITS)


def test_every_file_is_valid_1_to_10_s_and_below_peak(corpus):
    for r in _read_manifest(corpus / "manifest.csv"):
        path = corpus / r["path"]
        info = probe(path)
        assert 1.0 - 1e-3 <= info.duration_s <= 10.0 + 1e-3, (path, info)
        data, _ = sf.read(path, dtype="float32", always_2d=True)
        assert np.isfinite(data).all()
        assert np.abs(data).max() <= synth.MAX_PEAK, path
        assert np.abs(data).max() > 0.01, path  # not silent
        # The whole pipeline's decoder takes it: 16 kHz mono of the right length.
        wave, sr = load_audio(path)
        assert sr == info.sample_rate and wave.ndim == 1
        assert len(wave) / TARGET_SR == pytest.approx(info.duration_s, abs=1e-3)


@pytest.mark.timeout(120)
def test_same_seed_same_bytes_other_seed_different(corpus, tmp_path):
    again = synth.synthesize(tmp_path / "again", clips=CLIPS, seed=0, progress=False, workers=2).parent
    assert _tree_digest(again) == _tree_digest(corpus)  # the same bytes with 2 rendering processes
    # A rerun leaves identical files alone: their mtimes (recorded by the shard plan) do not move.
    mtimes = {p: p.stat().st_mtime_ns for p in again.rglob("*.*") if p.name != "manifest.csv"}
    synth.synthesize(again, clips=CLIPS, seed=0, progress=False)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    other = synth.synthesize(tmp_path / "other", clips=6, seed=1, progress=False).parent
    first6 = {p for p in _tree_digest(corpus) if p.startswith("audio/") and int(Path(p).stem) < 6}
    assert _tree_digest(other) != {k: v for k, v in _tree_digest(corpus).items() if k in first6}
    # Same clip index, other seed: other samples.
    _, a = synth.render_clip(3, seed=0)
    _, b = synth.render_clip(3, seed=1)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_clip_is_independent_of_corpus_size():
    # Per-clip generators seeded from (seed, index): clip 5 is the same whatever --clips is.
    plan_a, a = synth.render_clip(5, seed=7)
    plan_b, b = synth.render_clip(5, seed=7)
    assert plan_a == plan_b and np.array_equal(a, b)


@pytest.mark.timeout(60)
def test_rerun_with_fewer_clips_removes_stale_files(tmp_path):
    out = tmp_path / "c"
    synth.synthesize(out, clips=8, seed=0, progress=False)
    (out / "notes.txt").write_text("user file")
    synth.synthesize(out, clips=3, seed=0, progress=False)
    rows = _read_manifest(out / "manifest.csv")
    assert len(rows) == 3
    assert {str(p.relative_to(out)) for p in (out / "audio").rglob("*") if p.is_file()} == {r["path"] for r in rows}
    assert (out / "notes.txt").read_text() == "user file"  # only files a manifest listed are removed


def test_bad_clip_count():
    with pytest.raises(ValueError, match="clips"):
        synth.synthesize("/nonexistent-never-created", clips=0)


def test_splits_are_70_15_15_and_stratified():
    labels = [synth.CLASSES[i % len(synth.CLASSES)] for i in range(600)]  # 50 per class
    splits = synth.assign_splits(labels, seed=0)
    total = Counter(splits)
    assert total["train"] == pytest.approx(420, abs=12)
    assert total["valid"] == pytest.approx(90, abs=12)
    assert total["test"] == pytest.approx(90, abs=12)
    for label in synth.CLASSES:
        per = Counter(s for s, lab in zip(splits, labels) if lab == label)
        assert per["train"] == pytest.approx(35, abs=2) and per["valid"] == pytest.approx(7.5, abs=2)
        assert per["test"] == pytest.approx(7.5, abs=2)
    assert synth.assign_splits(labels, seed=0) == splits
    assert synth.assign_splits(labels, seed=1) != splits


# --- Ogg determinism ----------------------------------------------------------------------------


def _ogg_crc_bitwise(data: bytes) -> int:
    """Ogg CRC-32 from its definition: polynomial 0x04C11DB7, MSB first, initial value 0, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
    return crc


def test_ogg_crc_matches_the_bitwise_definition():
    for data in (b"", b"OggS", bytes(range(256)), np.random.default_rng(0).bytes(300)):
        assert synth._ogg_crc(data) == _ogg_crc_bitwise(data)


def test_ogg_serial_rewrite_keeps_the_audio():
    x = (0.3 * np.sin(np.arange(30000) * 0.05)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 22050, format="OGG", subtype="VORBIS")
    original = buf.getvalue()
    fixed = synth.set_ogg_serial(original, 0x12345678)
    assert fixed[14:18] == (0x12345678).to_bytes(4, "little")
    assert len(fixed) == len(original)
    # libogg rejects pages with a wrong CRC, so decoding to the same samples proves the CRCs are right.
    a, _ = sf.read(io.BytesIO(original), dtype="float32")
    b, _ = sf.read(io.BytesIO(fixed), dtype="float32")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Ogg page"):
        synth.set_ogg_serial(b"RIFF" + bytes(40), 1)


# --- the sounds themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("label", synth.CLASSES)
def test_each_generator_is_silent_before_its_region_and_audible_in_it(label):
    rng = np.random.default_rng(0)
    sr, n, lo, hi = 16000, 48000, 8000, 40000
    x = synth._GENERATORS[label](rng, n, sr, lo, hi)
    assert x.shape == (n,) and np.isfinite(x).all()
    assert np.abs(x[:lo]).max() < 1e-9  # (FFT convolution leaves ~1e-17)
    assert np.sqrt(np.mean(x[lo:hi] ** 2)) > 1e-3


def _dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


@pytest.mark.parametrize("seed", range(5))
def test_chirps_go_the_right_way(seed):
    sr, n = 16000, 32000
    for label, sign in (("chirp_up", 1), ("chirp_down", -1)):
        x = synth._GENERATORS[label](np.random.default_rng(seed), n, sr, 0, n)
        # First sweep's start vs end (the first sweep occupies at least the first 0.2 s).
        start, end = _dominant_freq(x[:1600], sr), _dominant_freq(x[1600:3200], sr)
        assert sign * (end - start) > 0, (label, start, end)


def test_click_train_is_periodic_and_crackle_is_not():
    sr, n = 16000, 64000

    def ioi_cv(label: str, seed: int) -> float:
        x = synth._GENERATORS[label](np.random.default_rng(seed), n, sr, 0, n)
        env = np.convolve(np.abs(x), np.ones(40) / 40, mode="same")  # 2.5 ms: ≥ 2 cycles of the resonance
        # Clicks are ≥ 16.7 ms apart in a train (≤ 60 Hz): peaks closer than 8 ms belong to one click.
        peaks, _ = find_peaks(env, prominence=0.02 * env.max(), distance=int(0.008 * sr))
        assert len(peaks) >= 5, (label, seed, len(peaks))
        iois = np.diff(peaks)
        return float(iois.std() / iois.mean())

    train = [ioi_cv("click_train", s) for s in range(4)]
    crackle = [ioi_cv("crackle", s) for s in range(4)]
    assert max(train) < 0.1, train
    assert min(crackle) > 0.25, crackle  # Poisson: ~1, less after merging clicks < 8 ms apart
