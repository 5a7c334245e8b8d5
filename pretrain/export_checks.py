"""Checks of an export's ``config.json`` against itself and against its tensors, run when it is loaded.

A hand-edited or damaged config must be refused with one line naming the file and the key, not load
silently (``std = 0`` divides by zero, a wrong ``num_mel_bins`` fails only at the first batch) or crash
with a ``TypeError`` deep in the model. What the tensors cannot tell (a ViT's head count changes no weight
shape) is checked as far as it goes: the heads must divide the width.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .recipe_checks import backbone_table_error


def _positive_ints(value: Any, count: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with a raw export config (types, ranges, consistency), or None."""
    table = d.get("backbone_config", {})
    if not isinstance(table, dict):
        return f"backbone_config = {table!r} is not a table"
    why = backbone_table_error(str(d.get("backbone")), None, table, where="")
    if why:
        return why
    for key, count in (("patch", 2), ("stride", 2), ("pos_grid", 2)):
        if key in d and not (key == "pos_grid" and d[key] is None) and not _positive_ints(d[key], count):
            return f"{key} = {d[key]!r} is not {count} whole numbers >= 1"
    for key in ("input_frames", "num_mel_bins"):
        if key in d and not _positive_ints([d[key]], 1):
            return f"{key} = {d[key]!r} is not a whole number >= 1"
    feats = d.get("features") or {}
    norm = d.get("normalization") or {}
    if not isinstance(feats, dict) or not isinstance(norm, dict):
        return "features and normalization must be tables"
    if "num_mel_bins" in feats and feats["num_mel_bins"] != d.get("num_mel_bins", 128):
        return (f"num_mel_bins = {d.get('num_mel_bins', 128)!r} but features.num_mel_bins = "
                f"{feats['num_mel_bins']!r}: the model would get fbanks of another height than it was built for")
    for key in ("sample_rate", "frame_length_ms", "frame_shift_ms"):
        if key in feats and not (_finite(feats[key]) and feats[key] > 0):
            return f"features.{key} = {feats[key]!r} must be a number > 0"
    if "std" in norm and not (_finite(norm["std"]) and norm["std"] > 0):
        return f"normalization.std = {norm['std']!r} must be a number > 0 (it divides the fbank)"
    if "mean" in norm and not _finite(norm["mean"]):
        return f"normalization.mean = {norm['mean']!r} must be a finite number"
    heads, dim = table.get("num_heads"), table.get("dim")
    if isinstance(heads, int) and isinstance(dim, int) and (heads < 1 or dim % heads):
        return f"backbone_config.num_heads = {heads} does not divide backbone_config.dim = {dim}"
    return None


def tensors_problem(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What the tensors contradict in the config the model was built from (beyond the strict key/shape
    check), or None: the width of the patch embedding and a non-finite weight."""
    weight = state.get("patch_embed.weight")
    dim = getattr(model, "dim", None)
    if weight is not None and dim is not None and weight.shape[0] != dim:
        return f"backbone_config.dim = {dim} but patch_embed.weight is {tuple(weight.shape)}"
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        return f"tensor {bad} holds NaN or inf values"
    return None
