"""Fine-tuning recipes (TOML -> dataclasses), validated with the same strict machinery as pretraining."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.recipe import Choices, RecipeBase, RunSection, load_recipe
from pretrain.config import DataSection as PretrainData


@dataclass
class ModelSection:
    encoder: str = ""  # an export directory (pretrained, imported or fine-tuned)
    random_init: bool = False  # same architecture as `encoder`, random weights (the baseline)
    mode: str = "full"  # "full" | "linear_probe" (frozen encoder, BN statistics included)
    pooling: str = "mean"  # "mean" over real patch tokens (SSAST's ft_avgtok) | "cls"
    layer_decay: float = 1.0  # layer-wise LR decay; 1.0 = off
    stride: list[int] | None = None  # fine-tune at another patch stride (SSAST uses [10, 10])
    head_dropout: float = 0.0  # dropout before the head's Linear


@dataclass
class DataSection:
    train: str | list[str] = ""  # labeled training shards (index.json gives the vocabulary)
    valid: str | list[str] | None = None  # model selection (best epoch) on these
    test: str | list[str] | None = None  # final metrics on these
    target_frames: int = PretrainData.target_frames  # input length in frames (SSAST: 1024 AudioSet, 512 ESC-50, 128 SC)
    num_workers: int = 2  # loader processes
    shuffle_buffer: int = PretrainData.shuffle_buffer  # samples per worker shuffle buffer
    allow_pipe: bool = False  # allow pipe: URLs (they run shell commands)
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
    stats: str | None = None  # a JSON from `python -m pretrain stats`
    use_encoder_stats: bool = False  # keep the statistics stored in the encoder's config.json
    stats_max_samples: int = 2000  # clips the statistics are computed on (when not given)


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
    lr: float = 1e-4  # base learning rate
    weight_decay: float = 5e-7  # weight decay (matrices only)
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    head_lr_mult: float = 1.0  # LR multiplier of the head (SSAMBA AS-20K: 3)
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass
class ScheduleSection:
    name: str = "ssast"  # "ssast": MultiStepLR from epoch `start` every `step` epochs by `decay` | "cosine"
    start: int = 10  # ssast: first epoch of LR decay
    step: int = 5  # ssast: decay every this many epochs
    decay: float = 0.5  # ssast: LR factor
    warmup_steps: int = 0  # linear warmup steps
    min_lr: float = 0.0  # cosine end point


@dataclass
class TrainSection:
    batch_size: int = 12  # per device
    epochs: int = 25  # training epochs
    steps_per_epoch: int | None = None  # default: training samples // (batch x processes)
    seed: int = 0  # seeds init (random_init), data order and augmentation
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    weight_averaging: list[int] | None = None  # [first, last] epochs whose weights are averaged (SSAST's wa)
    log_every: int = 20  # steps between progress lines
    eval_batch_size: int | None = None  # default: batch_size
    # Linear probe: the frozen encoder's pooled features of this many passes over the training set (each
    # with its own crops and augmentation) are computed once and cycled through the epochs; 0 = run the
    # encoder on every batch of every epoch. A probe's valid/test features are always computed once.
    probe_views: int = 4


@dataclass
class CompareSection:
    # `finetune compare` only: a linear probe trains the head alone (no backward through the encoder), so it
    # gets this many times the recipe's epochs, without SpecAugment or mixup (MAE's probe protocol).
    probe_epochs_factor: int = 4  # linear-probe epochs = this x train.epochs
    probe_overrides: list[str] = field(  # --set overrides applied to the linear probes
        default_factory=lambda: ["augment.freqm=0", "augment.timem=0", "augment.mixup=0"])


@dataclass
class FinetuneRecipe(RecipeBase):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    task: TaskSection = field(default_factory=TaskSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    compare: CompareSection = field(default_factory=CompareSection)
    run: RunSection = field(default_factory=lambda: RunSection(name="finetune"))  # runs/NAME: export/, metrics.json


CHOICES: Choices = {
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
    recipe: FinetuneRecipe = load_recipe(path, overrides, FinetuneRecipe, CHOICES)
    return recipe
