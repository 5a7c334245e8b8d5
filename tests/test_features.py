"""Features: batched fbank vs torchaudio's kaldi.fbank and a naive float64 version from the equations;
normalization, pad/crop, running statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain import features as F
from pretrain.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    FeatureConfig,
    Normalization,
    fbank,
    fbank_reference,
    normalize,
    pad_or_crop,
)
from pretrain.stats import RunningStats

pytestmark = pytest.mark.timeout(60)

TOL = 1e-3  # the contract: max abs error vs torchaudio.compliance.kaldi.fbank
LOG_FLOOR = math.log(torch.finfo(torch.float32).eps)


def _max_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max()) if ref.numel() else 0.0


def _tone_noise(num_samples: int, seed: int = 0, sr: int = 16000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / sr
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 3100 * t + 1.0)
    wave += 0.02 * torch.randn(num_samples, generator=g, dtype=torch.float64)
    return (wave + 0.05).float()  # + a DC offset, which both clip-mean and per-frame DC removal see


@pytest.fixture(params=["per-clip chunks (CPU path)", "whole-batch kernels (accelerator path)"])
def path(request, monkeypatch):
    """Run each fbank test through both code paths; the accelerator one is forced on CPU."""
    if request.param.startswith("whole"):
        monkeypatch.setattr(F, "_small_chunks", lambda device: False)
    return request.param


# ------------------------------------------------------------------------------------------------
# parity with torchaudio


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 1234, 16000, 16123, 48017])
def test_matches_kaldi_on_random_audio(path, num_samples):
    wave = torch.randn(num_samples, generator=torch.Generator().manual_seed(num_samples)) * 0.1
    ours, num_frames = fbank(wave)
    ref = fbank_reference(wave)
    assert ours.shape == (1, ref.shape[0], 128)
    assert num_frames.tolist() == [ref.shape[0]] == [1 + (num_samples - 400) // 160]
    assert _max_err(ours[0], ref) <= TOL


def test_ten_second_clip_matches_kaldi(path):
    wave = torch.randn(160000, generator=torch.Generator().manual_seed(1)) * 0.2
    ours, num_frames = fbank(wave)
    assert ours.shape == (1, 998, 128) and num_frames.tolist() == [998]  # SSAST: 10 s -> 998 frames
    assert _max_err(ours[0], fbank_reference(wave)) <= TOL


@pytest.mark.parametrize("num_samples", [0, 1, 399])
def test_shorter_than_one_frame_gives_no_frames(path, num_samples):
    ours, num_frames = fbank(torch.randn(num_samples))
    assert ours.shape == (1, 0, 128) and num_frames.tolist() == [0]
    assert fbank_reference(torch.randn(num_samples)).shape == (0, 128)


def test_padded_batch_matches_each_clip_and_zeros_padding(path):
    lengths = [16000, 399, 5000, 16000 - 37, 400, 8123]
    g = torch.Generator().manual_seed(3)
    # Padding is noise, not zeros: nothing of it may reach the real frames or the clip mean.
    waves = torch.randn(len(lengths), max(lengths), generator=g) * 0.5
    clips = [torch.randn(n, generator=g) * 0.1 + 0.01 * i for i, n in enumerate(lengths)]
    for i, clip in enumerate(clips):
        waves[i, : len(clip)] = clip
    ours, num_frames = fbank(waves, torch.tensor(lengths), max_chunk_frames=200)  # several chunks
    assert ours.shape == (len(lengths), 98, 128)
    assert num_frames.tolist() == [F.FeatureConfig().num_frames(n) for n in lengths] == [98, 0, 29, 98, 1, 49]
    for i, clip in enumerate(clips):
        n = int(num_frames[i])
        assert _max_err(ours[i, :n], fbank_reference(clip)) <= TOL
        assert torch.all(ours[i, n:] == 0.0)


def test_tone_and_noise_matches_kaldi(path):
    wave = _tone_noise(24000)
    assert _max_err(fbank(wave)[0][0], fbank_reference(wave)) <= TOL


@pytest.mark.parametrize("subtract_clip_mean", [True, False])
def test_exact_digital_silence_hits_the_log_floor(path, subtract_clip_mean):
    config = FeatureConfig(subtract_clip_mean=subtract_clip_mean)
    silence = torch.zeros(4000)
    ours = fbank(silence, config=config)[0][0]
    ref = fbank_reference(silence, config)
    assert torch.all(ref == LOG_FLOOR)  # what kaldi does: every mel energy floored at float eps
    assert torch.all(ours == LOG_FLOOR)


@pytest.mark.parametrize("subtract_clip_mean", [True, False])
def test_silence_segments_inside_a_clip(path, subtract_clip_mean):
    config = FeatureConfig(subtract_clip_mean=subtract_clip_mean)
    wave = _tone_noise(20000, seed=5)
    wave[3000:9000] = 0.0  # exact digital silence (a constant after clip-mean subtraction)
    wave[15000:] = 0.0
    ours = fbank(wave, config=config)[0][0]
    ref = fbank_reference(wave, config)
    assert _max_err(ours, ref) <= TOL
    silent_frame = 30  # samples 4800..5200, inside the first silent stretch
    if not subtract_clip_mean:
        assert torch.all(ours[silent_frame] == LOG_FLOOR)
    assert float(ours[silent_frame].max()) < -10.0  # far below the tone frames
    assert float(ours[5].max()) > 0.0


def test_input_that_requires_grad_is_accepted():
    wave = (torch.randn(2000) * 0.1).requires_grad_()
    ours, _ = fbank(wave)
    assert not ours.requires_grad and _max_err(ours[0], fbank_reference(wave.detach())) <= TOL


def test_int16_and_float64_input_are_computed_in_float32(path):
    ints = (torch.randn(8000, generator=torch.Generator().manual_seed(9)) * 3000).to(torch.int16)
    ref = fbank_reference(ints.float())
    for wave in (ints, ints.double()):
        ours, _ = fbank(wave)
        assert ours.dtype == torch.float32
        assert _max_err(ours[0], ref) <= TOL


@pytest.mark.parametrize(
    "config",
    [
        FeatureConfig(subtract_clip_mean=False),
        FeatureConfig(window_type="hamming", num_mel_bins=80),
        FeatureConfig(window_type="povey", preemphasis_coefficient=0.0, remove_dc_offset=False),
        FeatureConfig(sample_rate=8000, num_mel_bins=40, low_freq=64.0, high_freq=-200.0),
        FeatureConfig(sample_rate=11025, window_type="blackman"),  # 275.6 samples/frame: truncated
    ],
    ids=["no-clip-mean", "hamming-80", "povey-plain", "8k-40", "11025-blackman"],
)
def test_other_configs_match_kaldi(config):
    wave = _tone_noise(12000, seed=2, sr=config.sample_rate)
    ours, num_frames = fbank(wave, config=config)
    ref = fbank_reference(wave, config)
    assert ours.shape == (1, ref.shape[0], config.num_mel_bins) and num_frames.tolist() == [ref.shape[0]]
    assert _max_err(ours[0], ref) <= TOL


# ------------------------------------------------------------------------------------------------
# an independent oracle: float64 numpy straight from Kaldi's equations


def _naive_kaldi_fbank(wave: np.ndarray, sr=16000, n_mels=128, low=20.0, coeff=0.97) -> np.ndarray:
    wave = wave.astype(np.float64)
    wave = wave - wave.mean()  # SSAST's clip mean
    length, shift, n_fft = int(sr * 0.025), int(sr * 0.010), 512
    num_frames = 1 + (len(wave) - length) // shift
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    mel_low, mel_high = mel(low), mel(sr / 2)
    delta = (mel_high - mel_low) / (n_mels + 1)
    weights = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
        for k in range(n_fft // 2):  # the Nyquist bin keeps weight 0
            z = mel(k * sr / n_fft)
            if left < z <= center:
                weights[k, m] = (z - left) / (center - left)
            elif center < z < right:
                weights[k, m] = (right - z) / (right - center)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))
    out = np.empty((num_frames, n_mels))
    for t in range(num_frames):
        frame = wave[t * shift : t * shift + length].copy()
        frame -= frame.mean()
        emphasized = frame - coeff * np.concatenate([frame[:1], frame[:-1]])
        spectrum = np.fft.rfft(emphasized * window, n=n_fft)
        out[t] = np.log(np.maximum(np.abs(spectrum) ** 2 @ weights, np.finfo(np.float32).eps))
    return out


def test_matches_naive_float64_kaldi_from_the_equations():
    wave = _tone_noise(8000, seed=4)
    naive = torch.from_numpy(_naive_kaldi_fbank(wave.numpy())).float()
    # float32 vs float64 rounding: a few 1e-4 in the weakest (pre-emphasis-attenuated) bands.
    assert _max_err(fbank(wave)[0][0], naive) <= 2e-3
    assert _max_err(fbank_reference(wave), naive) <= 2e-3


def test_mel_matrix_matches_the_equations():
    naive = torch.from_numpy(_naive_mel_weights()).float()
    ours = F.mel_matrix(FeatureConfig())
    assert ours.shape == (257, 128)
    assert float((ours - naive).abs().max()) < 1e-4
    assert torch.all(ours[-1] == 0) and torch.all(ours >= 0)


def _naive_mel_weights() -> np.ndarray:
    sr, n_mels, n_fft = 16000, 128, 512
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    mel_low, mel_high = mel(20.0), mel(8000.0)
    delta = (mel_high - mel_low) / (n_mels + 1)
    z = mel(np.arange(n_fft // 2) * sr / n_fft)[:, None]
    m = np.arange(n_mels)[None, :]
    left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    w = np.maximum(0, np.minimum((z - left) / (center - left), (right - z) / (right - center)))
    return np.concatenate([w, np.zeros((1, n_mels))])


# ------------------------------------------------------------------------------------------------
# config, normalization, pad/crop, stats


def test_feature_config_round_trip_and_strict_keys():
    config = FeatureConfig(num_mel_bins=80, subtract_clip_mean=False)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    assert Normalization.from_dict(Normalization(1.0, 2.0).to_dict()) == Normalization(1.0, 2.0)
    with pytest.raises(ValueError, match="num_mel_bin.*valid keys"):
        FeatureConfig.from_dict({"num_mel_bin": 64})
    with pytest.raises(ValueError, match="window_type='hann'"):
        fbank(torch.randn(1000), config=FeatureConfig(window_type="hann"))
    with pytest.raises(ValueError, match="lengths must be in"):
        fbank(torch.randn(2, 1000), torch.tensor([1000, 1001]))


def test_normalize():
    x = torch.tensor([[AUDIOSET_MEAN, 0.0, AUDIOSET_MEAN + 2 * AUDIOSET_STD]])
    y = normalize(x, Normalization())
    assert torch.allclose(y, torch.tensor([[0.0, -AUDIOSET_MEAN / (2 * AUDIOSET_STD), 1.0]]))
    assert math.isclose(float(y[0, 1]), 0.467, abs_tol=1e-3)  # where zero padding lands (SSAST)


def _ramp(batch: int, frames: int, bins: int, num_frames: list[int]) -> torch.Tensor:
    """Frame t of clip b holds 1000 * b + t + 1 (never 0), padding frames are 0."""
    x = torch.arange(frames, dtype=torch.float32)[None, :, None] + 1
    x = x + 1000 * torch.arange(batch)[:, None, None]
    x = x.expand(batch, frames, bins).clone()
    x[torch.arange(frames) >= torch.tensor(num_frames)[:, None]] = 0
    return x


def test_pad_or_crop_start_center_and_pad():
    num_frames = [50, 20, 30]
    x = _ramp(3, 50, 4, num_frames)
    out, n = pad_or_crop(x, torch.tensor(num_frames), 30, crop="start")
    assert out.shape == (3, 30, 4) and n.tolist() == [30, 20, 30]
    assert torch.equal(out[0], x[0, :30]) and torch.equal(out[1, :20], x[1, :20])
    assert torch.all(out[1, 20:] == 0)
    out, n = pad_or_crop(x, torch.tensor(num_frames), 30, crop="center")
    assert torch.equal(out[0], x[0, 10:40]) and n.tolist() == [30, 20, 30]
    out, n = pad_or_crop(x, torch.tensor(num_frames), 64, crop="random")  # longer target: pad only
    assert out.shape == (3, 64, 4) and n.tolist() == num_frames
    assert torch.equal(out[:, :50], x) and torch.all(out[:, 50:] == 0)


def test_random_crop_is_deterministic_and_stays_in_real_frames():
    num_frames = [100, 40, 100, 70]
    x = _ramp(4, 100, 2, num_frames)
    target = 40

    def crop(seed):
        return pad_or_crop(x, torch.tensor(num_frames), target, generator=torch.Generator().manual_seed(seed))

    a, na = crop(0)
    b, _ = crop(0)
    assert torch.equal(a, b) and na.tolist() == [40, 40, 40, 40]
    starts = set()
    for seed in range(20):
        out, _ = crop(seed)
        for i, n in enumerate(num_frames):
            first = int(out[i, 0, 0]) - 1000 * i - 1
            assert 0 <= first <= n - target
            assert torch.equal(out[i], x[i, first : first + target])  # contiguous real frames
            if i == 0:
                starts.add(first)
    assert len(starts) > 5  # it really is random across seeds
    with pytest.raises(ValueError, match="crop='middle'"):
        pad_or_crop(x, torch.tensor(num_frames), target, crop="middle")
    with pytest.raises(ValueError, match="num_frames must be in"):
        pad_or_crop(x, torch.tensor([101, 0, 0, 0]), target)


def test_running_stats_match_numpy_and_merge():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 30, 8, generator=g) * 3 - 4
    num_frames = torch.tensor([30, 0, 12, 30, 5, 29])
    x[torch.arange(30) >= num_frames[:, None]] = 0.0  # padding, which must not count
    real = np.concatenate([x[i, :n].numpy().ravel() for i, n in enumerate(num_frames.tolist())])
    real = real.astype(np.float64)

    whole = RunningStats().update(x, num_frames)
    assert whole.count == real.size
    assert math.isclose(whole.mean, real.mean(), rel_tol=1e-9)
    assert math.isclose(whole.std, real.std(), rel_tol=1e-9)

    halves = RunningStats().update(x[:3], num_frames[:3]).merge(RunningStats().update(x[3:], num_frames[3:]))
    assert halves.count == whole.count
    assert math.isclose(halves.mean, whole.mean, rel_tol=1e-12)
    assert math.isclose(halves.std, whole.std, rel_tol=1e-12)
    again = RunningStats.from_tensor(halves.to_tensor())
    assert (again.mean, again.std, again.count) == (halves.mean, halves.std, halves.count)
    assert again.normalization() == Normalization(mean=halves.mean, std=halves.std)
    with pytest.raises(ValueError, match="no values"):
        _ = RunningStats().mean


def test_stats_of_real_fbanks_ignore_padding():
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    feats, num_frames = fbank(waves, torch.tensor([8000, 3000]))
    stats = RunningStats().update(feats, num_frames)
    real = torch.cat([feats[0, : num_frames[0]], feats[1, : num_frames[1]]]).double()
    assert math.isclose(stats.mean, float(real.mean()), rel_tol=1e-9)
    assert math.isclose(stats.std, float(real.std(unbiased=False)), rel_tol=1e-9)


def test_demo_corpus_clips_match_kaldi_in_a_padded_batch():
    synth = pytest.importorskip("data_prep.synth")
    clips = []
    for index in range(6):
        # The samples are taken as 16 kHz whatever their rate (resampling 44.1 kHz costs ~0.5 s a
        # clip here): what matters is realistic content, with its quiet and loud stretches.
        _, samples = synth.render_clip(index, seed=0)
        clips.append(torch.from_numpy(samples[: 3 * 16000, 0].copy()))
    lengths = torch.tensor([len(c) for c in clips])
    waves = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    ours, num_frames = fbank(waves, lengths)
    for i, clip in enumerate(clips):
        ref = fbank_reference(clip)
        assert int(num_frames[i]) == ref.shape[0]
        assert _max_err(ours[i, : ref.shape[0]], ref) <= TOL
        assert torch.all(ours[i, ref.shape[0] :] == 0)
