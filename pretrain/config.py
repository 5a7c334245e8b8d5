"""The pretraining recipe: its sections, defaults and allowed values (loading is ``core.recipe``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.recipe import Choices, RecipeBase, RecipeError, RunSection, save_recipe
from core.recipe import load_recipe as _load

from .recipe_checks import check_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "save_recipe"]


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
    train: str | list[str] = ""  # index.json, a directory holding one, a brace pattern, or a list of these/paths/URLs
    valid: str | list[str] | None = None  # held-out shards: loss and masked accuracy every val_every steps
    target_frames: int = 1024  # fbank frames per clip (random crop / zero-pad; padding never masked)
    num_workers: int = 2  # loader processes per rank (0 = in the training process)
    shuffle_buffer: int = 1000  # samples in each worker's shuffle buffer
    allow_pipe: bool = False  # pipe: URLs run shell commands
    samples_per_epoch: int | None = None  # default: the sample count in index.json
    corrupt_shards: str = "skip"  # damaged shard or sample: "skip" (warn once, count, list) | "error" (stop)


@dataclass
class FeaturesSection:
    on_device: bool = False  # compute the fbank on the training device instead of in loader workers
    mean: float | None = None  # None = AudioSet's statistics
    std: float | None = None  # with mean: normalization (x - mean) / (2 std)
    stats: str | None = None  # a JSON file written by `python -m pretrain stats`


@dataclass
class MaskingSection:
    kind: str = "cluster"  # "cluster" | "random" (frame grids always use random, as SSAST) | "span"
    count: int = 400  # masked patches per full clip (scaled down for padded clips)
    span: int = 10  # kind "span" only: time steps per masked run (wav2vec 2.0 style; not in SSAST)


@dataclass
class ObjectiveSection:
    mode: str = "one_pass"  # "one_pass" | "two_pass" (SSAST's original: two masks, two encoder passes)
    nce_weight: float = 1.0  # weight of the discriminative InfoNCE loss
    mse_weight: float = 10.0  # weight of the generative MSE loss (SSAST: 10)
    negatives: str = "clip"  # InfoNCE candidates: "clip" (the clip's other masked patches, SSAST) | "batch" (all in the batch)


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
    max_corrupt_listed: int = 1000  # corrupt sample keys listed in metrics.json (all are counted)


@dataclass
class EvalSection:
    probe_sets: list[str] = field(default_factory=list)  # online probe: "name=DIR" labeled shards (train/, test/, valid/ optional)
    probe_every: int = 1000  # steps between online probes (0 = only at the end)
    probe_max_clips: int | None = 2000  # clips read per split of each probe set (None = all)


@dataclass
class Recipe(RecipeBase):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=lambda: RunSection(name="pretrain"))


CHOICES: Choices = {
    ("masking", "kind"): ("cluster", "random", "span"),
    ("data", "corrupt_shards"): ("skip", "error"),
    ("objective", "mode"): ("one_pass", "two_pass"),
    ("objective", "negatives"): ("clip", "batch"),
    ("optim", "name"): ("adam", "adamw"),
    ("schedule", "name"): ("ssast", "cosine", "constant"),
    ("train", "mixed_precision"): ("auto", "no", "bf16", "fp16"),
}


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a pretraining recipe (``None`` = all defaults) with strict keys and ``--set`` overrides."""
    recipe: Recipe = _load(path, overrides, Recipe, CHOICES, check_recipe)
    return recipe
