"""Which patches to mask for SSAST pretraining: random masks, SSAST's cluster masks and time spans, batched.

A mask is ``(B, N)`` bool, True = masked, over the time-major patch grid (ARCHITECTURE.md)
(``index = t * nf + f``). Every function takes ``valid`` ``(B, N)`` bool (False = a patch that
is only zero padding, see :func:`pretrain.patches.valid_patches`) and never masks an invalid
patch; each clip gets **exactly** its requested count. All randomness comes from the optional
``torch.Generator``, so a seed fixes the masks.

Deliberate differences from the original SSAST ``gen_maskid_patch`` / ``gen_maskid_frame``
(ssast ``src/models/ast_models.py``), which are *not* reproduced:

- Index 0 is never masked there (``mask_cand > 0``, ssast issue #39), and because the loop
  overshoots and truncates a CPython set in ascending order, the last index is never masked
  either. Here every valid patch, first and last included, can be masked.
- There a cluster is ``start + nt * i + j``: stepping in time runs past the end of a frequency
  row and wraps into the next one, so clusters touching the right edge are split in two. Here a
  cluster is a true ``c x c`` square (``c`` time steps x ``c`` frequency rows) clipped at the
  grid edges, so clusters are always contiguous and work on any grid.
- The original is frequency-major and its clusters extend "up and right" of a start patch; here
  the order is time-major (as everywhere in this project) and squares are centred on a patch.
- There the cluster start is drawn over all patches, masked ones included; here it is drawn
  among the valid patches not yet masked (the original has this as a commented-out
  "improves the efficiency" option), so every cluster adds at least one patch.
- The per-sample Python loops are replaced by batch-wide tensor operations.

Kept from the original: the cluster side ``c`` is drawn once per clip from {3, 4, 5}; frame
grids (one patch per time step, ``nf == 1``) use plain random masking, as SSAST does for
128x2 frame patches; patches masked for the objective are the same set the encoder hides.
"""

from __future__ import annotations

from typing import Literal

import torch

MaskKind = Literal["cluster", "random", "span"]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws made on the generator's device (so a CPU generator works for CUDA data)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _randint(
    low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gen_device).to(device)


def _check_valid(valid: torch.Tensor, grid: tuple[int, int] | None = None) -> None:
    if valid.dtype != torch.bool or valid.dim() != 2:
        raise ValueError(
            f"valid must be a (batch, patches) bool tensor, got {tuple(valid.shape)} {valid.dtype}"
        )
    if grid is not None and grid[0] * grid[1] != valid.shape[1]:
        raise ValueError(f"grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} patches but the mask has {valid.shape[1]}")


def _per_clip_counts(count: int | torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``count`` as a ``(B,)`` long tensor, checked against each clip's number of valid patches."""
    b = valid.shape[0]
    if isinstance(count, torch.Tensor):
        counts = count.to(device=valid.device, dtype=torch.long).reshape(-1)
        if counts.numel() != b:
            raise ValueError(f"count has {counts.numel()} entries for a batch of {b} clips")
    else:
        counts = torch.full((b,), int(count), dtype=torch.long, device=valid.device)
    available = valid.sum(1)
    bad = (counts < 0) | (counts > available)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"cannot mask {int(counts[i])} patches in clip {i}: it has {int(available[i])} valid "
            f"(non-padding) patches; use mask_count_for() to scale the count to short clips"
        )
    return counts


def random_mask(
    valid: torch.Tensor, count: int | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mask exactly ``count`` (int, or ``(B,)`` per clip) patches per clip, uniformly among valid patches.

    Vectorized: every patch gets a uniform score, padding scores below every valid patch, and the
    ``count`` best-ranked patches of each clip are masked.
    """
    _check_valid(valid)
    counts = _per_clip_counts(count, valid)
    b, n = valid.shape
    scores = _rand((b, n), generator, valid.device).masked_fill(~valid, -1.0)
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=valid.device).expand(b, n))
    return rank < counts[:, None]


def cluster_mask(
    valid: torch.Tensor,
    grid: tuple[int, int],
    count: int | torch.Tensor,
    generator: torch.Generator | None = None,
    min_side: int = 3,
    max_side: int = 5,
) -> torch.Tensor:
    """SSAST cluster masking on a time-major ``(nt, nf)`` grid; exactly ``count`` masked per clip.

    Each clip draws a side ``c`` in ``[min_side, max_side]`` once. Then, for all clips at once,
    each round draws one centre per clip uniformly among its valid, not yet masked patches and
    masks the ``c x c`` square around it (``c`` time steps x ``c`` frequency rows; for even ``c``
    the centre is the upper-middle patch; clipped at the grid edges, never wrapped), restricted to
    valid patches. Rounds continue until every clip has its count. The last square of a clip is
    truncated when it would overshoot: of its newly covered patches, those first in time-major
    scan order (earliest time step first, then lowest frequency row) are kept, which keeps the
    truncated part a connected run of whole time columns plus part of one.

    Frame grids (``nf == 1``) use :func:`random_mask`, as SSAST does for frame patches.
    """
    _check_valid(valid, grid)
    nf = grid[1]
    b = valid.shape[0]
    if not 1 <= min_side <= max_side:
        raise ValueError(f"cluster sides must satisfy 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if nf == 1:
        return random_mask(valid, count, generator)
    counts = _per_clip_counts(count, valid)
    device = valid.device

    side = _randint(min_side, max_side + 1, (b,), generator, device)
    # A square spans [centre - before, centre + after] on both axes (for even c the centre is the
    # upper-middle patch). Offsets are enumerated for the largest side and switched off per clip.
    before = (side - 1) // 2
    after = side - 1 - before
    span = torch.arange(-((max_side - 1) // 2), max_side - (max_side - 1) // 2, device=device)
    dt = span.repeat_interleave(span.numel())  # (S*S,) time offset of each square cell
    df = span.repeat(span.numel())  # (S*S,) frequency offset
    in_side = (
        (dt >= -before[:, None]) & (dt <= after[:, None]) & (df >= -before[:, None]) & (df <= after[:, None])
    )[:, None, :]  # (B, 1, S*S)

    return _grow_regions(valid, grid, counts, generator, dt, df, in_side, side * side)


def span_mask(
    valid: torch.Tensor,
    grid: tuple[int, int],
    count: int | torch.Tensor,
    span: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask runs of ``span`` consecutive time steps (every frequency row); exactly ``count`` masked per clip.

    Not in SSAST: it is the span masking of frame-level speech SSL (wav2vec 2.0, HuBERT, data2vec mask
    runs of 10 frames of 20 ms). On a frame grid (one 128-bin patch per time step) SSAST masks single
    frames at random, which a model can fill in from the visible frames on either side; a run of
    ``span`` steps hides the whole neighbourhood, so the model has to predict it from context. Each
    round draws one centre per clip among its valid, unmasked patches and masks the run around it
    (clipped at the clip's edges, overlapping earlier runs allowed); the last run is truncated to hit
    the count exactly, as in :func:`cluster_mask`.
    """
    _check_valid(valid, grid)
    nf = grid[1]
    b = valid.shape[0]
    if span < 1:
        raise ValueError(f"span must be >= 1 time step, got {span}")
    counts = _per_clip_counts(count, valid)
    device = valid.device
    # Offsets of one run: `span` time steps around the centre, and every frequency row whatever the
    # centre's row is (offsets -(nf-1)..nf-1, clipped to the grid).
    t_off = torch.arange(-((span - 1) // 2), span - (span - 1) // 2, device=device)
    f_off = torch.arange(-(nf - 1), nf, device=device)
    dt = t_off.repeat_interleave(f_off.numel())
    df = f_off.repeat(t_off.numel())
    everywhere = torch.ones(b, 1, dt.numel(), dtype=torch.bool, device=device)
    return _grow_regions(valid, grid, counts, generator, dt, df, everywhere, torch.full((b,), span * nf, device=device))


def _grow_regions(
    valid: torch.Tensor,
    grid: tuple[int, int],
    counts: torch.Tensor,
    generator: torch.Generator | None,
    dt: torch.Tensor,
    df: torch.Tensor,
    in_region: torch.Tensor,
    area: torch.Tensor,
) -> torch.Tensor:
    """Mask regions around random centres until each clip has ``counts`` masked patches.

    A region is the cells ``(t + dt, f + df)`` around a centre ``(t, f)`` that ``in_region`` ``(B, 1, S)``
    switches on for the clip, clipped at the grid; ``area`` ``(B,)`` is a region's full size.
    """
    nt, nf = grid
    b, n = valid.shape
    device = valid.device
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    covered = torch.zeros(b, dtype=torch.long, device=device)
    # Each round adds >= 1 patch to every unfinished clip (a centre is an unmasked patch), so this
    # ends. While a clip still needs >= k full regions it places k = need // area regions in one
    # round (they cannot overshoot, so none is truncated); this makes the round count ~logarithmic
    # instead of ~count / area. One host sync per round for the stop test.
    while True:
        need = counts - covered
        if not bool((need > 0).any()):
            break
        eligible = valid & ~mask & (need > 0)[:, None]
        per_clip = (need // area).clamp(min=1)
        k = int(per_clip.max())
        scores = _rand((b, n), generator, device).masked_fill(~eligible, -1.0)
        top = scores.topk(k, dim=1)
        used = (top.values >= 0) & (torch.arange(k, device=device) < per_clip[:, None])  # (B, k)
        t = (top.indices // nf)[:, :, None] + dt  # (B, k, S*S)
        f = (top.indices % nf)[:, :, None] + df
        cell = in_region & used[:, :, None] & (t >= 0) & (t < nt) & (f >= 0) & (f < nf)
        # Cells that are off (outside the square, the grid, or an unused centre) go to a spare column n.
        target = torch.where(cell, t * nf + f, n).reshape(b, -1)
        hit = torch.zeros(b, n + 1, dtype=torch.bool, device=device)
        hit.scatter_(1, target, True)
        new = hit[:, :n] & eligible
        # Truncation only happens in single-region rounds (k regions never exceed need).
        keep = new & (new.cumsum(dim=1) <= need[:, None])
        mask |= keep
        covered += keep.sum(dim=1)
    return mask


def mask_count_for(valid_counts: torch.Tensor, mask_count: int, total: int) -> torch.Tensor:
    """How many patches to mask in each clip, given its number of valid (non-padding) patches.

    A full clip (``valid == total``) gets ``mask_count``. A shorter clip gets the same fraction,
    ``round(mask_count * valid / total)`` (halves rounded up), but at least 1 when it has >= 2
    valid patches and never all of them (at least one stays visible, so the encoder always sees
    something). A clip with 0 or 1 valid patches gets 0.
    """
    if not 0 < mask_count < total:
        raise ValueError(
            f"mask_count must be in [1, {total - 1}] for a grid of {total} patches, got {mask_count}"
        )
    v = valid_counts.to(torch.long)
    if bool(((v < 0) | (v > total)).any()):
        raise ValueError(f"valid patch counts must lie in [0, {total}], got {v.tolist()}")
    n = (2 * mask_count * v + total) // (2 * total)  # round half up, in exact integer arithmetic
    n = torch.where(v >= 2, n.clamp(min=1), n)
    return torch.minimum(n, (v - 1).clamp(min=0))


def make_mask(
    kind: MaskKind,
    valid: torch.Tensor,
    grid: tuple[int, int],
    mask_count: int | torch.Tensor,
    generator: torch.Generator | None = None,
    span: int = 10,
) -> torch.Tensor:
    """The pretraining mask of a batch: ``kind`` "cluster" (frame grids fall back to random), "random",
    or "span" (runs of ``span`` time steps, :func:`span_mask`).

    An int ``mask_count`` is the count for a full clip, scaled to shorter clips with
    :func:`mask_count_for`; a ``(B,)`` tensor gives each clip's count directly.
    """
    _check_valid(valid)
    if isinstance(mask_count, torch.Tensor):
        counts = mask_count
    else:
        counts = mask_count_for(valid.sum(1), mask_count, valid.shape[1])
    if kind == "cluster":
        return cluster_mask(valid, grid, counts, generator)
    if kind == "random":
        return random_mask(valid, counts, generator)
    if kind == "span":
        return span_mask(valid, grid, counts, span, generator)
    raise ValueError(f"mask kind must be 'cluster', 'random' or 'span', got {kind!r}")
