"""Kaldi-compatible log-mel filterbank features (SSAST/AST settings), batched, and normalization.

``fbank`` computes, for a batch of waveforms on any device, the same features as SSAST's call

    torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
                                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)

(25 ms frames, 10 ms hop, ``snip_edges=True``, per-frame DC removal, 0.97 pre-emphasis, Hann window,
zero-padding to a 512-point FFT, power spectrum, Kaldi's mel triangles from 20 Hz to Nyquist, natural
log floored at float32 epsilon). ``fbank_reference`` is that call itself, kept as the documented oracle.

Features are laid out ``(batch, frames, mel)``. Padding frames are zeros *before* normalization, as
SSAST/AST/HF do, so after ``normalize`` they become ``+mean / (2 * std)``. ``pad_or_crop`` brings
fbanks to a fixed number of frames (SSAST's tail pad / cut; random crops for training) and
``RunningStats`` (in :mod:`pretrain.stats`) accumulates a dataset's mean/std over real frames.

Parity: max abs difference to torchaudio ≤ 1e-6 typically, ≤ ~1e-4 in the worst low band (tests
demand ≤ 1e-3): every float32 operation on the frame samples is kaldi's, in kaldi's order, because
the low mel bands of a pre-emphasized frame hold ~1e-4 of its energy and are sensitive to the last
bit of the samples. Deliberate differences:
- the clip mean (SSAST's ``waveform - waveform.mean()``) is a batched row sum, which may differ from
  torch's 1-D mean by an ulp (≤ ~1e-4 in the log, see ``_clip_means``);
- ``use_energy`` and ``dither`` other than SSAST's (False, 0) are refused rather than implemented;
- ``RunningStats`` gives the exact mean/std over all real values, where AST's ``get_norm_stats.py``
  averages per-batch means and stds (and ran with SpecAugment/mixup on; ours sees no augmentation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from .config import ModelSection

# AudioSet statistics used by AST/SSAST (the default when a dataset's own are unknown).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# Kaldi floors every mel energy at std::numeric_limits<float>::epsilon() before the log.
_LOG_FLOOR = torch.finfo(torch.float32).eps

_WINDOW_TYPES = ("hanning", "hamming", "povey", "rectangular", "blackman")
_BLACKMAN_COEFF = 0.42  # kaldi's default, the only value we support


@dataclass
class FeatureConfig:
    """Parameters of the fbank; recorded in every exported ``config.json``."""

    sample_rate: int = 16000
    num_mel_bins: int = ModelSection.num_mel_bins
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    htk_compat: bool = True
    use_energy: bool = False
    dither: float = 0.0
    preemphasis_coefficient: float = 0.97
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    subtract_clip_mean: bool = True  # SSAST subtracts the waveform mean before the fbank

    # Samples per frame and per hop, truncated as kaldi (and torchaudio) do: int(sr * ms * 0.001).
    @property
    def frame_length(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def frame_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        """Kaldi's ``round_to_power_of_two``: the smallest power of two ≥ the frame length."""
        return 1 << (self.frame_length - 1).bit_length()

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames Kaldi produces with ``snip_edges=True`` (0 when shorter than one frame)."""
        if isinstance(num_samples, Tensor):
            n = torch.div(num_samples - self.frame_length, self.frame_shift, rounding_mode="floor") + 1
            return n.clamp_min(0)
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def num_samples(self, num_frames: int) -> int:
        """Fewest samples that give ``num_frames`` frames (the inverse of ``num_frames``)."""
        return self.frame_length + (num_frames - 1) * self.frame_shift if num_frames > 0 else 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is outside what ``fbank`` supports."""
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate={self.sample_rate} must be > 0")
        if self.num_mel_bins <= 3:
            problems.append(f"num_mel_bins={self.num_mel_bins} must be > 3 (kaldi)")
        if self.frame_length < 2:
            problems.append(f"frame_length_ms={self.frame_length_ms} gives < 2 samples")
        if self.frame_shift < 1:
            problems.append(f"frame_shift_ms={self.frame_shift_ms} gives < 1 sample")
        if self.window_type not in _WINDOW_TYPES:
            problems.append(f"window_type={self.window_type!r} is not one of {_WINDOW_TYPES}")
        if self.use_energy:
            problems.append("use_energy=True is not supported (SSAST uses False)")
        if self.dither != 0.0:
            problems.append(f"dither={self.dither} is not supported (SSAST uses 0.0: deterministic features)")
        if not 0.0 <= self.preemphasis_coefficient <= 1.0:
            problems.append(f"preemphasis_coefficient={self.preemphasis_coefficient} must be in [0, 1]")
        if not (0.0 <= self.low_freq < nyquist and 0.0 < high <= nyquist and self.low_freq < high):
            problems.append(
                f"low_freq={self.low_freq}, high_freq={self.high_freq} must satisfy "
                f"0 <= low < high <= nyquist={nyquist} (high <= 0 means an offset from nyquist)"
            )
        if problems:
            raise ValueError("invalid FeatureConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        """Inverse of ``to_dict``; an unknown key or an unsupported value is an error naming it."""
        config = _strict_from_dict(cls, data)
        config.validate()
        return config


@dataclass
class Normalization:
    """``(x - mean) / (2 * std)`` as SSAST/AST."""

    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        """Inverse of ``to_dict``; an unknown key is an error naming it and the valid keys."""
        return _strict_from_dict(cls, data)


def _strict_from_dict(cls, data: dict):
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: {valid}")
    return cls(**data)


# ----------------------------------------------------------------------------------------------
# Constant tensors (window, mel matrix), built once per (config, device)
# ----------------------------------------------------------------------------------------------

_CONSTANTS: dict[tuple, _Constants] = {}

# Mel filters per block of the banded mel matmul (see ``_Constants``).
_MEL_BLOCK = 32


def _kaldi_mel(freq: Tensor) -> Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


def _window(config: FeatureConfig) -> Tensor:
    """The analysis window of length ``frame_length``, float32, as kaldi defines each type.

    Built in float32 with torch's window functions, as the reference does: the FFT of the
    low bands is sensitive to the last bit of the window (see ``mel_matrix``).
    """
    n = config.frame_length
    if config.window_type == "rectangular":
        return torch.ones(n)
    if config.window_type == "blackman":
        a = 2 * math.pi / (n - 1)
        i = torch.arange(n, dtype=torch.float32)
        return _BLACKMAN_COEFF - 0.5 * torch.cos(a * i) + (0.5 - _BLACKMAN_COEFF) * torch.cos(2 * a * i)
    if config.window_type == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46)
    hann = torch.hann_window(n, periodic=False)  # symmetric: w[0] = w[n-1] = 0
    return hann.pow(0.85) if config.window_type == "povey" else hann


def mel_matrix(config: FeatureConfig) -> Tensor:
    """Kaldi's triangular mel filters as a ``(fft_size // 2 + 1, num_mel_bins)`` float32 matrix.

    Written from Kaldi's MelBanks: ``num_mel_bins`` triangles equally spaced on the mel scale
    ``1127 ln(1 + f/700)`` between ``low_freq`` and ``high_freq``, evaluated at the FFT bin
    frequencies ``k * sr / fft_size``; the Nyquist bin gets weight 0 (as kaldi).

    Precision is deliberately the reference's: band edges from double-precision scalars, bin mels
    and slopes in float32. Exact float64 weights differ from torchaudio's by up to 0.2 % (relative)
    near the triangle feet, which alone moves some low-band log energies by ~4e-4.
    """
    n_fft = config.fft_size
    nyquist = 0.5 * config.sample_rate
    high = config.high_freq if config.high_freq > 0 else nyquist + config.high_freq
    mel_low = 1127.0 * math.log(1.0 + config.low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (config.num_mel_bins + 1)
    m = torch.arange(config.num_mel_bins, dtype=torch.float32)[None, :]
    left, center, right = mel_low + m * delta, mel_low + (m + 1.0) * delta, mel_low + (m + 2.0) * delta
    bin_freq = (config.sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32)
    bin_mel = _kaldi_mel(bin_freq)[:, None]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    weights = torch.minimum(up, down).clamp_min(0.0)  # (n_fft // 2, num_mel_bins)
    return torch.cat([weights, weights.new_zeros(1, config.num_mel_bins)])


def _config_key(config: FeatureConfig) -> tuple:
    return tuple(getattr(config, f.name) for f in fields(config))


@dataclass
class _Constants:
    """Per (config, device) float32 tensors: the window and the mel matrix cut into column blocks.

    The mel matrix is banded (each FFT bin feeds at most two filters), so instead of one dense
    ``(bins, n_mels)`` matmul each block of ``_MEL_BLOCK`` consecutive filters is multiplied by
    only the FFT bins it covers: about 4× fewer multiply-adds with 128 filters, same result
    (the skipped weights are exact zeros).
    """

    window: Tensor  # (frame_length,)
    mel: Tensor  # (fft_size // 2 + 1, n_mels), dense
    blocks: list[tuple[int, int, int, int, Tensor]]  # (bin lo, bin hi, mel lo, mel hi, weights)


def _constants(config: FeatureConfig, device: torch.device) -> _Constants:
    key = (_config_key(config), str(device))
    cached = _CONSTANTS.get(key)
    if cached is None:
        config.validate()
        mel = mel_matrix(config)
        blocks = []
        for c0 in range(0, config.num_mel_bins, _MEL_BLOCK):
            c1 = min(c0 + _MEL_BLOCK, config.num_mel_bins)
            used = (mel[:, c0:c1] != 0).any(1).nonzero().flatten()
            lo, hi = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
            blocks.append((lo, hi, c0, c1, mel[lo:hi, c0:c1].to(device).contiguous()))
        window = _window(config).to(device=device, dtype=torch.float32)
        cached = _Constants(window, mel.to(device).contiguous(), blocks)
        _CONSTANTS[key] = cached
    return cached


# ----------------------------------------------------------------------------------------------
# fbank
# ----------------------------------------------------------------------------------------------

# On CPU the frames are processed a few hundred at a time, so that every intermediate (about
# 6 KiB per frame) stays in cache and the work buffers are reused; on accelerators whole
# groups of clips go at once (few large kernels), bounded by ``max_chunk_frames``.
_CPU_CHUNK_FRAMES = 256


@torch.no_grad()  # features are inputs, never differentiated (and the kernels write in place)
def fbank(
    waves: Tensor,
    lengths: Tensor | None = None,
    config: FeatureConfig | None = None,
    max_chunk_frames: int = 32768,
) -> tuple[Tensor, Tensor]:
    """Batched Kaldi log-mel fbank: ``(B, S)`` or ``(S,)`` waveforms -> ``(B, T, n_mels)``, ``(B,)``.

    ``lengths`` (B,) is each waveform's real length in samples (the rest is padding; default: all
    ``S``). Frames after a clip's real frames are exactly 0 (SSAST zero-pads the fbank before
    normalization); the second output is each clip's number of real frames. Computed in float32
    on the waveforms' device whatever their dtype. ``max_chunk_frames`` bounds the work memory on
    accelerators (about 6 KiB per frame); on CPU the work is done in small cache-sized chunks.
    """
    config = config or FeatureConfig()
    if waves.dim() == 1:
        waves = waves.unsqueeze(0)
    if waves.dim() != 2:
        raise ValueError(f"fbank expects waves of shape (B, S) or (S,), got {tuple(waves.shape)}")
    if waves.is_complex() or waves.dtype == torch.bool:
        raise ValueError(f"fbank expects real-valued waves, got dtype {waves.dtype}")
    batch, num_samples = waves.shape
    device = waves.device
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long, device=device)
    else:
        lengths = torch.as_tensor(lengths, device=device).long()
        if lengths.shape != (batch,):
            raise ValueError(f"fbank: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        if batch and (int(lengths.min()) < 0 or int(lengths.max()) > num_samples):
            raise ValueError(f"fbank: lengths must be in [0, {num_samples}], got {lengths.tolist()}")
    constants = _constants(config, device)
    num_frames = config.num_frames(lengths)
    total_frames = config.num_frames(num_samples)
    out = torch.empty(batch, total_frames, config.num_mel_bins, device=device, dtype=torch.float32)
    if total_frames == 0 or batch == 0:
        return out, num_frames
    # Frames past each clip's real end (they would see padding samples) are zeros.
    past_end = torch.arange(total_frames, device=device) >= num_frames[:, None]
    out.masked_fill_(past_end[:, :, None], 0.0)
    x = waves.to(torch.float32)
    if config.subtract_clip_mean:
        x = x - _clip_means(x, lengths)[:, None]
    frames = x.unfold(1, config.frame_length, config.frame_shift)  # (B, T, L) view, no copy
    if _small_chunks(device):
        work = _Work(config, (_CPU_CHUNK_FRAMES,), device)
        for i, n in enumerate(num_frames.tolist()):
            for t0 in range(0, n, _CPU_CHUNK_FRAMES):
                t1 = min(t0 + _CPU_CHUNK_FRAMES, n)
                _frames_to_fbank(frames[i, t0:t1], out[i, t0:t1], work.sliced(t1 - t0), config, constants)
    else:
        needed = int(num_frames.max())  # frames past the longest clip are never computed
        if needed == 0:
            return out, num_frames
        clips_per_chunk = max(1, max_chunk_frames // max(needed, 1))
        for c0 in range(0, batch, clips_per_chunk):
            c1 = min(c0 + clips_per_chunk, batch)
            target = out[c0:c1, :needed]
            result = target if target.is_contiguous() else torch.empty_like(target)
            work = _Work(config, (c1 - c0, needed), device)
            _frames_to_fbank(frames[c0:c1, :needed], result, work, config, constants)
            if result is not target:
                target.copy_(result)
        out.masked_fill_(past_end[:, :, None], 0.0)  # again: the chunks overwrote them
    return out, num_frames


def _small_chunks(device: torch.device) -> bool:
    """Whether to use the cache-sized per-clip chunks (CPU) rather than whole-batch kernels."""
    return device.type == "cpu"


def _clip_means(waves: Tensor, lengths: Tensor) -> Tensor:
    """Float32 mean of each clip's real samples (SSAST: ``waveform - waveform.mean()``).

    A row sum in float32 (a float64 one costs a conversion of the whole batch, ~0.3 ms per 10 s
    clip). Torch's 1-D ``mean`` (the reference) sums in another order and can differ by an ulp,
    which moves some low-band log energies by up to ~1e-4 in the comparison with torchaudio.
    """
    if bool((lengths == waves.shape[1]).all()):
        total = waves.sum(1)
    else:
        real = torch.arange(waves.shape[1], device=waves.device) < lengths[:, None]
        total = torch.where(real, waves, 0).sum(1)
    return total / lengths.clamp_min(1)


class _Work:
    """Reusable intermediates for ``_frames_to_fbank`` with leading shape ``lead``."""

    def __init__(self, config: FeatureConfig, lead: tuple[int, ...], device: torch.device) -> None:
        n_fft, length = config.fft_size, config.frame_length
        self.shifted = torch.empty(*lead, length + 1, device=device)  # [y[0], y[0], y[1], ..., y[L-1]]
        self.padded = torch.zeros(*lead, n_fft, device=device)  # [L:] stays zero: the FFT padding
        self.power = torch.empty(*lead, n_fft // 2 + 1, device=device)

    def sliced(self, rows: int) -> _Work:
        """The same buffers restricted to the first ``rows`` frames (still contiguous)."""
        if rows == self.padded.shape[0]:
            return self
        view = object.__new__(_Work)
        for name in ("shifted", "padded", "power"):
            setattr(view, name, getattr(self, name)[:rows])
        return view


def _frames_to_fbank(
    frames: Tensor, out: Tensor, work: _Work, config: FeatureConfig, constants: _Constants
) -> None:
    """Write the log-mel fbank of ``frames`` (..., L) (raw samples, a view) into ``out`` (..., F).

    The float32 operations are kaldi's own, in its order (DC removal, then
    ``y[j] - 0.97 * y[j-1]`` with ``y[-1] := y[0]``, then the window): the low mel bands of a
    pre-emphasized frame carry ~1e-4 of its energy, so a different rounding of the frame samples
    shows up there as ~1e-4 differences in the log.
    """
    length = config.frame_length
    coeff = config.preemphasis_coefficient
    shifted, padded = work.shifted, work.padded
    y = shifted[..., 1:]
    if config.remove_dc_offset:
        torch.sub(frames, frames.mean(-1, keepdim=True), out=y)
    else:
        y.copy_(frames)
    body = padded[..., :length]
    if coeff != 0.0:
        shifted[..., 0] = shifted[..., 1]
        torch.mul(shifted[..., :length], -coeff, out=body)  # -coeff * y[j-1]
        body.add_(y)
        body.mul_(constants.window)
    else:
        torch.mul(y, constants.window, out=body)
    # rfft allocating its result is faster than rfft(out=...), which computes then copies.
    parts = torch.view_as_real(torch.fft.rfft(padded, dim=-1)).square_()  # (..., bins, 2)
    power = torch.add(parts[..., 0], parts[..., 1], out=work.power)  # re² + im²
    power, flat_out = power.reshape(-1, power.shape[-1]), out.view(-1, out.shape[-1])  # both contiguous
    for lo, hi, c0, c1, weights in constants.blocks:
        torch.mm(power[:, lo:hi], weights, out=flat_out[:, c0:c1])
    out.clamp_min_(_LOG_FLOOR).log_()


def fbank_reference(wave: Tensor, config: FeatureConfig | None = None) -> Tensor:
    """The oracle: ``torchaudio.compliance.kaldi.fbank`` on one waveform ``(S,)`` -> ``(T, n_mels)``.

    Applies ``config.subtract_clip_mean`` first (SSAST's loader does), then kaldi with the config's
    arguments (SSAST's call with the defaults). A clip shorter than one frame gives ``(0, n_mels)``
    (kaldi itself refuses it).
    """
    from torchaudio.compliance import kaldi  # imported lazily: only tests and benchmarks need it

    config = config or FeatureConfig()
    if wave.dim() != 1:
        raise ValueError(f"fbank_reference expects one waveform (S,), got {tuple(wave.shape)}")
    if wave.shape[0] < config.frame_length:
        return wave.new_zeros(0, config.num_mel_bins)
    if config.subtract_clip_mean:
        wave = wave - wave.mean()
    return kaldi.fbank(
        wave.unsqueeze(0),
        htk_compat=config.htk_compat,
        sample_frequency=config.sample_rate,
        use_energy=config.use_energy,
        window_type=config.window_type,
        num_mel_bins=config.num_mel_bins,
        dither=config.dither,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
        preemphasis_coefficient=config.preemphasis_coefficient,
        remove_dc_offset=config.remove_dc_offset,
        low_freq=config.low_freq,
        high_freq=config.high_freq,
    )


# ----------------------------------------------------------------------------------------------
# Normalization, length, statistics
# ----------------------------------------------------------------------------------------------


def normalize(features: Tensor, norm: Normalization) -> Tensor:
    """SSAST/AST normalization ``(x - mean) / (2 * std)``."""
    return (features - norm.mean) / (2.0 * norm.std)


_CROPS = ("random", "start", "center")


def pad_or_crop(
    features: Tensor,
    num_frames: Tensor,
    target_frames: int,
    crop: str = "random",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Zero-pad or crop ``(B, T, F)`` fbanks to ``(B, target_frames, F)``; returns new num_frames.

    Call it before ``normalize`` (padding is zeros of the un-normalized fbank, as SSAST). A clip
    longer than the target is cropped to a window starting at ``start`` in ``[0, n - target]``
    (``n`` its real frames): uniform per clip for ``"random"`` (reproducible with ``generator``, a
    CPU ``torch.Generator``), 0 for ``"start"`` (SSAST's evaluation: the tail is cut), the middle
    for ``"center"``. Shorter clips keep their frames, followed by zeros.
    """
    if crop not in _CROPS:
        raise ValueError(f"pad_or_crop: crop={crop!r} is not one of {_CROPS}")
    if target_frames <= 0:
        raise ValueError(f"pad_or_crop: target_frames must be > 0, got {target_frames}")
    if features.dim() != 3:
        raise ValueError(f"pad_or_crop expects (B, T, F) features, got {tuple(features.shape)}")
    batch, total, _ = features.shape
    num_frames = torch.as_tensor(num_frames, device=features.device).long()
    if num_frames.shape != (batch,):
        raise ValueError(f"pad_or_crop: num_frames must have shape ({batch},), got {tuple(num_frames.shape)}")
    if batch and (int(num_frames.min()) < 0 or int(num_frames.max()) > total):
        raise ValueError(f"pad_or_crop: num_frames must be in [0, {total}], got {num_frames.tolist()}")
    excess = (num_frames - target_frames).clamp_min(0)
    if crop == "random":
        u = torch.rand(batch, generator=generator, dtype=torch.float64).to(features.device)
        start = torch.minimum((u * (excess + 1)).floor().long(), excess)
    elif crop == "center":
        start = excess // 2
    else:
        start = torch.zeros_like(excess)
    new_frames = torch.minimum(num_frames - start, torch.full_like(num_frames, target_frames))
    if total < target_frames:
        features = torch.nn.functional.pad(features, (0, 0, 0, target_frames - total))
    if bool((start == 0).all()):
        out = features[:, :target_frames]  # the common case: no gather needed
    else:
        index = start[:, None] + torch.arange(target_frames, device=features.device)
        index = index.clamp_max(features.shape[1] - 1)
        out = torch.gather(features, 1, index[:, :, None].expand(-1, -1, features.shape[2]))
    keep = torch.arange(target_frames, device=features.device) < new_frames[:, None]
    return out * keep[:, :, None].to(out.dtype), new_frames


def pad_waves(clips: list) -> tuple[Tensor, Tensor]:
    """A list of 1-D waveforms (numpy or torch) -> zero-padded ``(B, S_max)`` float32 batch and lengths."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    waves = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0)
    for i, c in enumerate(clips):
        waves[i, : len(c)] = torch.as_tensor(c, dtype=torch.float32)
    return waves, lengths


def model_input(
    waves: Tensor, lengths: Tensor, config: FeatureConfig, norm: Normalization, target_frames: int
) -> tuple[Tensor, Tensor]:
    """What an encoder reads: fbank, zero-padded or cut from the start to ``target_frames`` (before
    normalization, as SSAST), then normalized; and each clip's real frame count."""
    feats, frames = fbank(waves, lengths, config)
    feats, frames = pad_or_crop(feats, frames, target_frames, crop="start")
    return normalize(feats, norm), frames
