"""Backbone families, found by name. The registry line for each lives in ``base.BACKBONE_MODULES``."""

from .base import (
    BACKBONE_MODULES,
    Backbone,
    BackboneOutput,
    available_backbones,
    backbone_class,
    build_backbone,
    make_backbone_config,
)

__all__ = [
    "BACKBONE_MODULES",
    "Backbone",
    "BackboneOutput",
    "available_backbones",
    "backbone_class",
    "build_backbone",
    "make_backbone_config",
]
