"""The HEAR common API for any export of this project (pretrained, fine-tuned or imported SSAST/AST).

    from finetune import hear
    model = hear.load_model("runs/NAME/export")          # an export directory (or a file in it)
    scene = hear.get_scene_embeddings(audio, model)       # audio (n, samples) float in [-1, 1] at 16 kHz
    emb, times_ms = hear.get_timestamp_embeddings(audio, model)

* Scene embeddings are exactly ``finetune embed``'s ``pooled``: windows of the model's input length,
  half a window apart (the last one ends at the end of the audio), the encoder output averaged over
  the patches that hold real frames of each window, then over the windows.
* Timestamp embeddings: one per patch column (the mean over the frequency patches of that column),
  from windows that tile the audio's fbank frames. A patch column spans ``stride_t`` frames (160 ms
  for 16x16 patches), so the audio is also run shifted by whole fractions of a column until the hop
  is at most 50 ms (:data:`MAX_HOP_MS`): 4 passes, a 40 ms hop for 16x16 patches; 1 pass, a 20 ms hop
  for frame patches (2 frames). Each timestamp is the centre of its column's samples (those inside
  the audio), in ms.
* Deterministic (eval mode, no randomness), batched over sounds and windows (``model.batch_size``
  windows per forward pass), on the model's device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.encoder import Encoder
from pretrain.patches import valid_patches

from .predict import window_features, windows

MAX_HOP_MS = 50.0


class HearModel(nn.Module):
    """A frozen encoder with the attributes the HEAR API asks for."""

    def __init__(self, encoder: Encoder, batch_size: int = 32):
        super().__init__()
        self.encoder = encoder.eval()
        self.sample_rate: int = int(encoder.config.features.sample_rate)
        self.scene_embedding_size: int = int(encoder.dim)
        self.timestamp_embedding_size: int = int(encoder.dim)
        self.batch_size = batch_size
        f = encoder.config.features
        self.window = f.num_samples(encoder.config.input_frames)
        column = encoder.config.stride[0] * f.frame_shift  # samples between patch columns
        self.shifts = max(1, math.ceil(column * 1000.0 / self.sample_rate / MAX_HOP_MS))
        self.shift = column // self.shifts  # samples between timestamps
        self.hop_ms = 1000.0 * self.shift / self.sample_rate

    def train(self, mode: bool = True) -> HearModel:
        super().train(mode)
        self.encoder.eval()  # embeddings are always those of the frozen encoder (BN statistics included)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def run(self, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Encoder output ``(W, N, D)`` of equal-length windows, batched; their real-patch mask ``(W, N)``."""
        outs, masks, grid = [], [], (0, 0)
        frames_target = self.encoder.config.input_frames
        for i in range(0, len(chunks), self.batch_size):
            fb, frames = window_features(self.encoder, [c.cpu() for c in chunks[i:i + self.batch_size]], frames_target)
            res = self.encoder(fb.to(self.device))
            grid = res.grid
            c = self.encoder.config
            outs.append(res.patches.float())
            masks.append(valid_patches(frames.to(self.device), grid, c.patch, c.stride))
        return torch.cat(outs), torch.cat(masks), grid


def load_model(model_file_path: str = "", batch_size: int = 32) -> HearModel:
    """An export directory (or ``config.json`` / ``model.safetensors`` inside one) -> :class:`HearModel`."""
    path = Path(model_file_path)
    if path.is_file():
        path = path.parent
    return HearModel(Encoder.from_pretrained(path), batch_size=batch_size)


def _check(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    if audio.dim() != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    frame = model.encoder.config.features.frame_length
    if audio.shape[1] < frame:  # shorter than one fbank frame: pad with silence to one frame
        audio = torch.nn.functional.pad(audio, (0, frame - audio.shape[1]))
    return audio.float()


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``(n_sounds, scene_embedding_size)``: mean over windows of each window's real-patch mean."""
    audio = _check(audio, model)
    n, length = audio.shape
    starts = [s for s, _ in windows(np.empty(length, dtype=np.float32), model.window, model.window // 2)]
    chunks = [audio[i, s:s + model.window] for i in range(n) for s in starts]
    patches, valid, _ = model.run(chunks)
    w = valid.float().unsqueeze(-1)
    pooled = (patches * w).sum(1) / w.sum(1).clamp_min(1)  # (n * W, D)
    return pooled.reshape(n, len(starts), -1).mean(1)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``((n_sounds, n_times, D), (n_sounds, n_times))``: patch-column embeddings and centre times in ms,
    ``model.hop_ms`` apart (see the module docstring)."""
    audio = _check(audio, model)
    n = audio.shape[0]
    f = model.encoder.config.features
    pt, st = model.encoder.config.patch[0], model.encoder.config.stride[0]
    tile = model.encoder.config.input_frames * f.frame_shift  # window starts: the windows' frames tile the audio
    embs, times = [], []
    for k in range(model.shifts):
        x = audio[:, k * model.shift:]
        if x.shape[1] < f.frame_length:
            continue
        starts = list(range(0, x.shape[1] - f.frame_length + 1, tile))
        chunks = [x[i, s:s + model.window] for i in range(n) for s in starts]
        patches, valid, (nt, nf) = model.run(chunks)
        cols = patches.reshape(n, len(starts), nt, nf, -1).mean(3)  # (n, W, nt, D)
        real = valid.reshape(n, len(starts), nt, nf)[0, :, :, 0]  # (W, nt): equal lengths, same for every sound
        frame0 = torch.tensor(starts)[:, None] // f.frame_shift + torch.arange(nt)[None, :] * st  # first frame
        first = k * model.shift + frame0 * f.frame_shift  # the column's first and last sample (within the audio)
        last = (first + (pt - 1) * f.frame_shift + f.frame_length).clamp_max(audio.shape[1])
        centre = (first + last) / 2
        embs.append(cols[:, real.to(cols.device)])
        times.append(centre[real.cpu()].double() * 1000.0 / model.sample_rate)
    t = torch.cat(times)
    order = torch.argsort(t, stable=True)
    emb = torch.cat(embs, 1)[:, order.to(audio.device)]
    return emb, t[order].float().to(audio.device).expand(n, -1).contiguous()
