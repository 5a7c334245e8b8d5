"""Patch grid geometry: grid size, patchify/unpatchify, valid (non-padding) patches, position embeddings.

Conventions (ARCHITECTURE.md, patch grid): input fbank ``(B, T, F)``; a patch covers ``pt`` frames x ``pf`` mel bins;
stride ``(st, sf)``; grid ``(nt, nf)``; token order time-major ``index = t * nf + f``; inside a
patch, values are ordered time-major too (``(i, j) -> i * pf + j``, i = frame, j = mel bin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_shape(frames: int, mel_bins: int, patch: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """``(nt, nf)`` for an input of ``frames`` x ``mel_bins``."""
    pt, pf = patch
    st, sf = stride
    if frames < pt or mel_bins < pf:
        raise ValueError(f"input of {frames} frames x {mel_bins} mel bins is smaller than one patch {pt}x{pf}")
    return (frames - pt) // st + 1, (mel_bins - pf) // sf + 1


def patchify(fbank: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Non-overlapping patches ``(B, N, pt*pf)`` of ``(B, T, F)``; trailing frames that do not fill a patch are dropped."""
    pt, pf = patch
    b, t, f = fbank.shape
    nt, nf = t // pt, f // pf
    x = fbank[:, : nt * pt, : nf * pf].reshape(b, nt, pt, nf, pf)
    return x.permute(0, 1, 3, 2, 4).reshape(b, nt * nf, pt * pf)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, pt*pf)`` -> ``(B, nt*pt, nf*pf)``."""
    nt, nf = grid
    pt, pf = patch
    b = patches.shape[0]
    x = patches.reshape(b, nt, nf, pt, pf).permute(0, 1, 3, 2, 4)
    return x.reshape(b, nt * pt, nf * pf)


def valid_patches(
    num_frames: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """``(B, N)`` bool: True where a patch holds at least one real (non-padding) frame.

    ``num_frames`` ``(B,)`` counts the real frames of each clip before zero-padding.
    """
    nt, nf = grid
    starts = torch.arange(nt, device=num_frames.device) * stride[0]
    valid_t = starts[None, :] < num_frames[:, None]
    return valid_t[:, :, None].expand(-1, nt, nf).reshape(num_frames.shape[0], nt * nf)


def resize_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "ssast"
) -> torch.Tensor:
    """Adapt learned position embeddings ``(1, nt*nf, D)`` (time-major) to another grid.

    ``mode="ssast"`` follows SSAST/AST: per axis, centre-cut when the new size is smaller,
    bilinear interpolation when it is larger. ``mode="interpolate"`` always interpolates.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    (ot, of), (nt, nf) = old_grid, new_grid
    d = pos.shape[-1]
    x = pos.reshape(1, ot, of, d).permute(0, 3, 1, 2)  # (1, D, ot, of)
    for axis, (old, new) in enumerate(((ot, nt), (of, nf))):
        if new == old:
            continue
        if new < old and mode == "ssast":
            start = (old - new) // 2
            x = x.narrow(2 + axis, start, new)
        else:
            size = [x.shape[2], x.shape[3]]
            size[axis] = new
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, nt * nf, d)


# SSAST/AST order their tokens frequency-major; these convert (each is the other's inverse).
def freq_to_time_major(x: torch.Tensor, nf: int, nt: int, dim: int = 1) -> torch.Tensor:
    """Reorder ``nf * nt`` tokens along ``dim`` from index ``f * nt + t`` to ``t * nf + f``."""
    shape = list(x.shape)
    y = x.reshape(shape[:dim] + [nf, nt] + shape[dim + 1 :]).transpose(dim, dim + 1)
    return y.reshape(shape).contiguous()


def time_to_freq_major(x: torch.Tensor, nt: int, nf: int, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`freq_to_time_major`: index ``t * nf + f`` -> ``f * nt + t``."""
    return freq_to_time_major(x, nt, nf, dim)
