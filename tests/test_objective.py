"""SSAST objective against a naive per-clip loop written from the equations (and the original code)."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.masking import random_mask
from pretrain.patches import patchify
from pretrain.ssast import PredictionHead, SSASTObjective, patch_targets

pytestmark = pytest.mark.timeout(60)

DIM, P = 16, 12


def naive(obj: SSASTObjective, feats: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """Per clip: S = X C^T over its masked patches, InfoNCE with softmax over predictions (code's
    direction), accuracy by an explicit column loop over argmax_j softmax_k(S)[j, k]; MSE over
    every masked patch value. Clip averages, then the mean over clips that have masks."""
    losses, accs = [], []
    sq_err, n_values = 0.0, 0
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        if not idx:
            continue
        x = targets[b, idx]  # (M, P) true patches
        c = obj.disc_head(feats[b, idx])  # (M, P) predictions
        s = x @ c.T  # s[j, k] = x_j . c_k
        logp = torch.log_softmax(s, dim=1)
        losses.append(-sum(logp[j, j] for j in range(len(idx))) / len(idx))
        prob = torch.softmax(s, dim=1)
        correct = 0
        for k in range(len(idx)):
            best_j, best = 0, prob[0, k]
            for j in range(1, len(idx)):
                if prob[j, k] > best:
                    best_j, best = j, prob[j, k]
            correct += int(best_j == k)
        accs.append(correct / len(idx))
        r = obj.gen_head(feats[b, idx])
        sq_err = sq_err + ((r - x) ** 2).sum()
        n_values += len(idx) * x.shape[1]
    loss_d = sum(losses) / len(losses)
    return loss_d, sum(accs) / len(accs), sq_err / n_values


def data(seed: int, counts: list[int], n: int = 20, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b = len(counts)
    feats = torch.randn(b, n, DIM, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randn(b, n, P, generator=g, dtype=dtype)
    mask = random_mask(torch.ones(b, n, dtype=torch.bool), torch.tensor(counts), g)
    return feats, targets, mask


def objective(seed: int = 0, dtype=torch.float64) -> SSASTObjective:
    torch.manual_seed(seed)
    return SSASTObjective(DIM, P).to(dtype)


def grads(loss: torch.Tensor, obj: SSASTObjective, feats: torch.Tensor) -> list[torch.Tensor]:
    inputs = [feats, *obj.parameters()]
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop_with_varying_counts(seed):
    obj = objective(seed)
    feats, targets, mask = data(seed, [7, 1, 13, 0, 20, 2])  # includes a clip with none masked
    out = obj(feats, targets, mask)
    ref_d, ref_acc, ref_g = naive(obj, feats, targets, mask)
    assert abs(out["loss_d"].item() - ref_d.item()) <= 1e-6
    assert abs(out["loss_g"].item() - ref_g.item()) <= 1e-6
    assert abs(out["acc"].item() - ref_acc) <= 1e-6
    assert out["num_masked"].item() == 43
    assert torch.allclose(out["loss"], out["loss_d"] + 10.0 * out["loss_g"], rtol=0, atol=1e-12)

    got = grads(out["loss"], obj, feats)
    want = grads(ref_d + 10.0 * ref_g, obj, feats)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-6
    assert got[0].abs().sum() > 0


def test_separate_losses_equal_one_pass_and_match_naive():
    obj = objective(3)
    feats, targets, mask = data(3, [5, 9, 3, 11])
    one = obj(feats, targets, mask)
    d = obj.discriminative(feats, targets, mask)
    g = obj.generative(feats, targets, mask)
    assert torch.equal(d["loss_d"], one["loss_d"]) and torch.equal(d["acc"], one["acc"])
    assert torch.equal(g["loss_g"], one["loss_g"])
    ref_d, _, ref_g = naive(obj, feats, targets, mask)
    gd = grads(d["loss_d"], obj, feats)
    for a, b in zip(gd, grads(ref_d, obj, feats)):
        assert (a - b).abs().max().item() <= 1e-6
    assert torch.allclose(obj.combine(d["loss_d"], g["loss_g"]), one["loss"], rtol=0, atol=1e-12)


def test_equal_counts_equal_the_original_normalization():
    # The original sums log-probs over clips and divides by B * mask_patch; MSE is a plain mean.
    obj = objective(4)
    feats, targets, mask = data(4, [6, 6, 6])
    out = obj(feats, targets, mask)
    idx = torch.stack([m.nonzero().flatten() for m in mask])  # (B, M)
    x = torch.stack([targets[b, idx[b]] for b in range(3)])
    o = torch.stack([feats[b, idx[b]] for b in range(3)])
    total = torch.einsum("bjp,bkp->bjk", x, obj.disc_head(o))
    nce = torch.diagonal(torch.log_softmax(total, dim=-1), dim1=1, dim2=2).sum() / (-1.0 * 3 * 6)
    correct = (torch.softmax(total, dim=-1).argmax(dim=1) == torch.arange(6)).sum()
    mse = ((obj.gen_head(o) - x) ** 2).mean()
    assert abs(out["loss_d"].item() - nce.item()) <= 1e-9
    assert abs(out["acc"].item() - correct.item() / 18) <= 1e-9
    assert abs(out["loss_g"].item() - mse.item()) <= 1e-9


def test_accuracy_uses_the_row_softmax_like_the_code():
    # Heads reduced to identity so that c_k = relu(o_k); S[j, k] = x_j[k].
    obj = SSASTObjective(2, 2).double()
    with torch.no_grad():
        for head in (obj.disc_head, obj.gen_head):
            head[0].weight.copy_(torch.eye(2))
            head[2].weight.copy_(torch.eye(2))
            head[0].bias.zero_()
            head[2].bias.zero_()
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    targets = torch.tensor([[[10.0, 9.0], [0.0, -5.0]]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = obj(feats, targets, mask)
    # Raw S: column 0's best row is 0 (10 > 0) -> acc 0.5 by argmax_j S[j, k]; but row-softmax
    # gives P[1, 0] = 0.993 > P[0, 0] = 0.731, so the code's accuracy is 0.
    assert out["acc"].item() == 0.0
    expected = -(torch.log_softmax(targets[0, 0], 0)[0] + torch.log_softmax(targets[0, 1], 0)[1]) / 2
    assert abs(out["loss_d"].item() - expected.item()) <= 1e-12
    assert abs(out["loss_g"].item() - ((1 - 10) ** 2 + 9**2 + 0 + (1 + 5) ** 2) / 4) <= 1e-12


def test_fp32_and_autocast_compute_losses_in_fp32():
    obj64 = objective(5)
    feats, targets, mask = data(5, [8, 4, 12])
    ref = obj64(feats, targets, mask)
    obj = objective(5, torch.float32)
    f32, t32 = feats.detach().float(), targets.float()
    out = obj(f32, t32, mask)
    assert out["loss"].dtype == torch.float32
    for key in ("loss_d", "loss_g"):
        assert abs(out[key].item() - ref[key].item()) <= 1e-4 * max(1.0, abs(ref[key].item()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = obj(f32, t32, mask)
    for key in ("loss", "loss_d", "loss_g", "acc"):
        assert amp[key].dtype == torch.float32
    assert math.isfinite(amp["loss"].item())
    assert abs(amp["loss_d"].item() - ref["loss_d"].item()) < 0.1 * abs(ref["loss_d"].item()) + 0.1


def test_no_masked_patch_gives_zero_loss_and_finite_gradients():
    obj = objective(6)
    feats, targets, _ = data(6, [0, 0])
    mask = torch.zeros(2, 20, dtype=torch.bool)
    out = obj(feats, targets, mask)
    assert out["loss"].item() == 0.0 and out["num_masked"].item() == 0
    for g in grads(out["loss"], obj, feats):
        assert torch.isfinite(g).all()


def test_targets_are_detached_raw_patches():
    fbank = torch.randn(2, 32, 16, requires_grad=True)
    t = patch_targets(fbank, (16, 16))
    assert not t.requires_grad
    assert torch.equal(t, patchify(fbank.detach(), (16, 16)))
    assert t.shape == (2, 2, 256)
    # the objective never sends gradient into the targets, even if given ones with grad
    obj = SSASTObjective(DIM, 256)
    feats = torch.randn(2, 2, DIM)
    targets = patchify(fbank, (16, 16))
    obj(feats, targets, torch.ones(2, 2, dtype=torch.bool))["loss"].backward()
    assert fbank.grad is None


def test_heads_and_shape_errors():
    head = PredictionHead(8, 4)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[0].weight.shape == (8, 8) and head[2].weight.shape == (4, 8)
    obj = SSASTObjective(DIM, P)
    feats, targets, mask = data(0, [3, 3], dtype=torch.float32)
    with pytest.raises(ValueError, match="targets must be"):
        obj(feats, targets[..., :5], mask)
    with pytest.raises(ValueError, match="features must be"):
        obj(feats[:, :, :4], targets, mask)
    with pytest.raises(ValueError, match="mask must be"):
        obj(feats, targets, mask.long())


def naive_batch_negatives(obj: SSASTObjective, feats: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """``negatives="batch"``: one S = X C^T over every masked patch of the batch; each clip's loss and
    accuracy are its own rows' / columns' averages, then the mean over clips that have masks."""
    rows = [(b, n) for b in range(mask.shape[0]) for n in mask[b].nonzero().flatten().tolist()]
    x = torch.stack([targets[b, n] for b, n in rows])
    c = torch.stack([obj.disc_head(feats[b, n]) for b, n in rows])
    logp = torch.log_softmax(x @ c.T, dim=1)
    prob = logp.exp()
    losses, accs = [], []
    for clip in sorted({b for b, _ in rows}):
        mine = [i for i, (b, _) in enumerate(rows) if b == clip]
        losses.append(-sum(logp[i, i] for i in mine) / len(mine))
        accs.append(sum(int(max(range(len(rows)), key=lambda j: prob[j, k]) == k) for k in mine) / len(mine))
    return sum(losses) / len(losses), sum(accs) / len(accs)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_negatives_match_naive_and_differ_from_clip_negatives(seed):
    obj = objective(seed)
    obj.negatives = "batch"
    feats, targets, mask = data(seed, [7, 1, 13, 0, 20, 2])
    out = obj(feats, targets, mask)
    ref_d, ref_acc = naive_batch_negatives(obj, feats, targets, mask)
    assert abs(out["loss_d"].item() - ref_d.item()) <= 1e-9
    assert abs(out["acc"].item() - ref_acc) <= 1e-9
    for a, b in zip(grads(out["loss_d"], obj, feats), grads(ref_d, obj, feats)):
        assert (a - b).abs().max().item() <= 1e-9
    obj.negatives = "clip"  # more candidates: a harder task, a larger loss than the clip's own
    assert out["loss_d"].item() > obj(feats, targets, mask)["loss_d"].item()
    obj.negatives = "batch"
    empty = obj(feats, targets, torch.zeros_like(mask))
    assert empty["loss"].item() == 0.0
    with pytest.raises(ValueError, match="negatives must be"):
        SSASTObjective(DIM, P, negatives="global")
