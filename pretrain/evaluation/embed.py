"""Whole-clip features of labeled shard sets for linear probes.

Every clip is cut into consecutive windows of the encoder's input length (the hop is the window's
frame count times the frame shift, so the windows' fbank frames tile the clip's frames); a tail
shorter than one patch column is dropped unless it is the whole clip. All windows go through the
encoder once, in batches, with every block's output (``output_hidden_states``) and the final output.
Each layer is pooled over the *real* patches of all the clip's windows (padding left out, as in
training): the mean, and the standard deviation for ``meanstd``. Only these pooled vectors are
kept, never per-patch tensors. Encoders that read the same windows (a pretrained export and its
random-init twin) share one read of the shards and one fbank; the log-mel baseline (mean and std of
each mel band over the clip's real frames) comes from the same fbank.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import DataError, ShardSet, _open_url, decode_sample
from ..encoder import Encoder
from ..features import FeatureConfig, Normalization, model_input, pad_waves
from ..patches import valid_patches

log = logging.getLogger(__name__)
POOLINGS = ("mean", "meanstd")


@dataclass
class LabeledClips:
    """What was read from a labeled shard set, in shard order: keys, groups and multi-hot targets."""

    name: str
    vocabulary: list[str]
    keys: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    skipped: int = 0

    def targets(self) -> torch.Tensor:
        """``(n, C)`` float multi-hot targets over ``vocabulary``."""
        index = {lab: i for i, lab in enumerate(self.vocabulary)}
        y = torch.zeros(len(self.labels), len(self.vocabulary))
        for i, labs in enumerate(self.labels):
            for lab in labs:
                y[i, index[lab]] = 1.0
        return y


def group_of(meta: dict[str, Any], group_by: str) -> str:
    """A clip's group: ``source`` (clips cut from one file), ``dir`` (the source's folder, e.g. a
    speaker's) or any other field of the sample's json."""
    source = str(meta.get("source", ""))
    if group_by == "dir":
        return source.rsplit("/", 1)[0] if "/" in source else source
    return str(meta.get(group_by, source))


def read_labeled(shards: ShardSet, clips: LabeledClips, max_clips: int | None = None,
                 group_by: str = "source") -> Iterator[np.ndarray]:
    """Yield each decodable clip's 16 kHz waveform once, in shard order, recording its key, group and
    labels in ``clips``; corrupt samples are counted in ``clips.skipped``. A label outside the
    vocabulary is an error naming the sample."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    known = set(clips.vocabulary)
    for url in shards.urls:
        with _open_url(url) as stream:
            files = (f | {"__url__": url} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                if max_clips is not None and len(clips.keys) >= max_clips:
                    return
                try:
                    wave, meta = decode_sample(sample)
                except Exception as e:  # corrupt samples are skipped and counted, as in training
                    clips.skipped += 1
                    log.warning("skipping %s:%s: %s", url, sample.get("__key__"), e)
                    continue
                labels = [str(lab) for lab in meta.get("labels") or []]
                unknown = [lab for lab in labels if lab not in known]
                if unknown:
                    raise DataError(f"{url}: sample {sample.get('__key__')} has label(s) {unknown} "
                                     f"outside the vocabulary of {clips.name}")
                clips.keys.append(str(sample.get("__key__")))
                clips.groups.append(group_of(meta, group_by))
                clips.labels.append(labels)
                yield wave


@dataclass
class PooledLayers:
    """Per-clip pooled features of each layer: ``mean[l]`` and ``std[l]`` are ``(n, D_l)``."""

    names: list[str]
    mean: list[torch.Tensor]
    std: list[torch.Tensor]

    def features(self, pooling: str) -> list[torch.Tensor]:
        if pooling == "mean":
            return self.mean
        if pooling == "meanstd":
            return [torch.cat([m, s], 1) for m, s in zip(self.mean, self.std)]
        raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}")

    def select(self, index: list[int]) -> PooledLayers:
        """The same layers for a subset of the clips."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return PooledLayers(self.names, [m[idx] for m in self.mean], [s[idx] for s in self.std])


class _PooledSums:
    """Running per-clip sums of ``w * h`` and ``w * h**2`` (float64) and of the weights ``w``."""

    def __init__(self) -> None:
        self.s1: list[torch.Tensor] = []
        self.s2: list[torch.Tensor] = []
        self.count = torch.zeros(0, dtype=torch.float64)

    def add(self, ids: torch.Tensor, values: list[torch.Tensor], weights: torch.Tensor) -> None:
        """``ids`` (W,) clip index of each window; ``values`` per layer (W, N, D); ``weights`` (W, N)."""
        need = int(ids.max()) + 1
        if not self.s1:
            self.s1 = [torch.zeros(0, v.shape[-1], dtype=torch.float64) for v in values]
            self.s2 = [torch.zeros(0, v.shape[-1], dtype=torch.float64) for v in values]
        if need > len(self.count):  # grow geometrically: clips arrive in order
            extra = max(need, 2 * len(self.count)) - len(self.count)
            self.count = torch.cat([self.count, torch.zeros(extra, dtype=torch.float64)])
            self.s1 = [torch.cat([s, s.new_zeros(extra, s.shape[1])]) for s in self.s1]
            self.s2 = [torch.cat([s, s.new_zeros(extra, s.shape[1])]) for s in self.s2]
        # float64 throughout: the std is sqrt(E[h²] - E[h]²), which cancels badly in float32 when |mean| >> std
        w = weights.double()
        ids = ids.cpu()
        for layer, h in enumerate(values):
            h = h.double()
            self.s1[layer].index_add_(0, ids, torch.einsum("wn,wnd->wd", w, h).cpu())
            self.s2[layer].index_add_(0, ids, torch.einsum("wn,wnd->wd", w, h * h).cpu())
        self.count.index_add_(0, ids, w.sum(1).cpu())

    def result(self, n: int, names: list[str]) -> PooledLayers:
        c = self.count[:n, None].clamp_min(1.0)
        means = [s[:n] / c for s in self.s1]
        stds = [(s2[:n] / c - m * m).clamp_min(0.0).sqrt() for s2, m in zip(self.s2, means)]
        return PooledLayers(names, [m.float() for m in means], [s.float() for s in stds])


@dataclass(frozen=True)
class WindowSpec:
    """How an encoder reads audio; encoders with equal specs share windows and fbanks."""

    features: FeatureConfig
    normalization: Normalization
    frames: int
    patch_frames: int

    @classmethod
    def of(cls, encoder: Encoder) -> WindowSpec:
        c = encoder.config
        return cls(c.features, c.normalization, int(c.input_frames), int(c.patch[0]))

    def key(self) -> tuple:
        return (tuple(sorted(self.features.to_dict().items())), self.normalization.mean, self.normalization.std,
                self.frames, self.patch_frames)


def clip_windows(wave: np.ndarray, spec: WindowSpec) -> list[np.ndarray]:
    """Consecutive windows of ``spec.frames`` frames whose frames tile the clip's (see the module doc)."""
    f = spec.features
    window = f.num_samples(spec.frames)
    hop = spec.frames * f.frame_shift
    min_tail = f.num_samples(spec.patch_frames)
    out = [wave[s:s + window] for s in range(0, max(len(wave) - f.frame_length, 0) + 1, hop)]
    if len(out) > 1 and len(out[-1]) < min_tail:
        out.pop()
    return out


def layer_names(encoder: Encoder) -> list[str]:
    """Block outputs ``1..L`` (before the final norm) and ``out``, the encoder's output."""
    return [str(i + 1) for i in range(encoder.num_layers)] + ["out"]


def encoder_layers(encoder: Encoder, fbank: torch.Tensor, frames: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's per-patch features of one batch (one forward pass) and the real-patch weights."""
    res = encoder(fbank, output_hidden_states=True)
    c = encoder.config
    valid = valid_patches(frames.to(fbank.device), res.grid, c.patch, c.stride)
    return [*(res.hidden_states or []), res.patches], valid


@torch.no_grad()
def embed_clips(waves: Iterator[np.ndarray], spec: WindowSpec, encoders: dict[str, Encoder], logmel: bool = False,
                batch_windows: int = 32, device: torch.device | str = "cpu") -> dict[str, PooledLayers]:
    """Pooled features of every clip for each encoder (all layers from one forward pass) and, with
    ``logmel``, the log-mel baseline under the name ``"logmel"``. Encoders must be in eval mode."""
    sums = {name: _PooledSums() for name in encoders} | ({"logmel": _PooledSums()} if logmel else {})
    pending: list[tuple[int, np.ndarray]] = []
    n = 0

    def flush() -> None:
        ids = torch.tensor([i for i, _ in pending])
        fb, frames = model_input(*pad_waves([w for _, w in pending]), spec.features, spec.normalization, spec.frames)
        fb = fb.to(device)
        for name, enc in encoders.items():
            layers, valid = encoder_layers(enc, fb, frames)
            sums[name].add(ids, layers, valid)
        if logmel:
            real = (torch.arange(fb.shape[1], device=device)[None, :] < frames.to(device)[:, None])
            sums["logmel"].add(ids, [fb], real)
        pending.clear()

    for wave in waves:
        for chunk in clip_windows(wave, spec):
            pending.append((n, chunk))
            if len(pending) == batch_windows:
                flush()
        n += 1
    if pending:
        flush()
    out = {name: sums[name].result(n, layer_names(enc)) for name, enc in encoders.items()}
    if logmel:
        out["logmel"] = sums["logmel"].result(n, ["logmel"])
    return out
