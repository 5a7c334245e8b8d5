"""Training-time augmentation on normalized fbank batches (never applied in evaluation).

SpecAugment frequency/time masks, mixup, SSAST's noise + time roll and a random gain. All operate on
the batch on its device, driven by one ``torch.Generator`` so runs are reproducible.

Deviation from SSAST: mixup mixes the normalized log-mel fbanks, not the waveforms (the loader
hands fbanks to the trainer); labels are mixed with the same lambda, as SSAST does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pretrain.features import Normalization

from .config import AugmentSection


def spec_augment(x: torch.Tensor, freqm: int, timem: int, fill: float, g: torch.Generator) -> torch.Tensor:
    """One frequency mask of width U[0, freqm) and one time mask of width U[0, timem) per clip."""
    b, t, f = x.shape
    out = x.clone()
    for width_max, axis, size in ((freqm, 2, f), (timem, 1, t)):
        if width_max <= 0:
            continue
        width = (torch.rand(b, generator=g) * width_max).long()
        start = (torch.rand(b, generator=g) * (size - width + 1).clamp_min(1)).long()
        pos = torch.arange(size)
        band = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + width)[:, None])
        band = band.to(x.device)
        shape = (b, 1, size) if axis == 2 else (b, size, 1)
        out = out.masked_fill(band.view(shape), fill)
    return out


def mixup(x: torch.Tensor, y: torch.Tensor, fraction: float, alpha: float, g: torch.Generator):
    """Mix a ``fraction`` of the clips with a random partner: x' = l*x + (1-l)*x[p], same for labels."""
    b = x.shape[0]
    apply = torch.rand(b, generator=g) < fraction
    partner = torch.randint(0, b, (b,), generator=g)
    if alpha > 0:  # torch's Beta sampler ignores generators: draw it from a numpy RNG seeded by ``g``
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, b)).float()
    else:
        lam = torch.ones(b)
    lam = torch.where(apply, lam, torch.ones(b)).to(x.device)
    partner = partner.to(x.device)
    x = lam.view(b, 1, 1) * x + (1 - lam.view(b, 1, 1)) * x[partner]
    y = lam.view(b, 1) * y + (1 - lam.view(b, 1)) * y[partner]
    return x, y


def noise_and_roll(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SSAST's ``noise``: add U[0,1) * U[0,1) / 10 noise, then roll the time axis by an integer in [-10, 10)."""
    b = x.shape[0]
    scale = torch.rand(b, 1, 1, generator=g) / 10
    x = x + (torch.rand(x.shape, generator=g) * scale).to(x.device)
    shifts = torch.randint(-10, 10, (b,), generator=g)
    idx = (torch.arange(x.shape[1])[None, :] - shifts[:, None]) % x.shape[1]
    return torch.gather(x, 1, idx.to(x.device)[:, :, None].expand(-1, -1, x.shape[2]))


def random_gain(x: torch.Tensor, gain_db: float, norm: Normalization, g: torch.Generator) -> torch.Tensor:
    """A gain of U[-gain_db, gain_db] dB: an additive offset of the log power, in normalized units."""
    b = x.shape[0]
    db = (torch.rand(b, 1, 1, generator=g) * 2 - 1) * gain_db
    offset = db * math.log(10) / 10 / (2 * norm.std)
    return x + offset.to(x.device)


def augment_batch(x, y, num_frames, cfg: AugmentSection, norm: Normalization, g: torch.Generator):
    """Apply the configured augmentations to a training batch ``(fbank, labels)``."""
    if cfg.gain_db > 0:
        x = random_gain(x, cfg.gain_db, norm, g)
    if cfg.mixup > 0:
        x, y = mixup(x, y, cfg.mixup, cfg.mixup_alpha, g)
    if cfg.freqm > 0 or cfg.timem > 0:
        # SSAST masks the un-normalized fbank with 0, i.e. the normalized value -mean / (2 std)
        fill = (0.0 - norm.mean) / (2 * norm.std)
        x = spec_augment(x, cfg.freqm, cfg.timem, fill, g)
    if cfg.noise:
        x = noise_and_roll(x, g)
    return x, y
