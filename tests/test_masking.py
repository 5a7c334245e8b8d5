"""Masking properties: exact counts, only valid patches, contiguous clusters, seeding, any grid."""

from __future__ import annotations

import pytest
import torch

from pretrain.masking import cluster_mask, make_mask, mask_count_for, random_mask, span_mask
from pretrain.patches import valid_patches

pytestmark = pytest.mark.timeout(60)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def components(cells: set[tuple[int, int]]) -> list[set[tuple[int, int]]]:
    """4-connected components of a set of (t, f) cells."""
    left, out = set(cells), []
    while left:
        stack, comp = [left.pop()], set()
        while stack:
            t, f = stack.pop()
            comp.add((t, f))
            for nb in ((t + 1, f), (t - 1, f), (t, f + 1), (t, f - 1)):
                if nb in left:
                    left.remove(nb)
                    stack.append(nb)
        out.append(comp)
    return out


def cells_of(row: torch.Tensor, nf: int) -> set[tuple[int, int]]:
    return {(int(i) // nf, int(i) % nf) for i in row.nonzero().flatten()}


def short_clip_valid(grid: tuple[int, int], real_steps: list[int]) -> torch.Tensor:
    """Valid patches of clips with ``real_steps`` real time steps (1-frame patches, so steps = frames)."""
    return valid_patches(torch.tensor(real_steps), grid, (1, 1), (1, 1))


GRIDS = [(64, 8), (10, 8), (7, 3), (3, 7), (512, 1), (1, 12)]


@pytest.mark.parametrize("kind", ["cluster", "random", "span"])
@pytest.mark.parametrize("grid", GRIDS)
def test_exact_counts_fixed_and_per_clip(kind, grid):
    nt, nf = grid
    n = nt * nf
    valid = torch.ones(6, n, dtype=torch.bool)
    fn = {
        "cluster": lambda v, c, g: cluster_mask(v, grid, c, g),
        "random": random_mask,
        "span": lambda v, c, g: span_mask(v, grid, c, 4, g),
    }[kind]
    fixed = max(1, (3 * n) // 4)
    m = fn(valid, fixed, gen(0))
    assert m.dtype == torch.bool and m.shape == (6, n)
    assert m.sum(1).tolist() == [fixed] * 6
    per_clip = torch.tensor([0, 1, n // 3, n // 2, n - 1, n])
    assert fn(valid, per_clip, gen(1)).sum(1).tolist() == per_clip.tolist()


@pytest.mark.parametrize("kind", ["cluster", "random", "span"])
def test_only_valid_patches_masked(kind):
    grid = (16, 8)
    valid = short_clip_valid(grid, [16, 12, 5, 2])
    counts = mask_count_for(valid.sum(1), 100, 128)
    for seed in range(5):
        m = make_mask(kind, valid, grid, 100, gen(seed))
        assert not (m & ~valid).any()
        assert m.sum(1).tolist() == counts.tolist()
        assert ((valid & ~m).sum(1) >= 1).all()  # something stays visible


def test_too_many_masks_is_a_clear_error():
    valid = short_clip_valid((8, 4), [8, 2])
    with pytest.raises(ValueError, match="clip 1: it has 8 valid"):
        random_mask(valid, 10, gen(0))
    with pytest.raises(ValueError, match="'cluster', 'random' or 'span'"):
        make_mask("blocks", valid, (8, 4), 3, gen(0))
    with pytest.raises(ValueError, match="grid 8x5"):
        cluster_mask(valid, (8, 5), 3, gen(0))


@pytest.mark.parametrize("side", [3, 4, 5])
def test_single_cluster_is_one_connected_block(side):
    # Any square, even one clipped into a grid corner, covers >= ceil(side/2)^2 cells, so with
    # that count a single square is drawn (possibly truncated): connected, inside a side x side box.
    grid = (20, 8)
    count = ((side + 1) // 2) ** 2
    valid = torch.ones(200, 160, dtype=torch.bool)
    m = cluster_mask(valid, grid, count, gen(side), min_side=side, max_side=side)
    for row in m:
        cells = cells_of(row, grid[1])
        assert len(cells) == count
        assert len(components(cells)) == 1
        ts, fs = [t for t, _ in cells], [f for _, f in cells]
        assert max(ts) - min(ts) < side and max(fs) - min(fs) < side


@pytest.mark.parametrize("side", [3, 4, 5])
def test_count_c_squared_gives_full_squares(side):
    # With count = c*c, a first square that is not clipped by an edge is the whole mask, so every
    # clip whose mask touches no grid edge must be exactly a c x c square; most clips are.
    grid = (64, 8)
    nt, nf = grid
    m = cluster_mask(torch.ones(300, nt * nf, dtype=torch.bool), grid, side * side, gen(7), side, side)
    exact = 0
    for row in m:
        cells = cells_of(row, nf)
        ts, fs = [t for t, _ in cells], [f for _, f in cells]
        is_square = max(ts) - min(ts) == side - 1 and max(fs) - min(fs) == side - 1 and len(cells) == side**2
        exact += is_square
        if min(ts) > 0 and max(ts) < nt - 1 and min(fs) > 0 and max(fs) < nf - 1:
            assert is_square, sorted(cells)
    assert exact > 0.4 * len(m)


def test_clusters_are_clumped():
    grid = (64, 8)
    nt, nf = grid
    valid = torch.ones(64, nt * nf, dtype=torch.bool)

    def neighbour_pairs(m: torch.Tensor) -> float:
        g = m.reshape(-1, nt, nf)
        return float((g[:, 1:] & g[:, :-1]).sum() + (g[:, :, 1:] & g[:, :, :-1]).sum()) / len(m)

    cm, rm = cluster_mask(valid, grid, 100, gen(0)), random_mask(valid, 100, gen(0))
    # 100 of 512 at random: ~ (7*8 + 64*7) * (100/512)^2 ~ 19 adjacent pairs; clusters: far more.
    assert neighbour_pairs(cm) > 3 * neighbour_pairs(rm)
    # (No wrapping across frequency rows is shown by the single-cluster test: a wrapped square
    # would fall apart into two components.)


def test_first_and_last_index_can_be_masked():
    # The original never masks index 0 (``> 0`` test) nor the last index (set truncation): we do.
    valid = torch.ones(256, 512, dtype=torch.bool)
    for kind in ("cluster", "random", "span"):
        m = make_mask(kind, valid, (64, 8), 400, gen(3))
        assert m[:, 0].any() and m[:, -1].any(), kind


@pytest.mark.parametrize("kind", ["cluster", "random", "span"])
def test_determinism_by_seed(kind):
    valid = short_clip_valid((64, 8), [64, 40, 10, 64])
    a = make_mask(kind, valid, (64, 8), 400, gen(11))
    b = make_mask(kind, valid, (64, 8), 400, gen(11))
    c = make_mask(kind, valid, (64, 8), 400, gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_frame_grid_uses_random_masking():
    grid = (512, 1)  # frame patches: one per time step
    valid = torch.ones(4, 512, dtype=torch.bool)
    assert torch.equal(make_mask("cluster", valid, grid, 400, gen(5)), random_mask(valid, 400, gen(5)))


def test_cluster_mask_covers_frequency_rows_evenly():
    # The original masks the lowest mel row about half as often as the middle ones; clipped squares
    # centred on random patches keep the edge rows within a modest factor of the middle rows.
    m = cluster_mask(torch.ones(512, 512, dtype=torch.bool), (64, 8), 400, gen(2))
    per_row = m.reshape(-1, 64, 8).float().mean(dim=(0, 1))
    assert per_row.min() > 0.65 * per_row.max(), per_row


def test_mask_count_for_properties():
    total, mc = 512, 400
    v = torch.arange(0, total + 1)
    n = mask_count_for(v, mc, total)
    assert n[total] == mc  # a full clip gets the recipe's count
    assert n[0] == 0 and n[1] == 0
    assert (n[2:] >= 1).all()  # at least one masked patch when possible
    assert (n[1:] <= v[1:] - 1).all()  # never every valid patch
    assert (n[1:] >= n[:-1]).all()  # monotone in the clip length
    # same fraction as the full clip, up to rounding (and the clamps at the short end)
    frac = (mc * v[2:].double() / total).round()
    assert ((n[2:].double() - frac).abs() <= 1).all()
    assert mask_count_for(torch.tensor([256]), 400, 512).item() == 200
    with pytest.raises(ValueError, match="mask_count"):
        mask_count_for(v, 512, total)
    with pytest.raises(ValueError, match="valid patch counts"):
        mask_count_for(torch.tensor([600]), mc, total)


def test_batch_of_64_clips_runs():
    # Speed sanity for the training-size case (timed in bench/, not asserted here).
    valid = short_clip_valid((64, 8), [64] * 60 + [50, 30, 9, 1])
    m = make_mask("cluster", valid, (64, 8), 400, gen(0))
    assert m.sum(1).tolist() == mask_count_for(valid.sum(1), 400, 512).tolist()


def run_lengths(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    out, length = [], 0
    for x in row.tolist() + [False]:
        if x:
            length += 1
        elif length:
            out.append(length)
            length = 0
    return out


def test_span_mask_hides_whole_time_steps():
    # Every frequency row of a masked time step is masked, except in at most one truncated step.
    grid = (64, 8)
    valid = short_clip_valid(grid, [64, 50, 20, 64])
    m = span_mask(valid, grid, mask_count_for(valid.sum(1), 400, 512), 5, gen(0))
    per_step = m.reshape(4, 64, 8).sum(2)
    valid_rows = valid.reshape(4, 64, 8).sum(2)
    partial = (per_step > 0) & (per_step < valid_rows)
    assert (partial.sum(1) <= 1).all()


def test_span_mask_makes_runs_not_scattered_frames():
    # On a frame grid, half the frames masked: random masks make runs of ~2 frames on average,
    # spans of 10 make runs of >= 10 (merged spans are longer, clipped or truncated ones shorter).
    valid = torch.ones(64, 256, dtype=torch.bool)
    spans = [n for row in span_mask(valid, (256, 1), 128, 10, gen(1)) for n in run_lengths(row)]
    scattered = [n for row in random_mask(valid, 128, gen(1)) for n in run_lengths(row)]
    assert sum(scattered) / len(scattered) < 2.5
    assert sum(spans) / len(spans) > 10
    # One span's worth of masking is mostly one run of exactly `span` steps.
    single = span_mask(torch.ones(200, 100, dtype=torch.bool), (100, 1), 10, 10, gen(2))
    assert sum(run_lengths(row) == [10] for row in single) > 160


def test_span_mask_rejects_a_zero_span():
    with pytest.raises(ValueError, match="span must be >= 1"):
        span_mask(torch.ones(1, 8, dtype=torch.bool), (8, 1), 2, 0, gen(0))
