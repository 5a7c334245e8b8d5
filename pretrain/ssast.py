"""The SSAST method, top to bottom: masking -> encoder -> heads -> losses, and one pretraining step.

1. **Masking** (:func:`build_masks`): which patches each clip hides, drawn only among patches that hold
   real frames (random or SSAST's cluster masks, :mod:`pretrain.masking`), from a generator that is a
   pure function of (seed, step, rank, micro-batch) (:func:`step_generator`), so a resumed run draws the
   same masks.
2. **Encoder** (:class:`Pretrainer`): the backbone sees the masked patch embeddings replaced by a
   learned mask embedding and returns per-patch features ``(B, N, D)``.
3. **Heads** (:class:`PredictionHead`): SSAST's ``cpredlayer`` / ``gpredlayer`` predict, at each masked
   position, the raw patch values (:func:`patch_targets`).
4. **Losses** (:class:`SSASTObjective`): masked-patch InfoNCE + accuracy and MSE reconstruction,
   vectorized over the batch with a different number of masked patches per clip allowed.

**Discriminative loss** (as the original *code*, ssast ``src/models/ast_models.py`` ``mpc``):
for clip ``b`` with masked positions ``1..M_b``, ``x_j`` the true patch vector and
``c_k = disc_head(o_k)`` the prediction at masked position ``k``,
``S[j, k] = x_j . c_k`` (no temperature, no L2 normalization) and
``loss_b = -1/M_b sum_j log softmax_k(S[j, :])[j]``. The negatives are the other masked patches
of the *same* clip. The softmax runs over the **predictions** ``c_k`` for each target ``x_j``.
Paper Eq. (1) instead normalizes over the targets ``x_j`` for each prediction ``c_i``; the
maintainer confirmed the mismatch and kept the code (YuanGongND/ssast#13), and so do we.
``negatives="batch"`` (not in SSAST; a study option, no gain on the demo) puts every masked patch of the
batch (of this rank) among the candidates: ``S`` is ``(T, T)`` over the batch's ``T`` masked patches, and
the loss and accuracy are still averaged per clip, then over clips.

**Accuracy** (the "masked acc" pretext metric), also as the code: with ``P = softmax_k(S)``
(row-normalized, the same matrix as the loss), column ``k`` is correct when
``argmax_j P[j, k] = k``, i.e. among all targets, prediction ``k`` gives its own target the
highest row-probability, the paper's matching direction. Note that the code takes the argmax of
the *row-softmaxed* matrix (``argmax(Softmax(dim=-1)(S), dim=0)``), not of the raw ``S``; this
differs from ``argmax_j S[j, k]`` whenever rows have different log-sum-exps.

**Averaging.** Loss and accuracy are averaged over each clip's masked positions, then over the
clips that have at least one masked patch. The original sums over clips and divides by
``B * mask_patch``, which is the same thing since every clip there has ``mask_patch`` masks.

**Generative loss.** ``mean over masked patches and P values of (gen_head(o_k) - x_k)^2``, every
masked patch weighted equally (with equal counts per clip this is the original's mean over
``B * mask_patch * 256``).

**Joint loss.** ``nce_weight * loss_d + mse_weight * loss_g`` (1 and 10, as SSAST). SSAST runs
two encoder passes with two independent masks, one per loss; :meth:`SSASTObjective.forward`
computes both from one pass (the default here), :meth:`discriminative` and :meth:`generative`
let the trainer run the two-pass variant.

Both losses are computed in fp32 (inputs upcast, autocast off) even inside an autocast region;
the heads themselves run in whatever precision the caller chose.

Targets are the raw (normalized-fbank) patch values, detached, with no per-patch normalization,
as SSAST. Their order inside a patch is time-major (:func:`pretrain.patches.patchify`), whereas
SSAST's ``nn.Unfold`` over ``(mel, time)`` is frequency-major: the losses do not care, but the
rows of an imported head's last Linear must be permuted accordingly.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MaskingSection, ObjectiveSection
from .encoder import Encoder
from .masking import make_mask, mask_count_for
from .patches import patchify, valid_patches


# ------------------------------------------------------------------------------------------ 1. masking
def step_generator(seed: int, step: int, rank: int, micro: int, which: int = 0) -> torch.Generator:
    """Masks are a pure function of (seed, step, rank, micro-batch): identical after a resume."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729 + micro * 31 + which) % (2**63))
    return g


def build_masks(masking: MaskingSection, encoder: Encoder, num_frames: torch.Tensor, frames: int,
                generators: list[torch.Generator]) -> list[torch.Tensor]:
    """One ``(B, N)`` mask per generator: ``masking.count`` patches of a full clip (fewer for a padded one),
    never a patch that is only padding, and never every patch (the losses need at least one visible)."""
    grid = encoder.grid_for(frames)
    valid = valid_patches(num_frames.cpu(), grid, encoder.config.patch, encoder.config.stride)
    total = grid[0] * grid[1]
    counts = mask_count_for(valid.sum(1), min(masking.count, total - 1), total)
    return [make_mask(masking.kind, valid, grid, counts, generator=g, span=masking.span) for g in generators]


# ------------------------------------------------------------------------------------------ 3. heads
def patch_targets(fbank: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Prediction targets ``(B, N, pt*pf)``: raw patches of ``fbank`` ``(B, T, F)`` (no overlap), detached."""
    return patchify(fbank.detach(), patch)


class PredictionHead(nn.Sequential):
    """Linear(dim, dim) -> ReLU -> Linear(dim, out_dim), SSAST's ``cpredlayer`` / ``gpredlayer``."""

    def __init__(self, dim: int, out_dim: int = 256) -> None:
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


# ------------------------------------------------------------------------------------------ 4. losses
class _Gathered:
    """The masked positions of each clip, left-packed and padded to the largest count in the batch."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.counts = mask.sum(dim=1)  # (B,)
        m = int(self.counts.max()) if mask.numel() else 0
        # Stable sort puts each clip's masked positions first, in increasing index order.
        self.index = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :m]  # (B, M)
        self.real = torch.arange(m, device=mask.device) < self.counts[:, None]  # (B, M)
        self.clips = (self.counts > 0).sum().clamp(min=1)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, M, C)`` at the masked positions (padding rows hold arbitrary patches)."""
        return torch.gather(x, 1, self.index[:, :, None].expand(-1, -1, x.shape[-1]))


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _upcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in fp32 (from half/bf16), or both in fp64 if either is (tests compare in fp64)."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.to(dtype), b.to(dtype)


class SSASTObjective(nn.Module):
    """SSAST heads and losses over per-patch features; see the module docstring for the exact definitions."""

    def __init__(self, dim: int, patch_dim: int, nce_weight: float = ObjectiveSection.nce_weight,
                 mse_weight: float = ObjectiveSection.mse_weight,
                 negatives: str = ObjectiveSection.negatives) -> None:
        super().__init__()
        if negatives not in ("clip", "batch"):
            raise ValueError(f"negatives must be 'clip' or 'batch', got {negatives!r}")
        self.dim = dim
        self.patch_dim = patch_dim
        self.nce_weight = nce_weight
        self.mse_weight = mse_weight
        self.negatives = negatives
        self.disc_head = PredictionHead(dim, patch_dim)
        self.gen_head = PredictionHead(dim, patch_dim)

    def _check(self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(
                f"mask must be a (batch, patches) bool tensor, got {tuple(mask.shape)} {mask.dtype}"
            )
        b, n = mask.shape
        if features.shape != (b, n, self.dim):
            raise ValueError(
                f"features must be (batch, patches, dim) = ({b}, {n}, {self.dim}), "
                f"got {tuple(features.shape)}"
            )
        if targets.shape != (b, n, self.patch_dim):
            raise ValueError(
                f"targets must be (batch, patches, patch_dim) = ({b}, {n}, {self.patch_dim}), "
                f"got {tuple(targets.shape)}"
            )

    def _discriminative(
        self, g: _Gathered, features: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.disc_head(g.take(features))
        if self.negatives == "batch":
            return self._discriminative_batch(g, pred, g.take(targets).detach())
        with _no_autocast(features.device):
            c, x = _upcast(pred, g.take(targets).detach())
            scores = torch.bmm(x, c.transpose(1, 2))  # (B, M, M): scores[b, j, k] = x_j . c_k
            # Padding columns are never candidates. Padding rows keep all columns so that they stay
            # finite (a clip with no masks would otherwise be all -inf -> NaN gradients).
            candidate = g.real[:, None, :] | ~g.real[:, :, None]
            logp = scores.masked_fill(~candidate, float("-inf")).log_softmax(dim=-1)
            own = logp.diagonal(dim1=1, dim2=2)  # (B, M): log p(x_j -> c_j)
            per_clip = -(own * g.real).sum(dim=1) / g.counts.clamp(min=1)
            loss = per_clip.sum() / g.clips
            with torch.no_grad():
                # Accuracy as the code: argmax over targets j of the row-softmaxed matrix, per column k.
                prob = logp.exp().masked_fill(~g.real[:, :, None], -1.0)
                m = prob.shape[-1]
                if m == 0:  # nothing masked anywhere in the batch
                    hit = g.real
                else:
                    hit = (prob.argmax(dim=1) == torch.arange(m, device=prob.device)) & g.real
                acc = (hit.sum(dim=1).to(logp.dtype) / g.counts.clamp(min=1)).sum() / g.clips
        return loss, acc

    def _discriminative_batch(self, g: _Gathered, pred: torch.Tensor,
                              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE whose candidates are all masked patches of the batch (of this rank), not only the
        clip's own: a prediction must also tell its clip from the others. Averaged as the clip variant."""
        with _no_autocast(pred.device):
            c, x = _upcast(pred[g.real], targets[g.real])  # (T, P): every real masked patch
            clip = torch.arange(g.real.shape[0], device=pred.device)[:, None].expand_as(g.real)[g.real]  # (T,)
            logp = (x @ c.T).log_softmax(dim=-1)  # logp[j, k] = log p(x_j -> c_k) over all k in the batch
            own = logp.diagonal()
            counts = g.counts.clamp(min=1).to(logp.dtype)
            per_clip = torch.zeros(g.real.shape[0], dtype=logp.dtype, device=pred.device).index_add(0, clip, -own)
            loss = (per_clip / counts).sum() / g.clips
            with torch.no_grad():
                if own.numel() == 0:
                    return loss, torch.zeros((), dtype=logp.dtype, device=pred.device)
                hit = (logp.exp().argmax(dim=0) == torch.arange(own.numel(), device=pred.device)).to(logp.dtype)
                acc = (torch.zeros_like(per_clip).index_add(0, clip, hit) / counts).sum() / g.clips
        return loss, acc

    def _generative(self, g: _Gathered, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pred = self.gen_head(g.take(features))
        with _no_autocast(features.device):
            p, x = _upcast(pred, g.take(targets).detach())
            err = (p - x).pow(2).sum(dim=-1)  # (B, M)
            return (err * g.real).sum() / (g.counts.sum().clamp(min=1) * self.patch_dim)

    def discriminative(
        self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Masked-patch InfoNCE alone: ``loss_d``, ``acc`` (fp32 scalars) and ``num_masked``."""
        self._check(features, targets, mask)
        g = _Gathered(mask)
        loss_d, acc = self._discriminative(g, features, targets)
        return {"loss_d": loss_d, "acc": acc, "num_masked": g.counts.sum()}

    def generative(
        self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Masked-patch MSE reconstruction alone: ``loss_g`` (fp32 scalar) and ``num_masked``."""
        self._check(features, targets, mask)
        g = _Gathered(mask)
        return {"loss_g": self._generative(g, features, targets), "num_masked": g.counts.sum()}

    def combine(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> torch.Tensor:
        """The joint loss ``nce_weight * loss_d + mse_weight * loss_g`` (e.g. of the two-pass variant)."""
        return self.nce_weight * loss_d + self.mse_weight * loss_g

    def forward(
        self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One-pass objective: both losses from the same features and mask.

        Returns ``loss`` (to backpropagate), ``loss_d``, ``loss_g``, ``acc`` and ``num_masked``
        (total masked patches in the batch, a long tensor).
        """
        self._check(features, targets, mask)
        g = _Gathered(mask)
        loss_d, acc = self._discriminative(g, features, targets)
        loss_g = self._generative(g, features, targets)
        return {
            "loss": self.combine(loss_d, loss_g),
            "loss_d": loss_d,
            "loss_g": loss_g,
            "acc": acc,
            "num_masked": g.counts.sum(),
        }


# ------------------------------------------------------------------------------------------ one step
class Pretrainer(nn.Module):
    """Encoder (2.) + SSAST heads and losses (3., 4.); one ``forward`` computes the whole loss (one or
    two encoder passes), so DDP sees exactly one forward per backward."""

    def __init__(self, encoder: Encoder, nce_weight: float = ObjectiveSection.nce_weight,
                 mse_weight: float = ObjectiveSection.mse_weight, negatives: str = ObjectiveSection.negatives):
        super().__init__()
        self.encoder = encoder
        pt, pf = encoder.config.patch
        self.objective = SSASTObjective(encoder.dim, pt * pf, nce_weight=nce_weight, mse_weight=mse_weight,
                                        negatives=negatives)

    def forward(self, fbank: torch.Tensor, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        targets = patch_targets(fbank, self.encoder.config.patch)
        if len(masks) == 1:  # one pass: both losses from one masked encoder pass
            feats = self.encoder(fbank, masks[0]).patches
            return self.objective(feats, targets, masks[0])
        # SSAST's original: two masks, two passes (discriminative, then generative)
        feats_d = self.encoder(fbank, masks[0]).patches
        feats_g = self.encoder(fbank, masks[1]).patches
        d = self.objective.discriminative(feats_d, targets, masks[0])
        g = self.objective.generative(feats_g, targets, masks[1])
        return {**d, **g, "loss": self.objective.combine(d["loss_d"], g["loss_g"])}
