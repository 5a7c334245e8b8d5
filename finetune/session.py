"""A fine-tuning session: the task's shard sets and labels, the model, optimizer and training stream,
built from a recipe (``setup`` and its ``_setup_*`` steps)."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from core import shard_format as fmt
from core.accel import make_accelerator
from core.jsonio import write_json_atomic
from core.optim import build_optimizer
from core.recipe import RecipeError, save_recipe
from pretrain.data import DataError, ShardSet, ShardStream, resolve_shards
from pretrain.encoder import ExportError
from pretrain.features import FeatureConfig, Normalization
from pretrain.stats import compute_stats, resolve_normalization

from .config import FinetuneRecipe
from .heads import Classifier, layer_decay_groups, load_encoder


class FoldWeight:
    """Keep samples whose ``fold`` is (or is not) in ``folds`` (picklable, for loader workers)."""

    def __init__(self, folds: list[int], keep: bool):
        self.folds, self.keep = set(folds), keep

    def __call__(self, meta: dict[str, Any]) -> float:
        return float((meta.get("fold") in self.folds) == self.keep)

    def __repr__(self) -> str:
        return f"fold {'in' if self.keep else 'not in'} {sorted(self.folds)}"


class BalancedWeight:
    """Accept a sample with probability proportional to sum over its labels of 1/count (AudioSet's balancing)."""

    def __init__(self, label_counts: dict[str, int], inner=None):
        w = {k: 1.0 / max(v, 1) for k, v in label_counts.items()}
        self.w, self.top, self.inner = w, max(w.values()), inner

    def __call__(self, meta: dict[str, Any]) -> float:
        base = self.inner(meta) if self.inner else 1.0
        return base * min(1.0, sum(self.w.get(lab, 0.0) for lab in meta.get("labels") or []) / self.top)


def check_vocabulary(shards: ShardSet, labels: list[str]) -> None:
    """Labels in the shards that the model does not know are an error, named."""
    if shards.vocabulary is None:
        return
    unknown = sorted(set(shards.vocabulary) - set(labels))
    if unknown:
        raise DataError(f"{shards.source}: label(s) {unknown[:10]} are not known to the model "
                        f"(it knows {len(labels)} labels: {labels[:10]}{' ...' if len(labels) > 10 else ''})")


def check_fold_field(shards: ShardSet) -> None:
    """k-fold needs a ``fold`` in the samples' json: look at the first sample of the first local shard.

    Without it every clip would train and none would test (found only after training)."""
    url = shards.urls[0]
    if "://" in url or url.startswith("pipe:"):
        return
    try:
        with tarfile.open(url) as tar:
            member = next((m for m in tar if m.name.endswith("." + fmt.META_MEMBER)), None)
            meta = json.loads(tar.extractfile(member).read()) if member else {}
    except (OSError, tarfile.TarError, ValueError):
        return  # an unreadable shard is reported by the loader
    if "fold" not in meta or meta["fold"] is None:
        raise DataError(f"{url}: data.folds needs a 'fold' in every sample's json and this shard's samples "
                        "have none (shard a manifest with a fold column, or an esc50 layout)")


def normalization_for(recipe: FinetuneRecipe, encoder_norm: Normalization, train: ShardSet, run_dir: Path, acc,
                      features: FeatureConfig | None = None) -> Normalization:
    """The recipe's normalization; by default the statistics of the training shards (cached in the run)."""

    def from_training_shards() -> Normalization:
        if recipe.features.use_encoder_stats:
            return encoder_norm
        cache = run_dir / "stats.json"
        if acc.is_main_process and not cache.is_file():
            s = compute_stats(train.urls, max_samples=recipe.features.stats_max_samples, allow_pipe=recipe.data.allow_pipe, features=features)
            write_json_atomic(cache, s)
        acc.wait_for_everyone()
        s = json.loads(cache.read_text())
        return Normalization(float(s["mean"]), float(s["std"]))

    f = recipe.features
    return resolve_normalization(f.mean, f.std, f.stats, from_training_shards)


@dataclass
class TaskData:
    """The shard sets of one run (with folds: the held-out fold of ``data.train`` is the test set)."""

    train: ShardSet
    valid: ShardSet | None
    test: ShardSet | None
    labels: list[str]
    train_weight: Any = None  # a per-sample keep probability (fold filter, balanced sampling)
    eval_weight: Any = None


@dataclass
class Session:
    recipe: FinetuneRecipe
    run_dir: Path
    acc: Accelerator
    data: TaskData
    model: torch.nn.Module  # prepared by accelerate
    core: Classifier  # the unwrapped model
    optimizer: torch.optim.Optimizer
    norm: Normalization
    stream: ShardStream
    steps_per_epoch: int
    gen: torch.Generator  # augmentation randomness of this rank


def setup(recipe: FinetuneRecipe, run_dir: Path, fold: int | None) -> Session:
    acc = make_accelerator(recipe.train.mixed_precision, run_dir)
    if not recipe.model.encoder:
        raise ExportError("model.encoder is not set: give an export directory (--set model.encoder=runs/X/export)")
    data = _setup_data(recipe, fold)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "config.json")
    set_seed(recipe.train.seed)
    model, norm = _setup_model(recipe, acc, data, run_dir)
    o = recipe.optim
    groups = layer_decay_groups(model, o.lr, o.weight_decay, recipe.model.layer_decay, o.head_lr_mult)
    optimizer = build_optimizer(o.name, groups, o.lr, o.betas, o.eps)
    prepared, optimizer = acc.prepare(model, optimizer)
    core: Classifier = acc.unwrap_model(prepared)
    steps_per_epoch, stream = _setup_stream(recipe, acc, data, core, norm, fold)
    gen = torch.Generator().manual_seed(recipe.train.seed * 1000 + acc.process_index)
    return Session(recipe, run_dir, acc, data, prepared, core, optimizer, norm, stream, steps_per_epoch, gen)


def _setup_data(recipe: FinetuneRecipe, fold: int | None) -> TaskData:
    d = recipe.data
    train_set = resolve_shards(d.train, d.allow_pipe)
    if not train_set.vocabulary:
        raise DataError(f"{train_set.source}: no label vocabulary in index.json; fine-tuning needs labeled shards")
    labels = list(train_set.vocabulary)
    # with folds, the held-out fold of data.train is the test set: data.valid / data.test are not read
    valid_set = resolve_shards(d.valid, d.allow_pipe) if d.valid and fold is None else None
    test_set = resolve_shards(d.test, d.allow_pipe) if d.test and fold is None else None
    train_weight = eval_weight = None
    if fold is not None:
        check_fold_field(train_set)
        train_weight, eval_weight = FoldWeight([fold], keep=False), FoldWeight([fold], keep=True)
        # The held-out fold is the test set. It is not also used as "valid": choosing the best epoch on
        # the fold that is then reported would leak; the last epoch (or the weight average) is kept.
        valid_set, test_set = None, train_set
    if d.balanced:
        counts = (train_set.index or {}).get("label_counts")
        if not counts:
            raise DataError(f"{train_set.source}: data.balanced needs label_counts in index.json")
        train_weight = BalancedWeight(counts, train_weight)
    for s in (valid_set, test_set):
        if s is not None:
            check_vocabulary(s, labels)
    return TaskData(train_set, valid_set, test_set, labels, train_weight, eval_weight)


def _setup_model(recipe: FinetuneRecipe, acc: Accelerator, data: TaskData,
                 run_dir: Path) -> tuple[Classifier, Normalization]:
    """The encoder (pretrained or a random twin) with its normalization and stride, and the task head."""
    encoder = load_encoder(recipe.model.encoder, recipe.model.random_init, seed=recipe.train.seed)
    norm = normalization_for(recipe, encoder.config.normalization, data.train, run_dir, acc,
                             encoder.config.features)
    encoder.config.normalization = norm
    if recipe.model.stride:
        encoder.set_stride(tuple(recipe.model.stride))
    try:
        model = Classifier(encoder, data.labels, recipe.model.pooling, recipe.task.kind, recipe.model.head_dropout,
                           linear_probe=recipe.model.mode == "linear_probe")
    except ValueError as e:
        raise RecipeError(f"model.pooling: {e}") from e
    return model, norm


def _setup_stream(recipe: FinetuneRecipe, acc: Accelerator, data: TaskData, core: Classifier, norm: Normalization,
                  fold: int | None) -> tuple[int, ShardStream]:
    """Steps per epoch (from the training samples of this run) and the training stream."""
    d, t, world = recipe.data, recipe.train, acc.num_processes
    n_train = data.train.num_samples or 0
    if fold is not None and d.folds:
        n_train = int(n_train * (len(d.folds) - 1) / len(d.folds))
    steps_per_epoch = t.steps_per_epoch or max(1, n_train // (t.batch_size * world))
    stream = ShardStream(data.train, batch_size=t.batch_size, target_frames=d.target_frames, mode="train",
                         seed=t.seed, rank=acc.process_index, world_size=world, num_workers=d.num_workers,
                         shuffle_buffer=d.shuffle_buffer, features=core.encoder.config.features, normalization=norm,
                         vocabulary=data.labels, sample_weight=data.train_weight)
    return steps_per_epoch, stream
