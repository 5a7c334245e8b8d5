"""finetune.augment: each augmentation does what it says, and a seeded generator makes it reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finetune.augment import augment_batch, mixup, noise_and_roll, random_gain, spec_augment
from finetune.config import AugmentSection
from pretrain.features import FeatureConfig, Normalization, fbank, normalize


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of True in a 1-D bool array."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_spec_augment_masks_one_band_per_axis_with_the_fill_value():
    b, t, f, fill = 16, 100, 64, 7.5
    x = torch.randn(b, t, f, generator=_gen(1))
    out = spec_augment(x, freqm=20, timem=30, fill=fill, g=_gen(2))
    assert out.shape == x.shape
    assert not torch.equal(out, x) and torch.equal(x, torch.randn(b, t, f, generator=_gen(1)))  # input untouched
    widths_f, widths_t = [], []
    for i in range(b):
        filled = (out[i] == fill).numpy()
        full_cols = filled.all(0)  # frequency bins masked at every frame
        full_rows = filled.all(1)  # frames masked at every bin
        runs_f, runs_t = _runs(full_cols), _runs(full_rows)
        assert len(runs_f) <= 1 and len(runs_t) <= 1, "one contiguous band per axis"
        wf = runs_f[0][1] if runs_f else 0
        wt = runs_t[0][1] if runs_t else 0
        assert wf < 20 and wt < 30  # widths drawn from [0, freqm) and [0, timem)
        widths_f.append(wf)
        widths_t.append(wt)
        band = full_cols[None, :] | full_rows[:, None]
        assert np.array_equal(filled, band), "nothing outside the two bands is filled"
        assert torch.equal(out[i][torch.from_numpy(~band)], x[i][torch.from_numpy(~band)])
    assert max(widths_f) > 0 and max(widths_t) > 0
    assert len(set(widths_f)) > 1, "widths vary across the batch"


def test_spec_augment_in_augment_batch_fills_with_normalized_zero():
    """SSAST masks the un-normalized fbank with 0, i.e. (0 - mean) / (2 std) once normalized."""
    norm = Normalization(mean=-4.0, std=5.0)
    x = torch.randn(8, 50, 32, generator=_gen(3)) + 10  # nowhere near the fill value
    y = torch.eye(8)
    out, y_out = augment_batch(x, y, None, AugmentSection(freqm=10, timem=10), norm, _gen(4))
    fill = (0.0 + 4.0) / (2 * 5.0)
    changed = out != x
    assert changed.any()
    assert torch.allclose(out[changed], torch.full_like(out[changed], fill))
    assert torch.equal(y_out, y)  # masking leaves labels alone


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda():
    b = 12
    # clip i is the constant i and has the one-hot label i: the mix can be read back from both
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 5, 3).clone()
    y = torch.eye(b)
    xm, ym = mixup(x, y, fraction=1.0, alpha=10.0, g=_gen(5))
    assert torch.allclose(ym.sum(1), torch.ones(b))
    lams = []
    for i in range(b):
        nz = torch.nonzero(ym[i]).flatten().tolist()
        if nz == [i]:  # mixed with itself
            assert torch.allclose(xm[i], x[i])
            continue
        assert len(nz) == 2 and i in nz
        p = next(j for j in nz if j != i)
        lam = float(ym[i, i])
        assert float(ym[i, p]) == pytest.approx(1 - lam)
        assert torch.allclose(xm[i], torch.full_like(xm[i], lam * i + (1 - lam) * p), atol=1e-5)
        lams.append(lam)
    assert lams and all(0 < v < 1 for v in lams)
    assert abs(np.mean(lams) - 0.5) < 0.15  # Beta(10, 10) concentrates around 1/2


def test_mixup_fraction_zero_is_identity():
    x, y = torch.randn(6, 4, 3, generator=_gen(6)), torch.eye(6)
    xm, ym = mixup(x, y, fraction=0.0, alpha=10.0, g=_gen(7))
    assert torch.equal(xm, x) and torch.equal(ym, y)


def test_noise_and_roll_is_a_small_positive_noise_then_a_time_roll():
    b, t, f = 8, 40, 16
    x = torch.randn(b, t, f, generator=_gen(8)) * 3
    out = noise_and_roll(x, _gen(9))
    shifts = []
    for i in range(b):
        fits = [s for s in range(-10, 10)
                if ((d := out[i] - torch.roll(x[i], s, 0)) >= 0).all() and (d < 0.1).all()]
        assert len(fits) == 1, f"clip {i}: exactly one roll in [-10, 10) explains the output, got {fits}"
        shifts.append(fits[0])
    assert len(set(shifts)) > 1


def test_random_gain_is_the_log_power_offset_of_a_waveform_gain():
    norm = Normalization(mean=-4.2677393, std=4.5689974)
    x = torch.randn(6, 20, 8, generator=_gen(10))
    out = random_gain(x, gain_db=6.0, norm=norm, g=_gen(11))
    offset = (out - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6), "one offset per clip"
    db = offset[:, 0] * 2 * norm.std * 10 / math.log(10)
    assert (db.abs() <= 6.0 + 1e-4).all() and db.abs().max() > 0.5
    # scaling a waveform by the same gain shifts its normalized fbank by that offset
    cfg = FeatureConfig()
    wave = torch.sin(torch.arange(16000) * 2 * math.pi * 440 / 16000) * 0.3 + 0.05 * torch.randn(16000, generator=_gen(12))
    g_db = float(db[0])
    raw = fbank(wave[None], None, cfg)[0]
    base = normalize(raw, norm)
    louder = normalize(fbank(wave[None] * 10 ** (g_db / 20), None, cfg)[0], norm)
    above_floor = raw > math.log(torch.finfo(torch.float32).eps) + 1  # empty mel bins sit on the log floor
    assert above_floor.float().mean() > 0.9
    diff = (louder - base)[above_floor]
    assert torch.allclose(diff, torch.full_like(diff, float(offset[0, 0])), atol=1e-3)


def test_augment_batch_is_deterministic_for_a_seed():
    cfg = AugmentSection(freqm=24, timem=48, mixup=0.5, mixup_alpha=10.0, noise=True, gain_db=6.0)
    norm = Normalization()
    x = torch.randn(8, 100, 32, generator=_gen(13))
    y = torch.eye(8)
    a = augment_batch(x, y, None, cfg, norm, _gen(42))
    torch.manual_seed(123)  # the global RNG must not matter
    b = augment_batch(x, y, None, cfg, norm, _gen(42))
    torch.manual_seed(456)
    c = augment_batch(x, y, None, cfg, norm, _gen(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[1], y), "with mixup = 0.5 some labels are mixed"


def test_augment_batch_off_is_identity():
    x, y = torch.randn(4, 30, 16, generator=_gen(14)), torch.eye(4)
    out, y_out = augment_batch(x, y, None, AugmentSection(), Normalization(), _gen(0))
    assert torch.equal(out, x) and torch.equal(y_out, y)
