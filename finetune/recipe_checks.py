"""What a fine-tuning recipe's values may be: the range of every numeric key and the checks across keys.

Run by :func:`finetune.config.load_finetune_recipe`; the README's "range" column is this table.
"""

from __future__ import annotations

from typing import Any

from core.limits import AT_LEAST_0, AT_LEAST_1, FINITE, POSITIVE, SEED, UNIT, Limit, check_limits

LIMITS: dict[str, Limit] = {
    "model.layer_decay": Limit(0, 1, low_inclusive=False),
    "model.stride": Limit(1, length=2),
    "model.head_dropout": Limit(0, 1, high_inclusive=False),
    "data.target_frames": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.shuffle_buffer": AT_LEAST_0,  # 0 = no shuffle buffer
    "data.folds": FINITE,
    "features.mean": FINITE,
    "features.std": POSITIVE,
    "features.stats_max_samples": AT_LEAST_1,
    "augment.freqm": AT_LEAST_0,
    "augment.timem": AT_LEAST_0,
    "augment.mixup": UNIT,
    "augment.mixup_alpha": POSITIVE,
    "augment.gain_db": AT_LEAST_0,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": Limit(0, 1, high_inclusive=False, length=2),
    "optim.eps": POSITIVE,
    "optim.head_lr_mult": POSITIVE,
    "optim.clip_grad_norm": AT_LEAST_0,
    "schedule.start": AT_LEAST_0,
    "schedule.step": AT_LEAST_1,
    "schedule.decay": Limit(0, 1, low_inclusive=False),
    "schedule.warmup_steps": AT_LEAST_0,
    "schedule.min_lr": AT_LEAST_0,
    "train.batch_size": AT_LEAST_1,
    "train.epochs": AT_LEAST_1,
    "train.steps_per_epoch": AT_LEAST_1,
    "train.seed": SEED,
    "train.weight_averaging": Limit(1, length=2),
    "train.log_every": AT_LEAST_1,
    "train.eval_batch_size": AT_LEAST_1,
    "train.probe_views": AT_LEAST_0,
    "compare.probe_epochs_factor": AT_LEAST_1,
}


def check_recipe(recipe: Any, error: type[Exception] = ValueError) -> None:
    """Every range of :data:`LIMITS`, then the checks across keys; raises ``error`` with one line."""
    check_limits(recipe, LIMITS, error)
    wa, epochs = recipe.train.weight_averaging, recipe.train.epochs
    if wa is not None and not wa[0] <= wa[1] <= epochs:
        raise error(f"train.weight_averaging = {wa} must be [first, last] epochs with "
                    f"1 <= first <= last <= train.epochs ({epochs})")
    f = recipe.features
    if (f.mean is None) != (f.std is None):
        raise error("features.mean and features.std must be given together")
