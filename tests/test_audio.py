"""Tests for data_prep.audio: decoding of real files of every kind, resampling, bad input, segmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from data_prep.audio import (
    TARGET_SR,
    AudioError,
    AudioInfo,
    decode_bytes,
    encode_flac,
    load_audio,
    probe,
    resample,
    segment_bounds,
)

FORMATS = [  # (extension, libsndfile format, subtype)
    ("wav", "WAV", "PCM_16"),
    ("wav", "WAV", "PCM_24"),
    ("wav", "WAV", "FLOAT"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
    ("aiff", "AIFF", "PCM_16"),
    ("wav", "RF64", "PCM_16"),
]


def _sine(freq: float, sr: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return x.astype(np.float32)
    # Different content per channel so a wrong downmix (e.g. taking channel 0) is visible.
    return np.stack([x * (1.0 - 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _peak_freq(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ext,fmt,subtype", FORMATS)
@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000, 8000])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_rate_and_channel_count_decodes_to_16k_mono(tmp_path, ext, fmt, subtype, sr, channels):
    seconds = 1.3
    path = tmp_path / f"x.{ext}"
    sf.write(path, _sine(440.0, sr, seconds, channels), sr, format=fmt, subtype=subtype)

    info = probe(path)
    assert info == AudioInfo(frames=round(seconds * sr), sample_rate=sr, channels=channels, format=fmt)
    assert info.duration_s == pytest.approx(seconds, abs=1 / sr)

    wave, orig_sr = load_audio(path)
    assert orig_sr == sr
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == math.ceil(round(seconds * sr) * TARGET_SR / sr)
    assert _peak_freq(wave, TARGET_SR) == pytest.approx(440.0, abs=1.5)
    # Downmix is the channel mean: amplitude 0.5 for mono, (0.5 + 0.25) / 2 for stereo.
    expected_amp = 0.5 if channels == 1 else 0.375
    mid = wave[len(wave) // 4 : 3 * len(wave) // 4]
    lossy = ext in ("ogg", "mp3")  # (MP3 at 8 kHz is coarse: peaks off by up to ~10%)
    assert np.abs(mid).max() == pytest.approx(expected_amp, rel=0.15 if lossy else 0.03)


def test_mono_downmix_is_the_mean_of_channels(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.uniform(-0.5, 0.5, size=(1600, 3))).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, data, TARGET_SR, subtype="FLOAT")
    wave, sr = load_audio(path)
    assert sr == TARGET_SR
    np.testing.assert_allclose(wave, data.mean(axis=1), atol=1e-7)


def test_windowed_read_returns_exactly_that_window(tmp_path):
    sr = 22050
    # A ramp makes every sample position identifiable.
    ramp = (np.arange(3 * sr) / (3 * sr) - 0.5).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, sr, subtype="FLOAT")
    w, _ = load_audio(path, target_sr=sr, offset_s=1.0, duration_s=0.5)
    np.testing.assert_array_equal(w, ramp[sr : sr + sr // 2])
    # Window running past the end is clamped; resampled window has the resampled length.
    w2, _ = load_audio(path, offset_s=2.5, duration_s=10.0)
    assert len(w2) == math.ceil((3 * sr - round(2.5 * sr)) * TARGET_SR / sr)
    # The window of a resampled read matches the same window of the full read (away from its edges).
    full, _ = load_audio(path)
    w3, _ = load_audio(path, offset_s=1.0, duration_s=1.0)
    np.testing.assert_allclose(w3[200:-200], full[16000 + 200 : 32000 - 200], atol=2e-3)
    with pytest.raises(AudioError, match="past the end"):
        load_audio(path, offset_s=5.0, duration_s=1.0)
    with pytest.raises(ValueError):
        load_audio(path, offset_s=-1.0)


def test_resampling_puts_a_1khz_sine_at_1khz():
    sr = 44100
    x = _sine(1000.0, sr, 2.0)
    y = resample(x, sr, TARGET_SR)
    assert len(y) == math.ceil(len(x) * TARGET_SR / sr)
    assert _peak_freq(y, TARGET_SR) == pytest.approx(1000.0, abs=0.6)
    mid = y[2000:-2000]
    assert np.sqrt(2) * mid.std() == pytest.approx(0.5, rel=0.01)  # passband gain ~1


def _naive_kaiser_sinc_resample(x: np.ndarray, orig: int, new: int, width: int, rolloff: float, beta: float,
                                outputs: np.ndarray) -> np.ndarray:
    """Band-limited interpolation written from the equations: y(t) = sum_k x[k] h(t - k/orig), with
    h the ideal low-pass (cutoff rolloff * min(orig, new) / 2) truncated to ``width`` zero crossings by a
    Kaiser window, evaluated at t = n / new for the output indices ``outputs``."""
    fc = min(orig, new) * rolloff  # the sinc's zero crossings are 1 / fc apart
    k = np.arange(len(x))
    out = np.empty(len(outputs))
    for i, n in enumerate(outputs):
        u = (k / orig - n / new) * fc  # time in units of zero crossings
        inside = np.abs(u) <= width
        win = np.i0(beta * np.sqrt(np.clip(1 - (u[inside] / width) ** 2, 0, None))) / np.i0(beta)
        out[i] = np.sum(x[inside] * np.sinc(u[inside]) * win) * fc / orig
    return out


@pytest.mark.timeout(60)
def test_resampler_is_the_documented_kaiser_windowed_sinc():
    from data_prep.audio import RESAMPLE_KWARGS as kw

    rng = np.random.default_rng(1)
    for orig in (22050, 44100, 8000):
        x = rng.standard_normal(orig // 10)
        got = resample(x.astype(np.float32), orig, TARGET_SR)
        assert len(got) == math.ceil(len(x) * TARGET_SR / orig)
        outputs = np.r_[0:20, np.linspace(20, len(got) - 21, 40).astype(int), len(got) - 20 : len(got)]
        ref = _naive_kaiser_sinc_resample(x, orig, TARGET_SR, kw["lowpass_filter_width"], kw["rolloff"],
                                          kw["beta"], outputs)
        np.testing.assert_allclose(got[outputs], ref, atol=2e-4)


def test_resampling_rejects_content_above_the_new_nyquist():
    # A 9 kHz tone at 44.1 kHz would alias to 7 kHz at 16 kHz; the anti-alias filter must remove it.
    sr = 44100
    y = resample(_sine(9000.0, sr, 1.0), sr, TARGET_SR)[1000:-1000]
    assert 20 * np.log10(np.sqrt(2) * y.std() / 0.5) < -45


def test_same_rate_is_passthrough():
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    np.testing.assert_array_equal(resample(x, TARGET_SR, TARGET_SR), x)


# --- bad input ----------------------------------------------------------------------------------


def _write_bad(kind: str, path_dir) -> tuple:
    sr = 44100
    if kind == "empty":
        p = path_dir / "empty.wav"
        p.write_bytes(b"")
        return p, "empty file"
    if kind == "zero_length":
        p = path_dir / "zero.wav"
        sf.write(p, np.zeros((0, 1), np.float32), sr)
        return p, "zero-length"
    if kind == "random_bytes":
        p = path_dir / "noise.wav"
        p.write_bytes(np.random.default_rng(0).bytes(4000))
        return p, "not audio"
    if kind == "text":
        p = path_dir / "readme.flac"
        p.write_text("this is not a flac file\n" * 20)
        return p, "not audio"
    if kind == "truncated_flac":
        full = path_dir / "full.flac"
        sf.write(full, np.random.default_rng(0).uniform(-0.5, 0.5, sr * 2).astype(np.float32), sr)
        p = path_dir / "cut.flac"
        p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return p, "truncated"
    if kind == "truncated_mp3":
        full = path_dir / "full.mp3"
        sf.write(full, _sine(440, sr, 3.0), sr)
        p = path_dir / "cut.mp3"
        p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return p, "truncated"
    if kind in ("nan", "inf"):
        x = _sine(440, sr, 0.5)
        x[1234] = np.nan if kind == "nan" else np.inf
        p = path_dir / f"{kind}.wav"
        sf.write(p, x, sr, subtype="FLOAT")
        return p, "NaN/inf samples"
    if kind == "missing":
        return path_dir / "nope.wav", "file not found"
    if kind == "directory":
        p = path_dir / "dir.wav"
        p.mkdir()
        return p, "directory"
    raise AssertionError(kind)


BAD_KINDS = ["empty", "zero_length", "random_bytes", "text", "truncated_flac", "truncated_mp3", "nan", "inf",
             "missing", "directory"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_raises_audio_error_with_reason(tmp_path, kind):
    path, reason = _write_bad(kind, tmp_path)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    assert reason in str(excinfo.value)
    assert len(str(excinfo.value)) < 200


@pytest.mark.parametrize("kind", ["empty", "zero_length", "random_bytes", "missing"])
def test_probe_rejects_header_level_problems(tmp_path, kind):
    path, reason = _write_bad(kind, tmp_path)
    with pytest.raises(AudioError, match=reason):
        probe(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("RF64", "PCM_24"), ("AIFF", "PCM_16")])
def test_a_wav_or_aiff_cut_short_is_truncated_not_a_shorter_clip(tmp_path, fmt, subtype):
    full = tmp_path / "full.x"
    sf.write(full, _sine(440, 16000, 2.0), 16000, format=fmt, subtype=subtype)
    cut = tmp_path / "cut.x"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert sf.info(str(cut)).frames < 16000  # libsndfile alone would decode it as a 1 s clip
    with pytest.raises(AudioError, match=r"truncated: the (WAV data|AIFF SSND) chunk holds \d+ of the \d+ bytes"):
        probe(cut)
    with pytest.raises(AudioError, match="truncated"):
        load_audio(cut)
    assert probe(full).frames == 32000
    # A chunk after the audio (metadata) may be cut without losing audio: still a good file.
    tail = tmp_path / "tail.x"
    tail.write_bytes(full.read_bytes() + (b"LIST" if fmt != "AIFF" else b"ANNO") + (100).to_bytes(4, "little"))
    assert probe(tail).frames == 32000


def _mp3(tmp_path, seconds: float = 4.0, sr: int = 16000):
    path = tmp_path / "full.mp3"
    sf.write(path, _sine(440, sr, seconds), sr, format="MP3")
    return path, path.read_bytes()


@pytest.mark.timeout(30)
def test_a_garbled_mp3_is_detected_though_it_decodes_almost_whole(tmp_path):
    full, data = _mp3(tmp_path)
    garbled = tmp_path / "garbled.mp3"
    at = len(data) // 3
    garbled.write_bytes(data[:at] + bytes(40) + data[at + 40 :])  # a few bytes lost in transfer
    frames = len(sf.read(str(garbled))[0])
    # mpg123 resyncs and drops a frame or two: within the slack the decoded-length check allows an MP3
    assert 64000 - 2 * 1152 < frames < 64000
    with pytest.raises(AudioError, match=r"garbled: the MPEG frame chain breaks at byte \d+"):
        probe(garbled)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2 + 5])
    with pytest.raises(AudioError, match="truncated|garbled"):
        probe(cut)
    tagged = tmp_path / "tagged.mp3"  # ID3v2 before and ID3v1 after the frames: still whole
    id3v2 = b"ID3\x03\x00\x00" + bytes([0, 0, 0, 20]) + bytes(20)
    tagged.write_bytes(id3v2 + data + b"TAG" + bytes(125))
    assert probe(tagged).frames == probe(full).frames == 64000


def test_decode_bytes_rejects_bad_bytes():
    with pytest.raises(AudioError, match="empty"):
        decode_bytes(b"")
    with pytest.raises(AudioError, match="not audio"):
        decode_bytes(b"RIFF" + bytes(100))


# --- segmentation -------------------------------------------------------------------------------


def test_segment_bounds_whole_file():
    assert segment_bounds(7.3, None, 1.0) == [(0.0, 7.3)]
    assert segment_bounds(0.5, None, 1.0) == []
    assert segment_bounds(0.5, None, 0.0) == [(0.0, 0.5)]
    assert segment_bounds(0.0, None, 0.0) == []


def test_segment_bounds_tail_policy():
    # 25 s in 10 s clips: two full clips, a 5 s tail kept (≥ min 2 s).
    assert segment_bounds(25.0, 10.0, 2.0) == [(0.0, 10.0), (10.0, 10.0), (20.0, 5.0)]
    # 21 s: 1 s tail < min 2 s is dropped.
    assert segment_bounds(21.0, 10.0, 2.0) == [(0.0, 10.0), (10.0, 10.0)]
    # Exact multiple (with float noise): no empty tail.
    assert segment_bounds(0.3 * 10, 0.3, 0.0) == [(pytest.approx(i * 0.3), 0.3) for i in range(10)]
    # Shorter than one clip: the file is the tail.
    assert segment_bounds(4.0, 10.0, 2.0) == [(0.0, 4.0)]
    assert segment_bounds(1.0, 10.0, 2.0) == []
    # Tail exactly min_seconds is kept.
    assert segment_bounds(12.0, 10.0, 2.0)[-1] == (10.0, pytest.approx(2.0))
    # Clips never overlap and never run past the end.
    b = segment_bounds(123.456, 7.0, 1.0)
    for (o1, d1), (o2, _) in zip(b, b[1:]):
        assert o1 + d1 == pytest.approx(o2)
    assert b[-1][0] + b[-1][1] == pytest.approx(123.456)
    with pytest.raises(ValueError):
        segment_bounds(10.0, 0.0, 1.0)


def test_segments_read_back_cover_the_file(tmp_path):
    sr = 16000
    x = np.random.default_rng(2).uniform(-0.5, 0.5, int(5.5 * sr)).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, x, sr, subtype="PCM_24")
    parts = [load_audio(path, offset_s=o, duration_s=d)[0] for o, d in segment_bounds(5.5, 2.0, 1.0)]
    assert [len(p) for p in parts] == [32000, 32000, 24000]
    np.testing.assert_allclose(np.concatenate(parts), x, atol=1e-6)


# --- encode / decode ----------------------------------------------------------------------------


def test_encode_flac_round_trip_within_pcm16_precision():
    x = np.random.default_rng(3).uniform(-1, 1, 16000).astype(np.float32)
    data = encode_flac(x)
    assert data[:4] == b"fLaC"
    info = sf.info(__import__("io").BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
    y, sr = decode_bytes(data)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=2.0 / 32768)


def test_encode_flac_clips_and_is_deterministic():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0], dtype=np.float32)
    y, _ = decode_bytes(encode_flac(x, sample_rate=8000))
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=2.0 / 32768)
    assert encode_flac(x) == encode_flac(x.copy())
    with pytest.raises(ValueError):
        encode_flac(np.zeros((10, 2), np.float32))


def test_decode_bytes_reads_wav_and_downmixes():
    import io

    buf = io.BytesIO()
    sf.write(buf, np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1).astype(np.float32), 22050,
             format="WAV", subtype="FLOAT")
    y, sr = decode_bytes(buf.getvalue())
    assert sr == 22050
    np.testing.assert_allclose(y, np.full(100, 0.125, np.float32))
