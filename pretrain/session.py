"""A pretraining session: everything the loop needs, built from a recipe (``setup`` and its ``_setup_*``
steps: accelerator, shard sets, encoder and heads, optimizer and schedule, resume, data stream)."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from core.accel import make_accelerator
from core.optim import build_optimizer, decay_groups
from core.schedule import warmup_cosine_lr

from .checkpoint import TrainingError, TrainState, list_checkpoints, load_checkpoint
from .config import Recipe, save_recipe
from .data import ShardSet, ShardStream, fit_workers, resolve_shards
from .encoder import HEADS_NAME, Encoder, EncoderConfig, load_state_strict
from .features import FeatureConfig, Normalization
from .shard_reader import CorruptLog
from .ssast import Pretrainer
from .stats import resolve_normalization


def build_encoder(recipe: Recipe, normalization: Normalization, trained_on: dict[str, Any]) -> Encoder:
    """A new Encoder from the recipe, or the export named by ``model.init_from``."""
    m = recipe.model
    if m.init_from:
        enc = Encoder.from_pretrained(m.init_from)
        enc.config.normalization = normalization
        return enc
    from .backbones import make_backbone_config

    bconf = make_backbone_config(m.backbone, m.preset, **m.backbone_config)
    cfg = EncoderConfig(
        backbone=m.backbone,
        backbone_config=asdict(bconf),
        patch=tuple(m.patch),
        stride=tuple(m.stride or m.patch),
        input_frames=recipe.data.target_frames,
        num_mel_bins=m.num_mel_bins,
        mask_embedding=m.mask_embedding,
        features=FeatureConfig(num_mel_bins=m.num_mel_bins),
        normalization=normalization,
        trained_on=trained_on,
    )
    if tuple(cfg.stride) != tuple(cfg.patch):
        raise TrainingError(f"pretraining needs non-overlapping patches: stride {cfg.stride} != patch {cfg.patch}")
    return Encoder(cfg)


def make_optimizer(recipe: Recipe, model: Pretrainer) -> torch.optim.Optimizer:
    """SSAST's Adam decays every parameter (L2 style); AdamW decays matrices only."""
    o = recipe.optim
    if o.name == "adam":
        groups = [{"params": list(model.parameters()), "weight_decay": o.weight_decay}]
    else:
        groups = decay_groups(model, o.weight_decay, {"encoder." + n for n in model.encoder.no_weight_decay()})
    return build_optimizer(o.name, groups, o.lr, o.betas, o.eps)


class LRSchedule:
    """Linear warmup, then SSAST's halve-on-plateau, a cosine decay, or constant. Checkpointable."""

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: Recipe):
        self.optimizer, self.cfg = optimizer, recipe.schedule
        self.base_lr, self.max_steps = recipe.optim.lr, recipe.train.max_steps
        self.scale, self.best, self.bad = 1.0, -math.inf, 0

    def lr_at(self, step: int) -> float:
        c = self.cfg
        lr = warmup_cosine_lr(step, self.base_lr, c.warmup_steps, self.max_steps, c.min_lr, c.name == "cosine")
        return lr if lr is not None else max(c.min_lr, self.base_lr * self.scale)

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def report(self, metric: float) -> bool:
        """SSAST: halve the LR when the validation metric has not improved for ``patience`` checks."""
        if self.cfg.name != "ssast":
            return False
        if metric > self.best:
            self.best, self.bad = metric, 0
            return False
        self.bad += 1
        if self.bad > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


@dataclass
class Session:
    """What ``setup`` builds and the loop uses."""

    recipe: Recipe
    acc: Accelerator
    model: nn.Module  # prepared by accelerate (DDP-wrapped on several processes)
    core: Pretrainer  # the unwrapped model
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    state: TrainState
    shards: ShardSet
    valid: ShardSet | None
    batches_per_epoch: int
    positions: dict[int, int]  # raw-sample count of each loader worker at the resume point
    stream: ShardStream
    stream_kw: dict[str, Any]  # the stream settings validation reuses

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process


def setup(recipe: Recipe) -> Session:
    """Accelerator, data, model, optimizer and schedule, in the order that keeps runs reproducible
    (the seed is set before the model is built; a checkpoint is loaded after ``prepare``)."""
    acc = make_accelerator(recipe.train.mixed_precision, recipe.run_dir)
    shards = resolve_shards(recipe.data.train, recipe.data.allow_pipe, "data.train")
    valid = resolve_shards(recipe.data.valid, recipe.data.allow_pipe, "data.valid") if recipe.data.valid else None
    workers = fit_workers(shards, "data.train", acc.num_processes, recipe.data.num_workers, acc.is_main_process)
    if valid is not None:  # validate() fits its workers the same way: a bad set must fail before step 1
        fit_workers(valid, "data.valid", acc.num_processes, recipe.data.num_workers)
    f = recipe.features
    normalization = resolve_normalization(f.mean, f.std, f.stats, Normalization)
    set_seed(recipe.train.seed)
    model, optimizer = _setup_model(recipe, normalization, shards)
    model, optimizer = acc.prepare(model, optimizer)
    core: Pretrainer = acc.unwrap_model(model)
    schedule = LRSchedule(optimizer, recipe)
    state = TrainState()
    acc.register_for_checkpointing(state, schedule)
    batches_per_epoch = _batches_per_epoch(recipe, shards, acc.num_processes)
    recipe.run_dir.mkdir(parents=True, exist_ok=True)  # every rank writes its own files there
    _start_run(recipe, acc, core, shards, batches_per_epoch)
    positions = _setup_resume(acc, recipe.run_dir, state)
    stream_kw, stream = _setup_stream(recipe, acc, core, normalization, shards, workers)
    stream.corrupt_log.restore(dict(state.corrupt).get(acc.process_index))
    return Session(recipe, acc, model, core, optimizer, schedule, state, shards, valid, batches_per_epoch,
                   positions, stream, stream_kw)


def _setup_model(recipe: Recipe, normalization: Normalization, shards: ShardSet) -> tuple[Pretrainer, torch.optim.Optimizer]:
    encoder = build_encoder(recipe, normalization, {"shards": shards.source, "num_samples": shards.num_samples})
    if recipe.model.gradient_checkpointing:
        encoder.set_gradient_checkpointing(True)
    model = Pretrainer(encoder, recipe.objective.nce_weight, recipe.objective.mse_weight,
                       negatives=recipe.objective.negatives)
    heads = Path(recipe.model.init_from or "") / HEADS_NAME
    if recipe.model.init_from and heads.is_file():  # continue pretraining with the exported heads
        load_state_strict(model.objective, load_file(str(heads)), str(heads))
    return model, make_optimizer(recipe, model)


def _batches_per_epoch(recipe: Recipe, shards: ShardSet, world: int) -> int:
    samples_per_epoch = recipe.data.samples_per_epoch or shards.num_samples
    if not samples_per_epoch:
        raise TrainingError(f"{shards.source}: the sample count is unknown (no index.json); set data.samples_per_epoch")
    return max(1, samples_per_epoch // (recipe.train.batch_size * world))


def _start_run(recipe: Recipe, acc: Accelerator, core: Pretrainer, shards: ShardSet, batches_per_epoch: int) -> None:
    """The resolved recipe, the header line and the TensorBoard trackers."""
    t, world = recipe.train, acc.num_processes
    if acc.is_main_process:
        save_recipe(recipe, recipe.run_dir / "config.json")
        params = sum(p.numel() for p in core.encoder.parameters())
        print(
            f"pretrain: {recipe.model.backbone} encoder {params / 1e6:.2f}M params | {world} process(es) on {acc.device} "
            f"| precision {acc.mixed_precision} | global batch {t.batch_size} x {world} x {t.grad_accum} = "
            f"{t.batch_size * world * t.grad_accum} | {len(shards.urls)} shards, {batches_per_epoch} batches/epoch/rank",
            file=sys.stderr,
        )
    checkpoints = list_checkpoints(recipe.run_dir)
    # TensorBoard hides what a killed run logged after its last checkpoint (the resumed run logs it again).
    purge = {"tensorboard": {"purge_step": int(checkpoints[-1].name[5:]) + 1}} if checkpoints else {}
    acc.init_trackers(recipe.run.name, config=_flat_hparams(recipe) if acc.is_main_process else None,
                      init_kwargs=purge)


def _setup_resume(acc: Accelerator, run_dir: Path, state: TrainState) -> dict[int, int]:
    """Load the last checkpoint, if any; returns the loader workers' stream positions."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return {}
    positions = load_checkpoint(acc, checkpoints[-1])
    if acc.is_main_process:
        print(f"pretrain: resumed from {checkpoints[-1]} (step {state.step})", file=sys.stderr)
    return positions


def _setup_stream(recipe: Recipe, acc: Accelerator, core: Pretrainer, normalization: Normalization,
                  shards: ShardSet, workers: int) -> tuple[dict[str, Any], ShardStream]:
    t, rank = recipe.train, acc.process_index
    stream_kw = dict(
        batch_size=t.batch_size, target_frames=recipe.data.target_frames, seed=t.seed, rank=rank,
        world_size=acc.num_processes, features=core.encoder.config.features, normalization=normalization,
        compute_features=not recipe.features.on_device,
        # one record of damaged data for the training and validation streams (warned once, listed)
        corrupt_log=CorruptLog(recipe.data.corrupt_shards, limit=t.max_corrupt_listed,
                               prefix=f"warning: rank {rank}: " if acc.num_processes > 1 else "warning: "),
    )
    stream = ShardStream(shards, mode="train", num_workers=workers,
                         shuffle_buffer=recipe.data.shuffle_buffer, **stream_kw)
    return stream_kw, stream


def _flat_hparams(recipe: Recipe) -> dict[str, Any]:
    flat = {}
    for section, values in recipe.to_dict().items():
        for k, v in values.items():
            if isinstance(v, (int, float, str, bool)):
                flat[f"{section}.{k}"] = v
    return flat
