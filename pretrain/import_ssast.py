"""Import the published SSAST/AST checkpoints (:func:`import_checkpoint`).

The published ``.pth`` files are ``state_dict()``s of a
``DataParallel``-wrapped SSAST/AST ``ASTModel`` (timm 0.4.5 DeiT inside ``v``). They are read with
``torch.load(weights_only=True)`` only, so a file that would need code to be unpickled is refused
without running it. Everything is inferred from the tensors (see :func:`infer_architecture` and
:func:`infer_geometry`) and converted to our layout:

* token order: SSAST/AST are frequency-major (patch index ``f * nt + t``, f = 0 the lowest mel band);
  ours is time-major (``t * nf + f``). The patch part of ``pos_embed`` is permuted, the cls part kept.
* patch embedding: SSAST's ``Conv2d`` runs on ``(B, 1, F, T)`` with kernel ``(fshape, tshape)``;
  ours on ``(B, 1, T, F)`` with kernel ``(pt, pf) = (tshape, fshape)``: the kernel is transposed.
* pretraining heads ``cpredlayer`` / ``gpredlayer`` -> ``SSASTObjective.disc_head`` / ``gen_head``
  (``heads.safetensors``). Their 256 outputs follow SSAST's ``nn.Unfold(kernel=(fshape, tshape))``
  over ``(B, 1, F, T)``: output ``f_in * tshape + t_in``. Ours (``patches.patchify``) is
  ``t_in * pf + f_in``; the rows of the last Linear are permuted accordingly.
* ``cls_token`` (+ ``dist_token`` for the DeiT-distilled sizes) -> ``cls_tokens`` ``(1, C, D)``.
* ``mask_embed`` -> ``mask_embed``; ``p_input_fdim`` / ``p_input_tdim`` give the pretraining input.
* dropped on purpose: timm's untrained ImageNet classifiers ``v.head`` / ``v.head_dist`` (never used
  by SSAST/AST). AST's fine-tuned ``mlp_head`` (LayerNorm + Linear on the mean of the two cls
  outputs) is kept, unless heads are dropped, as ``classifier_head.safetensors`` in our
  ``finetune.heads.Classifier`` key names (``head.0.*`` LayerNorm, ``head.2.*`` Linear); the
  label names are not in the checkpoint, so it is not turned into a full task model.

Any key not recognized, or missing, or of the wrong shape is an error that lists them.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelSection, ObjectiveSection
from .encoder import (
    CLASSIFIER_HEAD_KEYS,
    CLASSIFIER_HEAD_NAME,
    HEADS_NAME,
    WEIGHTS_NAME,
    Encoder,
    EncoderConfig,
    ExportError,
    key_mismatch,
    load_state_strict,
    write_export,
)
from .features import FeatureConfig, Normalization
from .patches import freq_to_time_major, grid_shape, time_to_freq_major

FORMATS = ("ssast", "ast")
# SSAST head name -> SSASTObjective attribute.
_HEAD_NAMES = {"cpredlayer": "disc_head", "gpredlayer": "gen_head"}
# timm's ImageNet classifiers, present in the published files and never used by SSAST/AST.
_UNUSED_TIMM = ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias")


def unfold_rows_to_ours(w: torch.Tensor, fshape: int, tshape: int) -> torch.Tensor:
    """Rows of a head's output layer: SSAST's within-patch order ``f*tshape + t`` -> ours ``t*fshape + f``."""
    return freq_to_time_major(w, fshape, tshape, dim=0)


def ours_rows_to_unfold(w: torch.Tensor, fshape: int, tshape: int) -> torch.Tensor:
    """Inverse of :func:`unfold_rows_to_ours`."""
    return freq_to_time_major(w, tshape, fshape, dim=0)


# ------------------------------------------------------------------------------------------------
# Reading a checkpoint safely
# ------------------------------------------------------------------------------------------------


def load_torch_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict read with ``weights_only=True`` (runs no pickled code); ``module.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ExportError(
                f"{path}: refused: the file holds pickled objects other than tensors, which could run code "
                f"when loaded; only plain state-dict checkpoints are read (torch.load weights_only=True)"
                + (f" ({what})" if (what := _unsupported_global(str(e))) else "")
            ) from None
        raise ExportError(f"{path}: not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # torch raises many types for a damaged file (RuntimeError, EOFError, KeyError...)
        raise ExportError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): "
            f"{type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):  # common {"state_dict": ...} wrappers
            if wrapper in obj and isinstance(obj[wrapper], dict) and len(obj) <= 4:
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        raise ExportError(
            f"{path}: not a state dict of tensors (found a {kind}); expected SSAST/AST model weights"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _unsupported_global(message: str) -> str:
    """The line of torch's weights-only error naming the offending object (not its advice to disable it)."""
    for line in message.splitlines():
        if "unsupported global" in line.lower() or "unsupported operand" in line.lower():
            return line.strip().split(" was not an allowed global")[0].removeprefix("Trying to load ")
    return ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Inference of the architecture and geometry from the tensors
# ------------------------------------------------------------------------------------------------


@dataclass
class ViTShape:
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    num_cls: int
    fshape: int
    tshape: int


@dataclass
class Geometry:
    """SSAST's names: kernel/stride/input in (frequency, time)."""

    fstride: int
    tstride: int
    input_fdim: int
    input_tdim: int
    nf: int
    nt: int


def detect_format(state: dict[str, torch.Tensor]) -> str:
    """``ssast`` (a pretraining checkpoint: has ``p_input_fdim``) or ``ast`` (fine-tuned AST/SSAST)."""
    return "ssast" if "p_input_fdim" in state else "ast"


def _need(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise ExportError(f"{source}: missing key {key!r}")
    return state[key]


def infer_architecture(state: dict[str, torch.Tensor], source: str) -> ViTShape:
    """Size, depth, heads, MLP ratio, cls count and patch shape of an SSAST/AST ViT state dict."""
    if "v.patch_embed.proj.weight" not in state or "v.pos_embed" not in state:
        some = sorted(state)[:8]
        raise ExportError(
            f"{source}: not an SSAST/AST ViT checkpoint (no 'v.patch_embed.proj.weight' / 'v.pos_embed'); "
            f"its keys start {some}. Supported: SSAST pretraining and AST/SSAST fine-tuned ViT checkpoints"
        )
    w = state["v.patch_embed.proj.weight"]
    if w.dim() != 4 or w.shape[1] != 1:
        raise ExportError(
            f"{source}: v.patch_embed.proj.weight has shape {tuple(w.shape)}, expected (D, 1, fshape, tshape)"
        )
    dim, _, fshape, tshape = (int(s) for s in w.shape)
    if dim % 64:
        raise ExportError(f"{source}: embedding width {dim} is not a multiple of 64 (DeiT heads are 64 wide)")
    depth = 0
    while f"v.blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise ExportError(f"{source}: no transformer blocks (v.blocks.0.*)")
    fc1 = _need(state, "v.blocks.0.mlp.fc1.weight", source)
    if "v.cls_token" not in state:
        raise ExportError(f"{source}: no v.cls_token; SSAST/AST models have 1 or 2 cls tokens")
    num_cls = 2 if "v.dist_token" in state else 1
    return ViTShape(
        dim=dim,
        depth=depth,
        num_heads=dim // 64,
        mlp_ratio=fc1.shape[0] / dim,
        qkv_bias="v.blocks.0.attn.qkv.bias" in state,
        num_cls=num_cls,
        fshape=fshape,
        tshape=tshape,
    )


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def infer_geometry(
    arch: ViTShape,
    state: dict[str, torch.Tensor],
    fmt: str,
    source: str,
    fstride: int | None = None,
    tstride: int | None = None,
    input_tdim: int | None = None,
) -> Geometry:
    """Stride and input size of the stored position embeddings.

    ``ssast``: the pretraining input is stored (``p_input_fdim/tdim``) and stride = patch.
    ``ast``: only the number of patches is stored; the stride is the one that makes
    ``nf * nt`` equal it for 128 mel bins (equal strides for square patches, as every published
    model), unambiguous or given; the input length is the power of two in the range that gives
    ``nt`` (e.g. 1024 for AST AudioSet 10x10: 12 x 101 = 1212 patches), else the shortest.
    """
    num_patches = int(state["v.pos_embed"].shape[1]) - arch.num_cls
    fs, ts = arch.fshape, arch.tshape
    if fmt == "ssast":
        fdim, tdim = int(_need(state, "p_input_fdim", source)), int(_need(state, "p_input_tdim", source))
        fst, tst = fstride or fs, tstride or ts
        try:
            nt, nf = grid_shape(tdim, fdim, (ts, fs), (tst, fst))
        except ValueError as e:
            raise ExportError(f"{source}: p_input_fdim={fdim}, p_input_tdim={tdim}: {e}") from None
        if nf * nt != num_patches:
            raise ExportError(
                f"{source}: p_input_fdim={fdim}, p_input_tdim={tdim} with patch {fs}x{ts} stride {fst}x{tst} "
                f"give {nf}x{nt}={nf * nt} patches but v.pos_embed holds {num_patches}"
            )
        return Geometry(fst, tst, fdim, tdim, nf, nt)
    fdim = ModelSection.num_mel_bins  # SSAST/AST's 128
    if fs > fdim:
        raise ExportError(f"{source}: patch height {fs} exceeds {fdim} mel bins")
    candidates = []
    # A patch as tall as the spectrogram (frame patches) has one row whatever the frequency stride.
    fstrides = [fstride] if fstride else ([fs] if fs == fdim else range(1, fs + 1))
    for fst in fstrides:
        if tstride:
            tsts = [tstride]
        else:
            tsts = [fst] if fs == ts else range(1, ts + 1)
        nf = (fdim - fs) // fst + 1
        if num_patches % nf:
            continue
        nt = num_patches // nf
        for tst in tsts:
            lo = ts + (nt - 1) * tst
            if input_tdim is not None:
                if (input_tdim - ts) // tst + 1 == nt and input_tdim >= ts:
                    candidates.append(Geometry(fst, tst, fdim, input_tdim, nf, nt))
                continue
            lengths = range(lo, lo + tst)
            tdim = next((n for n in lengths if _is_pow2(n)), lo)
            candidates.append(Geometry(fst, tst, fdim, tdim, nf, nt))
    if not candidates:
        raise ExportError(
            f"{source}: no stride gives {num_patches} patches for patch {fs}x{ts} on {fdim} mel bins"
            + (f" and {input_tdim} frames" if input_tdim else "")
            + "; pass --fstride/--tstride/--input-frames"
        )
    if len(candidates) > 1:
        opts = ", ".join(f"fstride={g.fstride} tstride={g.tstride} ({g.nf}x{g.nt})" for g in candidates[:8])
        raise ExportError(
            f"{source}: the stride is ambiguous for {num_patches} patches: {opts}; "
            f"pass --fstride and --tstride"
        )
    return candidates[0]


# ------------------------------------------------------------------------------------------------
# SSAST/AST state dict <-> ours
# ------------------------------------------------------------------------------------------------

_BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def _expected_shapes(arch: ViTShape, num_pos: int) -> dict[str, tuple[int, ...]]:
    """Every encoder key of the SSAST/AST layout with its shape."""
    d, h = arch.dim, int(round(arch.dim * arch.mlp_ratio))
    shapes: dict[str, tuple[int, ...]] = {
        "v.cls_token": (1, 1, d),
        "v.pos_embed": (1, num_pos, d),
        "v.patch_embed.proj.weight": (d, 1, arch.fshape, arch.tshape),
        "v.patch_embed.proj.bias": (d,),
        "v.norm.weight": (d,),
        "v.norm.bias": (d,),
    }
    if arch.num_cls == 2:
        shapes["v.dist_token"] = (1, 1, d)
    per = {
        "norm1": [(d,), (d,)],
        "attn.qkv": [(3 * d, d), (3 * d,)],
        "attn.proj": [(d, d), (d,)],
        "norm2": [(d,), (d,)],
        "mlp.fc1": [(h, d), (h,)],
        "mlp.fc2": [(d, h), (d,)],
    }
    for i in range(arch.depth):
        for name, (ws, bs) in per.items():
            shapes[f"v.blocks.{i}.{name}.weight"] = ws
            if name != "attn.qkv" or arch.qkv_bias:
                shapes[f"v.blocks.{i}.{name}.bias"] = bs
    return shapes


@dataclass
class ConvertedCheckpoint:
    config: EncoderConfig
    encoder: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] | None  # SSASTObjective keys, our within-patch order
    classifier: dict[str, torch.Tensor] | None  # Classifier head keys (AST mlp_head)
    arch: ViTShape
    geometry: Geometry
    dropped: list[str]


def convert_ssast_state(
    state: dict[str, torch.Tensor],
    fmt: str | None = None,
    source: str = "checkpoint",
    fstride: int | None = None,
    tstride: int | None = None,
    input_tdim: int | None = None,
) -> ConvertedCheckpoint:
    """Map an SSAST/AST state dict (``module.`` already stripped) to our encoder + heads tensors."""
    fmt = fmt or detect_format(state)
    if fmt not in FORMATS:
        raise ExportError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")
    if fmt == "ssast" and "p_input_fdim" not in state:
        raise ExportError(
            f"{source}: no p_input_fdim/p_input_tdim, so not an SSAST pretraining checkpoint; "
            f"use --format ast for fine-tuned AST/SSAST checkpoints"
        )
    arch = infer_architecture(state, source)
    geo = infer_geometry(arch, state, fmt, source, fstride, tstride, input_tdim)
    required = _expected_shapes(arch, arch.num_cls + geo.nf * geo.nt)
    _check_checkpoint(state, arch, required, source)
    dropped = sorted(k for k in _UNUSED_TIMM if k in state)
    return ConvertedCheckpoint(_encoder_config(arch, geo, "mask_embed" in state), _encoder_tensors(state, arch, geo, required),
                               _head_tensors(state, arch), _classifier_tensors(state), arch, geo, dropped)


def _optional_shapes(state: dict[str, torch.Tensor], arch: ViTShape) -> dict[str, tuple[int, ...] | None]:
    """Keys a checkpoint may hold: the mask embedding, input size, heads, AST's classifier, timm's leftovers."""
    d, p = arch.dim, arch.fshape * arch.tshape
    optional: dict[str, tuple[int, ...] | None] = {"mask_embed": (1, 1, d), "p_input_fdim": (), "p_input_tdim": ()}
    for k in _UNUSED_TIMM:
        optional[k] = None
    for head in _HEAD_NAMES:
        optional |= {f"{head}.0.weight": (d, d), f"{head}.0.bias": (d,), f"{head}.2.weight": (p, d), f"{head}.2.bias": (p,)}
    labels = state["mlp_head.1.weight"].shape[0] if "mlp_head.1.weight" in state else 0
    optional |= {"mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,), "mlp_head.1.weight": (labels, d),
                 "mlp_head.1.bias": (labels,)}
    return optional


def _check_checkpoint(state: dict[str, torch.Tensor], arch: ViTShape, required: dict[str, tuple[int, ...]],
                      source: str) -> None:
    """Every key known and of the right shape; a head all there or not at all."""
    optional = _optional_shapes(state, arch)
    problems = key_mismatch(state, required, optional)
    if problems:
        raise ExportError(f"{source} is not a checkpoint of the inferred SSAST/AST ViT: {problems}")
    for group in [list(_HEAD_NAMES), ["mlp_head"]]:  # a head is all there or not at all
        names = [k for k in optional if k.split(".")[0] in group]
        present = [k for k in names if k in state]
        if present and len(present) != len(names):
            raise ExportError(f"{source}: incomplete heads: missing {sorted(set(names) - set(present))}")
    d = arch.dim
    for k in _UNUSED_TIMM:
        want = 2 if k.endswith("weight") else 1
        if k in state and (state[k].dim() != want or (want == 2 and state[k].shape[1] != d)):
            raise ExportError(
                f"{source}: {k} has shape {tuple(state[k].shape)}, expected (classes, {d}) / (classes,)"
            )


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def _encoder_tensors(state: dict[str, torch.Tensor], arch: ViTShape, geo: Geometry,
                     required: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    c = arch.num_cls
    pos = state["v.pos_embed"]
    enc: dict[str, torch.Tensor] = {
        "patch_embed.weight": _f32(state["v.patch_embed.proj.weight"].transpose(2, 3)),
        "patch_embed.bias": _f32(state["v.patch_embed.proj.bias"]),
        "backbone.cls_tokens": _f32(
            torch.cat([state["v.cls_token"]] + ([state["v.dist_token"]] if c == 2 else []), 1)
        ),
        "backbone.pos_embed": _f32(torch.cat([pos[:, :c], freq_to_time_major(pos[:, c:], geo.nf, geo.nt)], 1)),
        "backbone.norm.weight": _f32(state["v.norm.weight"]),
        "backbone.norm.bias": _f32(state["v.norm.bias"]),
    }
    for k in required:
        if k.startswith("v.blocks."):
            enc["backbone." + k[2:]] = _f32(state[k])
    if "mask_embed" in state:
        enc["mask_embed"] = _f32(state["mask_embed"])
    return enc


def _head_tensors(state: dict[str, torch.Tensor], arch: ViTShape) -> dict[str, torch.Tensor] | None:
    """SSAST's pretraining heads as SSASTObjective keys, the output rows in our within-patch order."""
    if "cpredlayer.0.weight" not in state:
        return None
    heads = {}
    for src, ours in _HEAD_NAMES.items():
        heads[f"{ours}.0.weight"] = _f32(state[f"{src}.0.weight"])
        heads[f"{ours}.0.bias"] = _f32(state[f"{src}.0.bias"])
        heads[f"{ours}.2.weight"] = _f32(unfold_rows_to_ours(state[f"{src}.2.weight"], arch.fshape, arch.tshape))
        heads[f"{ours}.2.bias"] = _f32(unfold_rows_to_ours(state[f"{src}.2.bias"], arch.fshape, arch.tshape))
    return heads


def _head_key(part: str, name: str) -> str:
    return f"{CLASSIFIER_HEAD_KEYS[part]}.{name}"


def _classifier_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """AST's ``mlp_head`` (LayerNorm, Linear) in the export's classifier-head layout."""
    if "mlp_head.0.weight" not in state:
        return None
    return {
        _head_key("norm", "weight"): _f32(state["mlp_head.0.weight"]),
        _head_key("norm", "bias"): _f32(state["mlp_head.0.bias"]),
        _head_key("linear", "weight"): _f32(state["mlp_head.1.weight"]),
        _head_key("linear", "bias"): _f32(state["mlp_head.1.bias"]),
    }


def _encoder_config(arch: ViTShape, geo: Geometry, mask_embedding: bool) -> EncoderConfig:
    return EncoderConfig(
        backbone="vit",
        backbone_config={
            "dim": arch.dim,
            "depth": arch.depth,
            "num_heads": arch.num_heads,
            "mlp_ratio": arch.mlp_ratio,
            "num_cls": arch.num_cls,
            "qkv_bias": arch.qkv_bias,
            "norm_eps": 1e-6,
        },
        patch=(arch.tshape, arch.fshape),
        stride=(geo.tstride, geo.fstride),
        input_frames=geo.input_tdim,
        num_mel_bins=geo.input_fdim,
        pos_grid=(geo.nt, geo.nf),
        mask_embedding=mask_embedding,
        features=FeatureConfig(num_mel_bins=geo.input_fdim),
        normalization=Normalization(),
    )


def to_ssast_state_dict(
    encoder: Encoder,
    heads: dict[str, torch.Tensor] | None = None,
    classifier: dict[str, torch.Tensor] | None = None,
    fmt: str = "ssast",
    prefix: str = "module.",
) -> dict[str, torch.Tensor]:
    """The inverse mapping: our ViT encoder (+ heads) as an SSAST/AST ``DataParallel`` state dict.

    Only encoders whose position embeddings are stored at the configured grid map back exactly.
    timm's unused ImageNet classifiers (``v.head``, ``v.head_dist``) are not recreated.
    """
    cfg = encoder.config
    if cfg.backbone != "vit":
        raise ExportError(f"only ViT encoders map to SSAST/AST, not {cfg.backbone!r}")
    pt, pf = cfg.patch
    nt, nf = cfg.pos_grid
    s = {k: v.detach() for k, v in encoder.state_dict().items()}
    c = encoder.num_cls
    if c == 0:
        raise ExportError("SSAST/AST models have 1 or 2 cls tokens; this encoder has none")
    pos = s["backbone.pos_embed"]
    out = {
        "v.cls_token": s["backbone.cls_tokens"][:, :1],
        "v.pos_embed": torch.cat([pos[:, :c], time_to_freq_major(pos[:, c:], nt, nf)], 1),
        "v.patch_embed.proj.weight": s["patch_embed.weight"].transpose(2, 3),
        "v.patch_embed.proj.bias": s["patch_embed.bias"],
    }
    if c == 2:
        out["v.dist_token"] = s["backbone.cls_tokens"][:, 1:2]
    for k, v in s.items():
        if k.startswith("backbone.blocks.") or k.startswith("backbone.norm."):
            out["v." + k[len("backbone.") :]] = v
    if "mask_embed" in s:
        out["mask_embed"] = s["mask_embed"]
    if fmt == "ssast":
        out["p_input_fdim"] = torch.tensor(cfg.num_mel_bins)
        out["p_input_tdim"] = torch.tensor(cfg.input_frames)
    if heads:
        for src, ours in _HEAD_NAMES.items():
            out[f"{src}.0.weight"], out[f"{src}.0.bias"] = heads[f"{ours}.0.weight"], heads[f"{ours}.0.bias"]
            out[f"{src}.2.weight"] = ours_rows_to_unfold(heads[f"{ours}.2.weight"], pf, pt)
            out[f"{src}.2.bias"] = ours_rows_to_unfold(heads[f"{ours}.2.bias"], pf, pt)
    if classifier:
        out |= {
            "mlp_head.0.weight": classifier[_head_key("norm", "weight")],
            "mlp_head.0.bias": classifier[_head_key("norm", "bias")],
            "mlp_head.1.weight": classifier[_head_key("linear", "weight")],
            "mlp_head.1.bias": classifier[_head_key("linear", "bias")],
        }
    return {prefix + k: v.contiguous() for k, v in out.items()}


def import_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    fmt: str | None = None,
    keep_heads: bool | None = None,
    fstride: int | None = None,
    tstride: int | None = None,
    input_frames: int | None = None,
) -> Path:
    """Convert a published SSAST/AST ``.pth`` into our export directory; returns it.

    ``fmt``: ``ssast`` | ``ast`` | None (detected). ``keep_heads``: None keeps the pretraining heads
    (``heads.safetensors``) and AST's classifier (``classifier_head.safetensors``) when present,
    False drops them, True requires them. ``fstride``/``tstride``/``input_frames`` resolve an
    ambiguous AST geometry. The result loads with ``Encoder.from_pretrained(out_dir)``.
    """
    src = Path(src)
    state = load_torch_checkpoint(src)
    conv = convert_ssast_state(state, fmt, str(src), fstride, tstride, input_frames)
    fmt = fmt or detect_format(state)
    has_heads = conv.heads is not None or conv.classifier is not None
    if keep_heads and not has_heads:
        raise ExportError(f"{src}: has no heads to keep (no cpredlayer/gpredlayer, no mlp_head)")
    keep = has_heads if keep_heads is None else keep_heads
    conv.config.trained_on = {
        "imported_from": {
            "file": src.name,
            "sha256": _sha256(src),
            "format": fmt,
            "dropped_keys": conv.dropped,
        }
    }
    model = Encoder(conv.config)
    load_state_strict(model, conv.encoder, str(src))  # proves the mapping fills every parameter exactly
    tensors = {WEIGHTS_NAME: conv.encoder}
    extra: dict[str, Any] = {}
    if keep and conv.heads is not None:
        tensors[HEADS_NAME] = conv.heads
        extra["pretraining"] = {
            "objective": {"nce_weight": ObjectiveSection.nce_weight, "mse_weight": ObjectiveSection.mse_weight},
            "heads_file": HEADS_NAME,
            "note": "SSAST heads; outputs in our time-major within-patch order",
        }
    if keep and conv.classifier is not None:
        tensors[CLASSIFIER_HEAD_NAME] = conv.classifier
        extra["heads"] = {
            "classifier": {
                "file": CLASSIFIER_HEAD_NAME,
                "num_labels": int(conv.classifier[_head_key("linear", "bias")].shape[0]),
                "pooling": "cls",
                "layout": "finetune.heads.Classifier head.{0,2}",
                "note": "AST mlp_head on the mean of the cls outputs; label names are not in the checkpoint",
            }
        }
    return write_export(out_dir, model.config.to_dict() | extra, tensors)
