"""Kaldi-compatible log-mel filterbank features (SSAST/AST settings), batched, and normalization.

(Implementation to be filled in: see issue 3. The FeatureConfig dataclass below is the contract.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# AudioSet statistics used by AST/SSAST (the default when a dataset's own are unknown).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass
class FeatureConfig:
    """Parameters of the fbank; recorded in every exported ``config.json``."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
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

    @property
    def frame_length(self) -> int:
        return int(round(self.sample_rate * self.frame_length_ms / 1000))

    @property
    def frame_shift(self) -> int:
        return int(round(self.sample_rate * self.frame_shift_ms / 1000))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Normalization:
    """``(x - mean) / (2 * std)`` as SSAST/AST."""

    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    def to_dict(self) -> dict:
        return asdict(self)
