"""The contract every backbone family implements, and the registry that finds them by name.

A backbone turns what the Encoder gives it into per-patch features on the patch grid.

* Token backbones (``owns_stem = False``: ViT, Mamba, RWKV-7) receive the embedded patch tokens
  ``(B, N, D)`` in time-major order (``index = t * nf + f``), the current grid ``(nt, nf)`` and the
  mask ``(B, N)`` (True = masked). The Encoder has already replaced masked embeddings by its
  learned mask embedding; the backbone adds its own positional information and cls tokens,
  runs its blocks and its final norm.
* Stem backbones (``owns_stem = True``: the CNN) receive the normalized fbank ``(B, T, F)``, the
  patch grid and the mask on that grid; they must keep masked regions from leaking into visible
  positions and still return features on the patch grid.

Every backbone module defines one ``Backbone`` subclass with a ``Config`` dataclass and size
``presets`` and is listed by one line in :data:`BACKBONE_MODULES` below (name -> module). Layers that
several families share (stochastic depth, position-embedding lookup) are in ``layers.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.utils.checkpoint
from torch import nn


@dataclass
class BackboneOutput:
    """What a backbone returns.

    patches: ``(B, N, D)`` per-patch features, time-major, N = nt * nf.
    cls: ``(B, C, D)`` outputs of the cls tokens, or None when the backbone has none.
    hidden_states: when requested, one ``(B, N, D_l)`` tensor per block (patch positions only).
    """

    patches: torch.Tensor
    cls: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None


class Backbone(nn.Module):
    """Base class of all backbones; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    owns_stem: ClassVar[bool] = False

    def __init__(self, config: Any, grid: tuple[int, int], patch: tuple[int, int]):
        """``grid`` is the pretraining patch grid (positional embeddings are sized for it);
        ``patch`` the patch shape in (frames, mel bins)."""
        super().__init__()
        self.config = config
        self.grid = tuple(grid)
        self.patch = tuple(patch)
        # Set by Encoder.set_gradient_checkpointing; blocks run through run_block honour it.
        self.gradient_checkpointing = False

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """Call ``block(*args)``, with activation checkpointing when enabled and training."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # Width of the per-patch features.
    @property
    def dim(self) -> int:
        return int(self.config.dim)

    # Number of cls tokens whose outputs are returned (0 = None).
    @property
    def num_cls(self) -> int:
        return int(getattr(self.config, "num_cls", 0))

    # Number of blocks; layer ids for layer-wise LR decay run 0 (embeddings) .. num_layers + 1 (head side).
    @property
    def num_layers(self) -> int:
        return int(self.config.depth)

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter (name relative to the backbone) for layer-wise LR decay."""
        return self.num_layers

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the backbone) exempt from weight decay."""
        return set()

    def pretraining_only(self) -> set[str]:
        """Parameter names (relative to the backbone) used only by masked pretraining (mask tokens), frozen
        for fine-tuning: they get no gradient there, which DDP on 2+ ranks does not accept."""
        return set()

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        raise NotImplementedError


# name -> module that defines it. Adding a backbone = one file + one line here.
BACKBONE_MODULES: dict[str, str] = {
    "vit": "pretrain.backbones.vit",
    "mamba": "pretrain.backbones.mamba",
    "rwkv7": "pretrain.backbones.rwkv7",
    "repinception": "pretrain.backbones.repinception",
}


def available_backbones() -> list[str]:
    return sorted(BACKBONE_MODULES)


def backbone_class(name: str) -> type[Backbone]:
    """The Backbone subclass registered as ``name``; a clear error for unknown names."""
    if name not in BACKBONE_MODULES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(available_backbones())}")
    module = importlib.import_module(BACKBONE_MODULES[name])
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Backbone) and obj is not Backbone and obj.name == name:
            return obj
    raise ImportError(f"module {BACKBONE_MODULES[name]} defines no Backbone subclass named {name!r}")


def make_backbone_config(name: str, preset: str | None = None, **overrides: Any) -> Any:
    """Build a backbone's Config from a preset name and field overrides, with strict key checks."""
    cls = backbone_class(name)
    values: dict[str, Any] = {}
    if preset:
        if preset not in cls.presets:
            raise ValueError(f"backbone {name!r} has no preset {preset!r}; presets: {', '.join(cls.presets)}")
        values.update(cls.presets[preset])
    values.update(overrides)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {name} backbone option(s) {unknown}; valid: {sorted(fields)}")
    return cls.Config(**values)


def build_backbone(name: str, config: Any, grid: tuple[int, int], patch: tuple[int, int]) -> Backbone:
    cls = backbone_class(name)
    if isinstance(config, dict):
        config = make_backbone_config(name, **config)
    return cls(config, grid=grid, patch=patch)
