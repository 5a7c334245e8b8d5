"""What a pretraining recipe's values may be: the range of every numeric key, and the checks that span
keys (the backbone's table against the chosen backbone, clip length against patch size).

Run by :func:`pretrain.config.load_recipe` once the recipe is built, so a bad value is refused before any
data is read; the README's "range" column is this table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.limits import AT_LEAST_0, AT_LEAST_1, FINITE, POSITIVE, SEED, Limit, check_limits

LIMITS: dict[str, Limit] = {
    "model.patch": Limit(1, length=2),
    "model.stride": Limit(1, length=2),
    "model.num_mel_bins": Limit(1, 256),  # a 512-point FFT has 257 bins
    "data.target_frames": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.shuffle_buffer": AT_LEAST_0,  # 0 = no shuffle buffer
    "data.samples_per_epoch": AT_LEAST_1,
    "features.mean": FINITE,
    "features.std": POSITIVE,
    "masking.count": AT_LEAST_1,
    "masking.span": AT_LEAST_1,
    "objective.nce_weight": AT_LEAST_0,
    "objective.mse_weight": AT_LEAST_0,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": Limit(0, 1, high_inclusive=False, length=2),
    "optim.eps": POSITIVE,
    "optim.clip_grad_norm": AT_LEAST_0,
    "schedule.warmup_steps": AT_LEAST_0,
    "schedule.plateau_factor": Limit(0, 1, low_inclusive=False),
    "schedule.plateau_patience": AT_LEAST_1,
    "schedule.min_lr": AT_LEAST_0,
    "train.batch_size": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.max_steps": AT_LEAST_1,
    "train.seed": SEED,
    "train.log_every": AT_LEAST_1,
    "train.val_every": AT_LEAST_1,
    "train.val_batches": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_0,
    "train.keep_checkpoints": AT_LEAST_1,
    "train.max_nonfinite": AT_LEAST_1,
    "train.max_corrupt_listed": AT_LEAST_0,
    "eval.probe_every": AT_LEAST_0,
    "eval.probe_max_clips": AT_LEAST_1,
}


def backbone_table_error(backbone: str, preset: str | None, table: dict[str, Any], where: str = "model.") -> str | None:
    """Why ``backbone_config`` cannot configure ``backbone`` (None: it can); ``where`` prefixes key names."""
    from .backbones import BACKBONE_MODULES, available_backbones, backbone_class

    if backbone not in BACKBONE_MODULES:
        return f"{where}backbone = {backbone!r} is not one of {', '.join(available_backbones())}"
    cls = backbone_class(backbone)
    if preset and preset not in cls.presets:
        return f"{where}preset = {preset!r}: backbone {backbone!r} has presets {', '.join(cls.presets)}"
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        owners = [n for n in available_backbones() if n != backbone
                  and set(unknown) <= {f.name for f in dataclasses.fields(backbone_class(n).Config)}]
        whose = f"they belong to another backbone ({', '.join(owners)})" if owners else "they are not its options"
        fix = (f"; replace the table: --set 'model.backbone_config={{}}' (or a [model.backbone_config] for "
               f"{backbone})" if where == "model." else "")
        return (f"{where}backbone_config has key(s) {unknown} that {backbone} does not take: {whose}{fix}; "
                f"{backbone} takes {sorted(fields)}")
    for key, value in table.items():  # the Config dataclasses are typed: catch "128" for an int
        want = fields[key].type if isinstance(fields[key].type, str) else fields[key].type.__name__
        if want in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{where}backbone_config.{key} = {value!r} is not a number"
        if want == "int" and isinstance(value, float):
            return f"{where}backbone_config.{key} = {value!r} is not a whole number"
    return None


def check_recipe(recipe: Any, error: type[Exception] = ValueError) -> None:
    """Every range of :data:`LIMITS`, then the checks across keys; raises ``error`` with one line."""
    check_limits(recipe, LIMITS, error)
    m, d = recipe.model, recipe.data
    if m.init_from is None:
        why = backbone_table_error(m.backbone, m.preset, m.backbone_config)
        if why:
            raise error(why)
        from .backbones import make_backbone_config

        try:  # the Config's own checks (e.g. heads dividing the width)
            make_backbone_config(m.backbone, m.preset, **m.backbone_config)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            raise error(f"model.backbone_config: {e}") from None
    if d.target_frames < m.patch[0]:
        raise error(f"data.target_frames = {d.target_frames} is shorter than one patch (model.patch {m.patch})")
    if m.num_mel_bins < m.patch[1]:
        raise error(f"model.num_mel_bins = {m.num_mel_bins} is smaller than one patch (model.patch {m.patch})")
    from .patches import grid_shape

    nt, nf = grid_shape(d.target_frames, m.num_mel_bins, tuple(m.patch), tuple(m.stride or m.patch))
    if recipe.masking.count >= nt * nf:
        raise error(f"masking.count = {recipe.masking.count} masks every patch of a full clip ({nt} x {nf} = "
                    f"{nt * nf} patches): leave some visible")
    if recipe.objective.nce_weight == 0 and recipe.objective.mse_weight == 0:
        raise error("objective.nce_weight and objective.mse_weight are both 0: nothing to learn")
    if (recipe.features.mean is None) != (recipe.features.std is None):
        raise error("features.mean and features.std must be given together")
