"""The Encoder: patch embedding + mask embedding + backbone, and its export format.

Export = a directory with ``config.json`` (this module's :class:`EncoderConfig`, plus optional
extra sections such as a fine-tuned model's ``task``) and ``model.safetensors``. Loading never
unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.files import honour_umask

from .backbones import BackboneOutput, backbone_class, build_backbone, make_backbone_config
from .config import DataSection, ModelSection
from .features import FeatureConfig, Normalization
from .patches import grid_shape

FORMAT_VERSION = 1
# The export's file names (the contract between the stages; every reader and writer imports them).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEADS_NAME = "heads.safetensors"  # the SSAST pretraining heads (continued pretraining)
CLASSIFIER_HEAD_NAME = "classifier_head.safetensors"  # an imported AST checkpoint's classifier
# Where a classifier head's LayerNorm and Linear sit in classifier_head.safetensors and in a fine-tuned model's
# weights (a fine-tuned export also records its own in config.json ``task.head_keys``).
CLASSIFIER_HEAD_KEYS = {"norm": "head.0", "linear": "head.2"}
# Sections of config.json that other stages add and the Encoder itself does not read.
EXTRA_SECTIONS = ("task", "pretraining", "heads")


class ExportError(ValueError):
    """A model directory that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an Encoder; serialized as ``config.json``."""

    backbone: str = "vit"
    backbone_config: dict[str, Any] = field(default_factory=dict)
    patch: tuple[int, int] = (16, 16)
    stride: tuple[int, int] = (16, 16)
    input_frames: int = DataSection.target_frames
    num_mel_bins: int = ModelSection.num_mel_bins
    # Grid the positional parameters are stored for; other grids are adapted on the fly.
    pos_grid: tuple[int, int] | None = None
    token_order: str = "time-major"
    mask_embedding: bool = True
    features: FeatureConfig | None = None  # None: the fbank of num_mel_bins bins (set in __post_init__)
    normalization: Normalization = field(default_factory=Normalization)
    trained_on: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.patch = tuple(int(v) for v in self.patch)
        self.stride = tuple(int(v) for v in self.stride)
        if self.pos_grid is None:
            self.pos_grid = grid_shape(self.input_frames, self.num_mel_bins, self.patch, self.stride)
        self.pos_grid = tuple(int(v) for v in self.pos_grid)
        if self.features is None:  # the fbank must have the height the model is built for
            self.features = FeatureConfig(num_mel_bins=self.num_mel_bins)
        if isinstance(self.features, dict):
            self.features = FeatureConfig(**self.features)
        if isinstance(self.normalization, dict):
            self.normalization = Normalization(**self.normalization)
        if self.token_order != "time-major":
            raise ValueError(f"token_order {self.token_order!r} is not supported: exports are time-major")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid at the configured input length and stride."""
        return grid_shape(self.input_frames, self.num_mel_bins, self.patch, self.stride)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch"], d["stride"], d["pos_grid"] = list(self.patch), list(self.stride), list(self.pos_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> EncoderConfig:
        d = {k: v for k, v in d.items() if k not in EXTRA_SECTIONS}
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ExportError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ExportError(f"{source}: format_version {version} is newer than this code ({FORMAT_VERSION})")
        for key in ("features", "normalization"):
            if isinstance(d.get(key), dict):
                sub = FeatureConfig if key == "features" else Normalization
                names = {f.name for f in dataclasses.fields(sub)}
                bad = sorted(set(d[key]) - names)
                if bad:
                    raise ExportError(f"{source}: unknown {key} key(s) {bad}; valid: {sorted(names)}")
        return cls(**d)


@dataclass
class EncoderOutput:
    patches: torch.Tensor  # (B, N, D) per-patch features, time-major
    cls: torch.Tensor | None  # (B, C, D) or None
    hidden_states: list[torch.Tensor] | None
    grid: tuple[int, int]


class Encoder(nn.Module):
    """``Encoder(config)(fbank, mask=None)`` -> per-patch features; see the Encoder contract in ARCHITECTURE.md."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        cls = backbone_class(config.backbone)
        bconf = config.backbone_config
        if isinstance(bconf, dict):
            bconf = make_backbone_config(config.backbone, **bconf)
        config.backbone_config = dataclasses.asdict(bconf)
        self.config = config
        self.backbone = build_backbone(config.backbone, bconf, grid=config.pos_grid, patch=config.patch)
        self.owns_stem = cls.owns_stem
        dim = self.backbone.dim
        if not self.owns_stem:
            self.patch_embed = nn.Conv2d(1, dim, kernel_size=config.patch, stride=config.stride)
            if config.mask_embedding:
                self.mask_embed = nn.Parameter(torch.empty(1, 1, dim))
                nn.init.xavier_normal_(self.mask_embed)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    @property
    def num_cls(self) -> int:
        return self.backbone.num_cls

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def grid_for(self, frames: int) -> tuple[int, int]:
        return grid_shape(frames, self.config.num_mel_bins, self.config.patch, self.config.stride)

    def set_stride(self, stride: tuple[int, int]) -> None:
        """Change the patch stride (e.g. SSAST's stride 10 for fine-tuning); weights are kept."""
        self.config.stride = tuple(int(v) for v in stride)
        if not self.owns_stem:
            self.patch_embed.stride = self.config.stride

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.backbone.gradient_checkpointing = enabled

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``(B, N, D)`` in time-major order."""
        x = self.patch_embed(fbank.unsqueeze(1))  # (B, D, nt, nf)
        return x.flatten(2).transpose(1, 2)

    def forward(
        self, fbank: torch.Tensor, mask: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """``fbank`` ``(B, T, F)`` normalized; ``mask`` ``(B, N)`` bool, True = masked."""
        if fbank.dim() != 3 or fbank.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"expected fbank of shape (batch, frames, {self.config.num_mel_bins}), got {tuple(fbank.shape)}"
            )
        grid = self.grid_for(fbank.shape[1])
        if mask is not None and mask.shape != (fbank.shape[0], grid[0] * grid[1]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch grid {grid} of the input")
        if self.owns_stem:
            out: BackboneOutput = self.backbone(fbank, grid, mask, output_hidden_states)
        else:
            tokens = self.embed(fbank)
            if mask is not None and self.config.mask_embedding:
                tokens = torch.where(mask.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
            out = self.backbone(tokens, grid, mask, output_hidden_states)
        return EncoderOutput(out.patches, out.cls, out.hidden_states, grid)

    # ----- layer-wise LR decay and weight decay -----
    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("backbone."):
            return self.backbone.layer_id(param_name[len("backbone.") :])
        return 0  # patch and mask embeddings

    def no_weight_decay(self) -> set[str]:
        names = {"backbone." + n for n in self.backbone.no_weight_decay()}
        if hasattr(self, "mask_embed"):
            names.add("mask_embed")
        return names

    def pretraining_only(self) -> set[str]:
        """Names of the parameters only masked pretraining uses (the mask embedding, a backbone's mask tokens)."""
        names = {"backbone." + n for n in self.backbone.pretraining_only()}
        return names | ({"mask_embed"} if hasattr(self, "mask_embed") else set())

    # ----- export -----
    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (temporary directory, then rename)."""
        # The backbone may have changed form since construction (e.g. re-parameterized CNN).
        self.config.backbone_config = dataclasses.asdict(self.backbone.config)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        return write_export(directory, self.config.to_dict() | (extra or {}), {WEIGHTS_NAME: state})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> Encoder:
        """Rebuild an Encoder from an export directory (or a fine-tuned model's directory)."""
        from .export_checks import tensors_problem

        config_dict, weights_path = read_export(directory)
        source = str(Path(directory) / CONFIG_NAME)
        config = EncoderConfig.from_dict(config_dict, source=source)
        try:
            model = cls(config)
        except (ValueError, ZeroDivisionError) as e:
            raise ExportError(f"{source}: {e}") from e
        state = load_file(str(weights_path), device=map_location)
        prefix = "encoder."
        if any(k.startswith(prefix) for k in state):  # a fine-tuned model: the encoder part
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if problem := tensors_problem(model, state):
            raise ExportError(f"{weights_path} does not match {source}: {problem}")
        load_state_strict(model, state, str(weights_path))
        return model


def key_mismatch(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...] | None],
                 optional: dict[str, tuple[int, ...] | None] | None = None) -> str | None:
    """The one strict-key report: every missing, unexpected and mis-shaped key (None: all match).

    ``expected``/``optional`` map a key to its shape (None: any shape); optional keys may be absent."""
    optional = optional or {}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(optional))
    wrong = [f"{k}: shape {tuple(state[k].shape)} in file, {tuple(shape)} expected"
             for k, shape in sorted((expected | optional).items())
             if k in state and shape is not None and tuple(state[k].shape) != tuple(shape)]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:12]}{' ...' if len(missing) > 12 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}")
    parts += wrong[:12]
    return "; ".join(parts) or None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key."""
    problems = key_mismatch(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if problems:
        raise ExportError(f"{source} does not match the model: {problems}")
    model.load_state_dict(state, strict=True)


def write_export(
    directory: str | os.PathLike,
    config: dict[str, Any] | None,
    tensors: dict[str, dict],
    json_files: dict[str, dict] | None = None,
) -> Path:
    """Write ``config.json`` (unless None), other JSON files and safetensors files to ``directory``
    atomically: everything goes to a temporary directory that replaces ``directory`` at the end."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, state in tensors.items():
        save_file(state, str(tmp / name), metadata={"format": "pt"})
    files = ({CONFIG_NAME: config} if config is not None else {}) | (json_files or {})
    for name, obj in files.items():
        (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
    honour_umask(tmp)  # save_file writes 0600: a shared export must stay readable
    if directory.exists():
        old = directory.with_name(directory.name + ".old-export")
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def read_export(directory: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``(config dict, weights path)`` of an export directory; a config that contradicts itself is refused."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a model directory (it does not exist or is not a directory)")
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise ExportError(f"{directory}: no {CONFIG_NAME}; is this an exported model directory?")
    if not weights.is_file():
        raise ExportError(f"{directory}: no {WEIGHTS_NAME}; is this an exported model directory?")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or "backbone" not in config:
        raise ExportError(f"{cfg_path}: not an encoder config (no 'backbone' key)")
    from .export_checks import config_problem

    if problem := config_problem(config):  # checked before anything is built from it
        raise ExportError(f"{cfg_path}: {problem}")
    return config, weights
