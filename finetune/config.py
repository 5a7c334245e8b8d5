"""Fine-tuning recipes (TOML -> dataclasses), validated with the same strict machinery as pretraining."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.config import load_recipe


@dataclass
class ModelSection:
    encoder: str = ""  # an export directory (pretrained, imported or fine-tuned)
    random_init: bool = False  # same architecture as `encoder`, random weights (the baseline)
    mode: str = "full"  # "full" | "linear_probe" (frozen encoder, BN statistics included)
    pooling: str = "mean"  # "mean" over real patch tokens (SSAST's ft_avgtok) | "cls"
    layer_decay: float = 1.0  # layer-wise LR decay; 1.0 = off
    stride: list[int] | None = None  # fine-tune at another patch stride (SSAST uses [10, 10])
    head_dropout: float = 0.0


@dataclass
class DataSection:
    train: str | list[str] = ""
    valid: str | list[str] | None = None
    test: str | list[str] | None = None
    target_frames: int = 1024
    num_workers: int = 2
    shuffle_buffer: int = 1000
    allow_pipe: bool = False
    balanced: bool = False  # balanced sampling for multi-label data (AudioSet style)
    folds: list[int] | None = None  # k-fold cross-validation over the `fold` field (ESC-50): test on each in turn


@dataclass
class TaskSection:
    kind: str = "single_label"  # "single_label" | "multi_label"
    loss: str = "ce"  # "ce" | "bce" (SSAST uses BCE even for Speech Commands)


@dataclass
class FeaturesSection:
    mean: float | None = None  # None: compute on the training shards, unless `stats` is given
    std: float | None = None
    stats: str | None = None
    use_encoder_stats: bool = False  # keep the statistics stored in the encoder's config.json


@dataclass
class AugmentSection:
    freqm: int = 0  # SpecAugment frequency mask width (SSAST: 24-48)
    timem: int = 0  # SpecAugment time mask width (SSAST: 48-192)
    mixup: float = 0.0  # fraction of samples mixed with a random partner (labels mixed alike)
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha); SSAST: Beta(10, 10)
    noise: bool = False  # SSAST: add uniform noise and roll the time axis by [-10, 10) frames
    gain_db: float = 0.0  # random gain in [-gain_db, gain_db] dB


@dataclass
class OptimSection:
    name: str = "adam"  # "adam" (SSAST) | "adamw"
    lr: float = 1e-4
    weight_decay: float = 5e-7
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    head_lr_mult: float = 1.0
    clip_grad_norm: float = 0.0


@dataclass
class ScheduleSection:
    name: str = "ssast"  # "ssast": MultiStepLR from epoch `start` every `step` epochs by `decay` | "cosine"
    start: int = 10
    step: int = 5
    decay: float = 0.5
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass
class TrainSection:
    batch_size: int = 12
    epochs: int = 25
    steps_per_epoch: int | None = None  # default: training samples // (batch x processes)
    seed: int = 0
    mixed_precision: str = "auto"
    weight_averaging: list[int] | None = None  # [first, last] epochs whose weights are averaged (SSAST's wa)
    log_every: int = 20
    eval_batch_size: int | None = None


@dataclass
class RunSection:
    name: str = "finetune"
    output_dir: str = "runs"


@dataclass
class FinetuneRecipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    task: TaskSection = field(default_factory=TaskSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "mode"): ("full", "linear_probe"),
    ("model", "pooling"): ("mean", "cls"),
    ("task", "kind"): ("single_label", "multi_label"),
    ("task", "loss"): ("ce", "bce"),
    ("optim", "name"): ("adam", "adamw"),
    ("schedule", "name"): ("ssast", "cosine"),
    ("train", "mixed_precision"): ("auto", "no", "bf16", "fp16"),
}


def load_finetune_recipe(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneRecipe:
    """Load a fine-tuning recipe with strict keys and ``--set`` overrides."""
    recipe: Any = load_recipe(path, overrides, cls=FinetuneRecipe, choices=CHOICES)
    return recipe
