"""Recipes: TOML files validated into dataclasses, with strict keys and typed ``--set`` overrides.

A recipe has the sections of :class:`Recipe`. Unknown or misspelled keys are errors that name the
key and list the valid ones. ``--set section.key=value`` overrides any field; the value is parsed
as a TOML value (``1e-4``, ``true``, ``[16, 16]``, ``"text"``) and falls back to a plain string.
TOML has no null, so ``--set data.valid=null`` is the spelling that unsets an optional key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonio import write_json_atomic


class RecipeError(ValueError):
    """An invalid recipe; the message names the key or value and what is wrong."""


@dataclass
class ModelSection:
    backbone: str = "vit"  # vit | mamba | rwkv7 | repinception
    preset: str | None = "tiny"  # size preset of the backbone (tiny/small/base, or the paper's names)
    backbone_config: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    patch: list[int] = field(default_factory=lambda: [16, 16])  # (frames, mel bins); [2, 128] = frame patches
    stride: list[int] | None = None  # None = patch (pretraining needs non-overlapping patches)
    num_mel_bins: int = 128  # fbank mel bins
    mask_embedding: bool = True  # learned mask embedding replaces masked patch embeddings (SSAST)
    init_from: str | None = None  # an export directory to start from
    gradient_checkpointing: bool = False  # activation checkpointing per block (long inputs)


@dataclass
class DataSection:
    train: str | list[str] = ""  # index.json, a directory holding one, a brace pattern, or a list of paths/URLs
    valid: str | list[str] | None = None  # held-out shards: loss and masked accuracy every val_every steps
    target_frames: int = 1024  # fbank frames per clip (random crop / zero-pad; padding never masked)
    num_workers: int = 2  # loader processes per rank (0 = in the training process)
    shuffle_buffer: int = 1000  # samples in each worker's shuffle buffer
    allow_pipe: bool = False  # pipe: URLs run shell commands
    samples_per_epoch: int | None = None  # default: the sample count in index.json


@dataclass
class FeaturesSection:
    on_device: bool = False  # compute the fbank on the training device instead of in loader workers
    mean: float | None = None  # None = AudioSet's statistics
    std: float | None = None  # with mean: normalization (x - mean) / (2 std)
    stats: str | None = None  # a JSON file written by `python -m pretrain stats`


@dataclass
class MaskingSection:
    kind: str = "cluster"  # "cluster" | "random" (frame grids always use random, as SSAST)
    count: int = 400  # masked patches per full clip (scaled down for padded clips)


@dataclass
class ObjectiveSection:
    mode: str = "one_pass"  # "one_pass" | "two_pass" (SSAST's original: two masks, two encoder passes)
    nce_weight: float = 1.0  # weight of the discriminative InfoNCE loss
    mse_weight: float = 10.0  # weight of the generative MSE loss (SSAST: 10)


@dataclass
class OptimSection:
    name: str = "adam"  # "adam" (SSAST) | "adamw"
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 5e-7  # SSAST: 5e-7 (Adam, L2); AdamW: decoupled, matrices only
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass
class ScheduleSection:
    name: str = "ssast"  # "ssast" (warmup + halve on validation plateau) | "cosine" | "constant"
    warmup_steps: int = 1000  # linear warmup from 0
    plateau_factor: float = 0.5  # ssast: LR factor on a validation plateau
    plateau_patience: int = 2  # in validations
    min_lr: float = 0.0  # floor of the LR (cosine end point)


@dataclass
class TrainSection:
    batch_size: int = 24  # per device
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 10000  # optimizer steps in total
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "no" | "bf16" | "fp16"
    seed: int = 0  # seeds the model init, data order, crops and masks
    log_every: int = 10  # steps between TensorBoard/progress updates
    val_every: int = 4000  # SSAST's epoch_iter
    val_batches: int | None = None  # None = the whole validation set
    checkpoint_every: int = 1000  # steps between checkpoints (0 = none)
    keep_checkpoints: int = 3  # the last K checkpoints are kept
    max_nonfinite: int = 10  # abort after this many non-finite losses in a row
    keep_heads: bool = True  # also export the pretraining heads (heads.safetensors)
    record_keys: bool = False  # write the sample keys each rank trained on to keys_rank{R}.txt (audits)


@dataclass
class RunSection:
    name: str = "pretrain"  # run directory name
    output_dir: str = "runs"  # runs/NAME/ holds config, checkpoints, logs, export, metrics


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


CHOICES = {
    ("masking", "kind"): ("cluster", "random"),
    ("objective", "mode"): ("one_pass", "two_pass"),
    ("optim", "name"): ("adam", "adamw"),
    ("schedule", "name"): ("ssast", "cosine", "constant"),
    ("train", "mixed_precision"): ("auto", "no", "bf16", "fp16"),
}


def _unknown_key(key: str, valid: list[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RecipeError(f"unknown key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce) ``value`` against a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is Any:
        return value
    if value is None:
        raise RecipeError(f"{where}: null only unsets optional keys; this key needs a value")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str, choices: dict | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(key, valid, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}{key}: expected a table [{key}], got {value!r}")
            kwargs[key] = _build(tp, value, f"{where}{key}.", choices)
        else:
            kwargs[key] = _check_type(value, tp, f"{where}{key}")
    obj = cls(**kwargs)
    section = where.rstrip(".")
    for f in dataclasses.fields(cls):
        allowed = (CHOICES if choices is None else choices).get((section, f.name))
        if allowed and getattr(obj, f.name) not in allowed:
            raise RecipeError(f"{where}{f.name}: {getattr(obj, f.name)!r} is not one of {', '.join(allowed)}")
    return obj


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists, quoted strings, ``{k = v}`` tables) or
    JSON (``{"k": v}``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw recipe dict (before validation)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise RecipeError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=1e-4)")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {k} is not a section")
        # TOML has no null: the bare word `null` unsets an optional key (None); "null" quoted is a string
        node[keys[-1]] = None if text.strip() == "null" else parse_value(text.strip())
    return data


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, cls: type = Recipe, choices: dict | None = None,
    check: Callable[..., None] | None = None,
) -> Any:
    """Build and validate a recipe; ``check(recipe, error)`` checks its values (default: pretraining's)."""
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    recipe = _build(cls, data, "", choices)
    if check is None:
        from .recipe_checks import check_recipe as check
    check(recipe, RecipeError)
    return recipe


def load_recipe(
    path: str | Path | None, overrides: list[str] | None = None, cls: type = Recipe, choices: dict | None = None,
    check: Callable[..., None] | None = None,
) -> Any:
    """Load and validate a TOML recipe (``None`` = all defaults), then apply ``--set`` overrides.

    ``cls``/``choices``/``check``: another recipe dataclass, its allowed values and its value checks
    (the fine-tuning recipe)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {path}: invalid TOML ({e})") from e
    try:
        return recipe_from_dict(data, overrides, cls, choices, check)
    except RecipeError as e:
        where = f"recipe {path}: " if path else ""
        raise RecipeError(f"{where}{e}") from None


def save_recipe(recipe: Any, path: str | Path) -> None:
    """Write the resolved recipe as JSON (atomically)."""
    write_json_atomic(path, dataclasses.asdict(recipe))
