"""AudioRepInceptionNeXt (Lau, Rehman, Po 2024): a re-parameterizable CNN, under SSAST masked pretraining.

Architecture (``StevenLauHKHK/AudioRepInceptionNeXt``, see ``reference/backbones.md`` §3.3-3.5):

* stem: Conv2d(1 -> C0, 5 time x 7 freq, stride 2, no bias) -> BN -> ReLU -> MaxPool(3, s2, p1) (stride 4);
* four stages of depths (3, 4, 6, 3), widths (64, 128, 256, 512), strides (1, 2, 2, 2): total stride 32;
* block: ``h = ReLU(BN(Conv1x1_stride(x)))``; a time cascade ``h = ReLU(h + sum_k BN_k(DWConv_{k x 1}(h)))``
  and then a frequency cascade ``h = ReLU(h + sum_k BN_k(DWConv_{1 x k}(h)))`` over k in (21, 11, 3);
  an MLP ``f = BN(Conv1x1(ReLU(BN(Conv1x1(h)))))`` with ratio 4 (final BN zero-initialised);
  ``out = ReLU(shortcut(x) + f)`` with a Conv1x1+BN shortcut when width or stride change;
* BN eps 1e-5, momentum 0.1; convs Kaiming-normal (fan_out), classifier Linear N(0, 0.01).

Re-parameterization (:meth:`RepInceptionNeXt.reparameterize`): in each cascade every branch's BN is
folded into its conv (``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``), the
smaller kernels are zero-padded symmetrically to the largest and everything is summed into one
depthwise conv with bias; the identity stays an explicit ``+ h``. ``Config.fused`` records which
form the weights are in, so an export says so and loading builds that form directly.

Masked pretraining (the design, after SparK, ``reference/backbones.md`` §4). A CNN cannot drop
tokens, so sparse convolution is emulated with dense ops:

* The encoder's 16x16 patch mask is expanded to a pixel mask; at every resolution the model uses
  (strides 2, 4, 8, 16, 32) a cell is *visible* iff every input pixel it covers is visible
  (a min-pool of the pixel visibility). With 16x16 patches this is the patch mask itself at
  strides <= 16, and the *strict* rule at stride 32: a 32x32 cell is visible only if all four of
  its 16x16 patches are. (SparK instead masks whole 32x32 cells; we keep the scored 16x16 patch as
  the mask unit so the SSAST objective is unchanged, and accept that the deepest stage sees fewer
  visible cells. The pretraining recipe therefore uses cluster masks at a SparK-like ratio.)
* The input is zeroed at masked pixels before the stem, and every BatchNorm is a
  :class:`MaskedBatchNorm2d` that takes the mask of its resolution: in training it computes the
  batch mean/variance over visible positions only (and updates the running statistics from
  them) and it multiplies its output by the mask. Every conv in the network feeds a BN (the stem
  conv, the 1x1 head / shortcut / MLP convs, every depthwise branch), so masked positions are
  re-zeroed right after every convolution; in the fused form the depthwise conv has no BN and is
  re-masked explicitly; the max-pool is re-masked at stride 4. A strided 1x1 conv samples one
  stride-s cell per stride-2s cell, and that cell is visible whenever the 2s cell is (strict
  rule), so stage transitions cannot leak either. Hence features at visible positions are a
  function of visible content only (``tests/test_repinception.py`` proves it in training mode).
* A light SparK-like decoder turns the stride-32 and stride-16 maps into per-patch features for
  *all* patches: empty positions are densified with a learned per-scale mask token, each scale
  is projected by a 1x1 conv, the stride-32 map is upsampled x2 (nearest) and added to the
  stride-16 map, merged by a 3x3 conv + BN + ReLU and projected to ``dim``; a LayerNorm follows.
  Masked patches thus get features from their visible neighbourhood only, which is what the
  SSAST heads predict from.
* Without a mask (fine-tuning, inference) none of this runs: no mask multiplications, plain
  BatchNorm, a dense CNN at full speed.

Inputs whose frames / mel bins are not multiples of 32 are zero-padded internally (the padding
counts as visible) and the outputs cropped back. When the Encoder's grid is not the native
16x16 non-overlapping grid (e.g. fine-tuning with SSAST's stride 10), the stride-16 feature map is
resampled (bilinear, antialiased) to that grid; a mask is only accepted on a non-overlapping grid.

Known limits: the masked BN is per device (do not convert the model with
``nn.SyncBatchNorm.convert_sync_batchnorm``: SyncBatchNorm takes no mask); with activation
checkpointing the recomputed forward updates the BN running statistics a second time (as for any
BN network under checkpointing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneOutput

STAGE_STRIDES = (1, 2, 2, 2)
TOTAL_STRIDE = 32
PATCH_STRIDE = 16  # resolution of the map the per-patch features are read from


@dataclass
class RepInceptionConfig:
    """Hyperparameters of AudioRepInceptionNeXt plus the masked-pretraining decoder."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    mlp_ratio: int = 4
    kernels: tuple[int, ...] = (21, 11, 3)
    stem_kernel: tuple[int, int] = (5, 7)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    zero_init_final_bn: bool = True
    decoder_width: int = 256
    dim: int = 512  # width of the per-patch output features
    fused: bool = False  # True: the depthwise cascades are stored re-parameterized (one conv each)

    def __post_init__(self) -> None:
        self.widths = tuple(int(v) for v in self.widths)
        self.depths = tuple(int(v) for v in self.depths)
        self.kernels = tuple(int(v) for v in self.kernels)
        self.stem_kernel = tuple(int(v) for v in self.stem_kernel)
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError(
                f"repinception: widths {self.widths} and depths {self.depths} must have 4 stages each "
                "(the strides (1, 2, 2, 2) and the stride-16/32 decoder assume four)"
            )
        if any(v < 1 for v in self.widths + self.depths):
            raise ValueError(f"repinception: widths {self.widths} and depths {self.depths} must be >= 1")
        if not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"repinception: kernels {self.kernels} must be odd positive sizes")
        if len(self.stem_kernel) != 2 or any(k % 2 == 0 for k in self.stem_kernel):
            raise ValueError(f"repinception: stem_kernel {self.stem_kernel} must be two odd sizes")
        for key in ("mlp_ratio", "decoder_width", "dim"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"repinception: {key} must be >= 1, got {getattr(self, key)}")


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from visible positions only (SparK's sparse BN).

    ``forward(x, mask)`` with ``mask`` ``(B, 1, H, W)`` (1 = visible, 0 = masked):
    in training the batch mean and (biased) variance are taken over visible positions, the
    running statistics are updated from them (unbiased variance, as BatchNorm), and the output
    is multiplied by the mask. In eval mode the running statistics are used and the output is
    still re-masked. Without a mask it is exactly ``nn.BatchNorm2d``; parameters and buffers are
    the same, so state dicts and re-parameterization treat it as a plain BN.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        if not (self.training or self.running_mean is None):
            return super().forward(x) * mask
        count = mask.sum()
        denom = count.clamp(min=1.0)
        mean = (x * mask).sum(dim=(0, 2, 3)) / denom
        centered = x - mean[None, :, None, None]
        var = (centered.square() * mask).sum(dim=(0, 2, 3)) / denom
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        y = centered * scale[None, :, None, None]
        if self.affine:
            y = y + self.bias[None, :, None, None]
        return y * mask

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        n = float(count)
        if n < 2:  # nothing visible at this resolution in the whole batch: keep the statistics
            return
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (n / (n - 1)), factor)


def _conv_init(module: nn.Module) -> None:
    # Caffe2 "MSRA fill" as in SlowFast's init_weights: Kaiming normal, fan_out, ReLU gain.
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class MultiBranchDWConv(nn.Module):
    """One cascade: ``ReLU(h + sum_k BN_k(DWConv_k(h)))`` along time or frequency, or its fused form."""

    def __init__(self, channels: int, kernels: tuple[int, ...], axis: str, config: RepInceptionConfig):
        super().__init__()
        if axis not in ("time", "freq"):
            raise ValueError(f"axis must be 'time' or 'freq', got {axis!r}")
        self.channels, self.kernels, self.axis = channels, tuple(kernels), axis
        self.size = max(kernels)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.fused: nn.Conv2d | None = None
        if config.fused:
            self.fused = self._conv(self.size, bias=True)
        else:
            for k in self.kernels:
                self.convs.append(self._conv(k, bias=False))
                self.bns.append(MaskedBatchNorm2d(channels, eps=config.bn_eps, momentum=config.bn_momentum))

    def _conv(self, k: int, bias: bool) -> nn.Conv2d:
        shape, pad = ((k, 1), (k // 2, 0)) if self.axis == "time" else ((1, k), (0, k // 2))
        conv = nn.Conv2d(self.channels, self.channels, shape, padding=pad, groups=self.channels, bias=bias)
        _conv_init(conv)
        return conv

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused is not None:
            y = self.fused(h)
            if mask is not None:
                y = y * mask
        else:
            y = self.bns[0](self.convs[0](h), mask)
            for conv, bn in zip(self.convs[1:], self.bns[1:]):
                y = y + bn(conv(h), mask)
        return F.relu(h + y)

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One depthwise kernel ``(C, 1, K, 1)`` / ``(C, 1, 1, K)`` + bias equal to the eval-mode branches."""
        kernel = None
        ref = self.convs[0].weight
        bias = torch.zeros(self.channels, dtype=ref.dtype, device=ref.device)
        for conv, bn in zip(self.convs, self.bns):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight * scale[:, None, None, None]
            bias = bias + bn.bias - bn.running_mean * scale
            side = (self.size - w.shape[2 if self.axis == "time" else 3]) // 2
            w = F.pad(w, (0, 0, side, side) if self.axis == "time" else (side, side, 0, 0))
            kernel = w if kernel is None else kernel + w
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one depthwise conv with bias (exact in eval mode)."""
        if self.fused is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        fused = self._conv(self.size, bias=True).to(kernel.device, kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.fused = fused
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()


class RepInceptionBlock(nn.Module):
    """AudioRepInceptionNeXt block (training form §3.4); ``mask`` is at the block's output resolution."""

    def __init__(self, dim_in: int, dim: int, stride: int, config: RepInceptionConfig):
        super().__init__()
        eps, mom = config.bn_eps, config.bn_momentum
        self.head = nn.Conv2d(dim_in, dim, 1, stride=stride, bias=False)
        self.head_bn = MaskedBatchNorm2d(dim, eps=eps, momentum=mom)
        self.time_mix = MultiBranchDWConv(dim, config.kernels, "time", config)
        self.freq_mix = MultiBranchDWConv(dim, config.kernels, "freq", config)
        inner = dim * config.mlp_ratio
        self.expand = nn.Conv2d(dim, inner, 1, bias=False)
        self.expand_bn = MaskedBatchNorm2d(inner, eps=eps, momentum=mom)
        self.project = nn.Conv2d(inner, dim, 1, bias=False)
        self.project_bn = MaskedBatchNorm2d(dim, eps=eps, momentum=mom)
        self.shortcut: nn.Conv2d | None = None
        self.shortcut_bn: MaskedBatchNorm2d | None = None
        if dim_in != dim or stride != 1:
            self.shortcut = nn.Conv2d(dim_in, dim, 1, stride=stride, bias=False)
            self.shortcut_bn = MaskedBatchNorm2d(dim, eps=eps, momentum=mom)
        for conv in (self.head, self.expand, self.project, self.shortcut):
            if conv is not None:
                _conv_init(conv)
        if config.zero_init_final_bn:
            nn.init.zeros_(self.project_bn.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.head_bn(self.head(x), mask))
        h = self.freq_mix(self.time_mix(h, mask), mask)
        f = F.relu(self.expand_bn(self.expand(h), mask))
        f = self.project_bn(self.project(f), mask)
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x), mask)
        return F.relu(skip + f)


class RepInceptionTrunk(nn.Module):
    """Stem + four stages. ``forward`` returns every stage's output map (strides 4, 8, 16, 32)."""

    def __init__(self, config: RepInceptionConfig):
        super().__init__()
        c0 = config.widths[0]
        kt, kf = config.stem_kernel
        self.stem_conv = nn.Conv2d(1, c0, (kt, kf), stride=2, padding=(kt // 2, kf // 2), bias=False)
        self.stem_bn = MaskedBatchNorm2d(c0, eps=config.bn_eps, momentum=config.bn_momentum)
        _conv_init(self.stem_conv)
        self.stages = nn.ModuleList()
        dim_in = c0
        for width, depth, stride in zip(config.widths, config.depths, STAGE_STRIDES):
            blocks = [
                RepInceptionBlock(dim_in if i == 0 else width, width, stride if i == 0 else 1, config)
                for i in range(depth)
            ]
            self.stages.append(nn.ModuleList(blocks))
            dim_in = width

    def forward(
        self,
        x: torch.Tensor,
        masks: dict[int, torch.Tensor] | None = None,
        run_block: Any = None,
    ) -> list[torch.Tensor]:
        """``x`` ``(B, 1, T, F)``; ``masks`` maps stride -> ``(B, 1, T/s, F/s)`` visibility (or None)."""
        run_block = run_block or (lambda block, *args: block(*args))
        if masks is not None:
            x = x * masks[1]
        x = F.relu(self.stem_bn(self.stem_conv(x), None if masks is None else masks[2]))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        if masks is not None:
            x = x * masks[4]
        outputs = []
        stride = 4
        for stage, stage_stride in zip(self.stages, STAGE_STRIDES):
            stride *= stage_stride
            mask = None if masks is None else masks[stride]
            for block in stage:
                x = run_block(block, x, mask)
            outputs.append(x)
        return outputs


class PatchDecoder(nn.Module):
    """SparK-like light decoder: stride-32 and stride-16 maps -> ``dim`` features at stride 16."""

    def __init__(self, c16: int, c32: int, width: int, dim: int, config: RepInceptionConfig):
        super().__init__()
        # Per-scale mask tokens fill positions the sparse encoder left empty (SparK "densify").
        self.mask_token16 = nn.Parameter(torch.zeros(1, c16, 1, 1))
        self.mask_token32 = nn.Parameter(torch.zeros(1, c32, 1, 1))
        nn.init.trunc_normal_(self.mask_token16, std=0.02, a=-0.02, b=0.02)
        nn.init.trunc_normal_(self.mask_token32, std=0.02, a=-0.02, b=0.02)
        self.lateral16 = nn.Conv2d(c16, width, 1)
        self.lateral32 = nn.Conv2d(c32, width, 1)
        self.merge = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.merge_bn = nn.BatchNorm2d(width, eps=config.bn_eps, momentum=config.bn_momentum)
        self.project = nn.Conv2d(width, dim, 1)
        for conv in (self.lateral16, self.lateral32, self.merge, self.project):
            _conv_init(conv)

    def forward(
        self, f16: torch.Tensor, f32: torch.Tensor, m16: torch.Tensor | None, m32: torch.Tensor | None
    ) -> torch.Tensor:
        if m16 is not None:  # masked positions are exactly zero: add the token there
            f16 = f16 + (1.0 - m16) * self.mask_token16
            f32 = f32 + (1.0 - m32) * self.mask_token32
        y = F.interpolate(self.lateral32(f32), scale_factor=2.0, mode="nearest") + self.lateral16(f16)
        y = F.relu(self.merge_bn(self.merge(y)))
        return self.project(y)


def visibility_masks(
    mask: torch.Tensor,
    grid: tuple[int, int],
    patch: tuple[int, int],
    size: tuple[int, int],
    dtype: torch.dtype,
) -> dict[int, torch.Tensor]:
    """Per-stride visibility ``{s: (B, 1, H/s, W/s)}`` (1 = visible) from a patch mask ``(B, N)``.

    ``size`` is the (padded) input size; pixels outside the patch grid count as visible. A cell at
    stride s is visible iff every pixel it covers is (min-pool), which is the strict rule.
    """
    b = mask.shape[0]
    (nt, nf), (pt, pf) = grid, patch
    visible = (~mask).to(dtype).view(b, 1, nt, nf)
    visible = visible.repeat_interleave(pt, dim=2).repeat_interleave(pf, dim=3)
    pixels = torch.ones(b, 1, size[0], size[1], dtype=dtype, device=mask.device)
    pixels[:, :, : nt * pt, : nf * pf] = visible
    hidden = 1.0 - pixels
    masks = {1: pixels}
    for s in (2, 4, 8, 16, 32):
        masks[s] = 1.0 - F.max_pool2d(hidden, s, stride=s)
    return masks


def _to_grid(
    feat: torch.Tensor, stride: int, grid: tuple[int, int], valid: tuple[int, int], native: bool
) -> torch.Tensor:
    """A stride-``stride`` map -> ``(B, N, C)`` on the patch grid (via the stride-16 resolution)."""
    if stride < PATCH_STRIDE:
        feat = F.avg_pool2d(feat, PATCH_STRIDE // stride)
    elif stride > PATCH_STRIDE:
        feat = F.interpolate(feat, scale_factor=float(stride // PATCH_STRIDE), mode="nearest")
    if native:
        feat = feat[:, :, : grid[0], : grid[1]]
    else:  # another grid (overlapping patches, other patch shapes): resample the valid region
        feat = feat[:, :, : valid[0], : valid[1]]
        feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False, antialias=True)
    return feat.flatten(2).transpose(1, 2)


class RepInceptionNeXt(Backbone):
    """AudioRepInceptionNeXt backbone: owns its stem, returns per-patch features on the patch grid."""

    name: ClassVar[str] = "repinception"
    Config: ClassVar[type] = RepInceptionConfig
    owns_stem: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # For CPU runs and tests.
        "tiny": dict(widths=(32, 64, 128, 256), depths=(2, 2, 2, 2), decoder_width=128, dim=256),
        "small": dict(widths=(48, 96, 192, 384), depths=(2, 2, 6, 2), decoder_width=192, dim=384),
        # The paper's model (11.83M parameters with a 309-class head).
        "base": dict(widths=(64, 128, 256, 512), depths=(3, 4, 6, 3), decoder_width=256, dim=512),
    }

    def __init__(self, config: RepInceptionConfig, grid: tuple[int, int], patch: tuple[int, int]):
        super().__init__(config, grid, patch)
        self.trunk = RepInceptionTrunk(config)
        w = config.widths
        self.decoder = PatchDecoder(w[2], w[3], config.decoder_width, config.dim, config)
        self.norm = nn.LayerNorm(config.dim)

    @property
    def num_layers(self) -> int:
        return len(self.config.depths)  # one "layer" per stage: hidden states are per stage

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("trunk.stem"):
            return 0
        if param_name.startswith("trunk.stages."):
            return int(param_name.split(".")[2]) + 1
        return self.num_layers + 1  # decoder and final norm

    def no_weight_decay(self) -> set[str]:
        # Mask tokens, norm parameters and biases (all the 1-D parameters).
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or "mask_token" in n}

    def pretraining_only(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "mask_token" in n}

    def reparameterize(self) -> None:
        """Fuse every multi-branch cascade into one depthwise conv (see the module docstring).

        Call it on a trained model; equivalence holds in eval mode. Sets ``config.fused``. Through an
        Encoder use :func:`reparameterize_encoder`, which also updates the Encoder's config.
        """
        for module in self.modules():
            if isinstance(module, MultiBranchDWConv):
                module.reparameterize()
        self.config.fused = True

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        """``x`` normalized fbank ``(B, T, F)``; ``mask`` ``(B, nt * nf)`` bool (True = masked) or None."""
        b, t, f = x.shape
        nt, nf = grid
        pt, pf = self.patch
        if mask is not None and (t // pt, f // pf) != (nt, nf):
            raise ValueError(
                f"repinception: a mask needs the non-overlapping {pt}x{pf} patch grid of the input "
                f"({t // pt}x{f // pf} for {t}x{f}), got grid {nt}x{nf}; pretrain with stride == patch"
            )
        pad_t, pad_f = (-t) % TOTAL_STRIDE, (-f) % TOTAL_STRIDE
        x = x.unsqueeze(1)
        if pad_t or pad_f:
            x = F.pad(x, (0, pad_f, 0, pad_t))
        masks = None
        if mask is not None:
            masks = visibility_masks(mask, grid, self.patch, (t + pad_t, f + pad_f), x.dtype)
        stages = self.trunk(x, masks, self.run_block)
        m16, m32 = (None, None) if masks is None else (masks[16], masks[32])
        y = self.decoder(stages[2], stages[3], m16, m32)
        native_grid = (t // PATCH_STRIDE, f // PATCH_STRIDE)
        native = tuple(self.patch) == (PATCH_STRIDE, PATCH_STRIDE) and (nt, nf) == native_grid
        valid = (math.ceil(t / PATCH_STRIDE), math.ceil(f / PATCH_STRIDE))
        patches = self.norm(_to_grid(y, PATCH_STRIDE, grid, valid, native))
        hidden = None
        if output_hidden_states:
            strides = [4 * math.prod(STAGE_STRIDES[: i + 1]) for i in range(len(stages))]
            hidden = [_to_grid(s, st, grid, valid, native) for s, st in zip(stages, strides)]
        return BackboneOutput(patches=patches, cls=None, hidden_states=hidden)


def reparameterize_encoder(encoder: nn.Module) -> nn.Module:
    """Fuse a repinception Encoder in place and record ``fused=True`` in its config (for export)."""
    backbone = getattr(encoder, "backbone", None)
    if not isinstance(backbone, RepInceptionNeXt):
        raise TypeError(
            f"reparameterize_encoder needs an Encoder with a repinception backbone, got {type(backbone)}"
        )
    backbone.reparameterize()
    encoder.config.backbone_config["fused"] = True
    return encoder


class RepInceptionClassifier(nn.Module):
    """The supervised AudioRepInceptionNeXt: trunk + global average pool + Dropout + Linear (§3.3 head).

    Used to check the architecture against the paper's parameter count; takes ``(B, T, F)`` or
    ``(B, 1, T, F)``.
    """

    def __init__(self, config: RepInceptionConfig, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.config = config
        self.trunk = RepInceptionTrunk(config)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(config.widths[-1], num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.unsqueeze(1) if x.dim() == 3 else x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.feature_map(x).mean(dim=(2, 3))))

    def reparameterize(self) -> None:
        for module in self.modules():
            if isinstance(module, MultiBranchDWConv):
                module.reparameterize()
        self.config.fused = True
