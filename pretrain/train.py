"""The pretraining loop under ``accelerate``: SSAST objective on any backbone.

bf16 on GPU and fp32 on CPU automatically, gradient accumulation and clipping, SSAST's or a cosine
schedule, atomic ``save_state`` checkpoints with the stream position (exact resume), TensorBoard
logs, validation, non-finite losses skipped on every rank together, export at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn

from core.accel import make_accelerator
from core.jsonio import write_json_atomic
from core.optim import build_optimizer, decay_groups
from core.progress import Progress
from core.schedule import warmup_cosine_lr

from .config import ObjectiveSection, Recipe, save_recipe
from .data import ShardSet, ShardStream, make_loader, resolve_shards
from .encoder import HEADS_NAME, Encoder, EncoderConfig, load_state_strict
from .evaluation.online import OnlineProbe
from .features import FeatureConfig, Normalization, resolve_normalization
from .masking import make_mask, mask_count_for
from .objective import SSASTObjective, patch_targets
from .patches import valid_patches

log = logging.getLogger("pretrain")


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""


# ----------------------------------------------------------------------------- model
class Pretrainer(nn.Module):
    """Encoder + SSAST heads; one ``forward`` computes the whole loss (one or two encoder passes),
    so DDP sees exactly one forward per backward."""

    def __init__(self, encoder: Encoder, nce_weight: float = ObjectiveSection.nce_weight,
                 mse_weight: float = ObjectiveSection.mse_weight):
        super().__init__()
        self.encoder = encoder
        pt, pf = encoder.config.patch
        self.objective = SSASTObjective(encoder.dim, pt * pf, nce_weight=nce_weight, mse_weight=mse_weight)

    def forward(self, fbank: torch.Tensor, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        targets = patch_targets(fbank, self.encoder.config.patch)
        if len(masks) == 1:  # one pass: both losses from one masked encoder pass
            feats = self.encoder(fbank, masks[0]).patches
            return self.objective(feats, targets, masks[0])
        # SSAST's original: two masks, two passes (discriminative, then generative)
        feats_d = self.encoder(fbank, masks[0]).patches
        feats_g = self.encoder(fbank, masks[1]).patches
        d = self.objective.discriminative(feats_d, targets, masks[0])
        g = self.objective.generative(feats_g, targets, masks[1])
        loss = self.objective.nce_weight * d["loss_d"] + self.objective.mse_weight * g["loss_g"]
        return {**d, **g, "loss": loss}


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


# ----------------------------------------------------------------------------- optimizer, schedule
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
class TrainState:
    """Counters saved with every checkpoint (registered with accelerate)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    seconds_seen: float = 0.0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0
    corrupt_samples: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ----------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path) -> list[Path]:
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return []
    done = [p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def save_checkpoint(acc: Accelerator, run_dir: Path, state: TrainState, positions: dict[int, int], keep: int) -> None:
    """``save_state`` into a temporary directory, then rename: a checkpoint either exists whole or not at all."""
    final = run_dir / "checkpoints" / f"step-{state.step}"
    tmp = run_dir / "checkpoints" / f".tmp-step-{state.step}"
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    # The stream position of this rank (accelerate saves no state for a webdataset stream).
    pos = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "raw": {str(k): v for k, v in positions.items()}}
    (tmp / f"stream_rank{acc.process_index}.json").write_text(json.dumps(pos))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_checkpoint(acc: Accelerator, path: Path) -> dict[int, int]:
    acc.load_state(str(path))
    pos_file = path / f"stream_rank{acc.process_index}.json"
    if not pos_file.is_file():
        raise TrainingError(f"{path}: no {pos_file.name}; was this checkpoint written with another number of processes?")
    pos = json.loads(pos_file.read_text())
    return {int(k): v for k, v in pos["raw"].items()}


# ----------------------------------------------------------------------------- helpers
def step_generator(seed: int, step: int, rank: int, micro: int, which: int = 0) -> torch.Generator:
    """Masks are a pure function of (seed, step, rank, micro-batch): identical after a resume."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729 + micro * 31 + which) % (2**63))
    return g


def build_masks(recipe: Recipe, encoder: Encoder, num_frames: torch.Tensor, frames: int, gen_seeds: list[torch.Generator]) -> list[torch.Tensor]:
    grid = encoder.grid_for(frames)
    valid = valid_patches(num_frames.cpu(), grid, encoder.config.patch, encoder.config.stride)
    total = grid[0] * grid[1]
    counts = mask_count_for(valid.sum(1), min(recipe.masking.count, total - 1), total)
    return [make_mask(recipe.masking.kind, valid, grid, counts, generator=g) for g in gen_seeds]


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(acc: Accelerator, recipe: Recipe, model: Pretrainer, shards: ShardSet, stream_kw: dict[str, Any]) -> dict[str, float]:
    """Loss and masked accuracy over the validation shards (each sample once), averaged over ranks."""
    workers = min(recipe.data.num_workers, max(0, len(shards.urls) // acc.num_processes))
    stream = ShardStream(shards, mode="eval", num_workers=workers, **stream_kw)
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for i, batch in enumerate(make_loader(stream)):
        if recipe.train.val_batches is not None and i >= recipe.train.val_batches:
            break
        fbank, frames = _features(batch, stream, acc.device)
        gens = [step_generator(recipe.train.seed + 1, i, acc.process_index, 0, w) for w in range(1)]
        masks = [m.to(acc.device) for m in build_masks(recipe, model.encoder, frames, fbank.shape[1], gens)]
        with acc.autocast():
            out = model(fbank, masks)
        n = fbank.shape[0]
        sums += torch.tensor([out["loss_d"].item() * n, out["loss_g"].item() * n, out["acc"].item() * n, n], dtype=torch.float64)
    model.train()
    sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
    if sums[3] == 0:
        raise TrainingError(f"validation set {shards.source} gave no samples")
    d, g, a = (sums[:3] / sums[3]).tolist()
    return {"val/loss_d": d, "val/loss_g": g, "val/acc": a, "val/loss": d * recipe.objective.nce_weight + g * recipe.objective.mse_weight}


def _features(batch: dict[str, Any], stream: ShardStream, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if "fbank" in batch:
        return batch["fbank"].to(device, non_blocking=True), batch["num_frames"]
    fb, frames = stream.featurize(batch["waves"].to(device), batch["lengths"].to(device))
    return fb, frames.cpu()


# ----------------------------------------------------------------------------- main loop
def train(recipe: Recipe) -> Path:
    """Run (or resume) pretraining as the recipe says; returns the export directory."""
    run_dir = recipe.run_dir
    acc = make_accelerator(recipe.train.mixed_precision, run_dir)
    is_main = acc.is_main_process
    shards = resolve_shards(recipe.data.train, recipe.data.allow_pipe)
    valid = resolve_shards(recipe.data.valid, recipe.data.allow_pipe) if recipe.data.valid else None
    f = recipe.features
    normalization = resolve_normalization(f.mean, f.std, f.stats, Normalization)
    set_seed(recipe.train.seed)
    encoder = build_encoder(recipe, normalization, {"shards": shards.source, "num_samples": shards.num_samples})
    if recipe.model.gradient_checkpointing:
        encoder.set_gradient_checkpointing(True)
    model = Pretrainer(encoder, recipe.objective.nce_weight, recipe.objective.mse_weight)
    heads = Path(recipe.model.init_from or "") / HEADS_NAME
    if recipe.model.init_from and heads.is_file():  # continue pretraining with the exported heads
        load_state_strict(model.objective, load_file(str(heads)), str(heads))
    optimizer = make_optimizer(recipe, model)
    model, optimizer = acc.prepare(model, optimizer)
    core: Pretrainer = acc.unwrap_model(model)
    schedule = LRSchedule(optimizer, recipe)
    state = TrainState()
    acc.register_for_checkpointing(state, schedule)

    t = recipe.train
    world, rank = acc.num_processes, acc.process_index
    samples_per_epoch = recipe.data.samples_per_epoch or shards.num_samples
    if not samples_per_epoch:
        raise TrainingError(f"{shards.source}: the sample count is unknown (no index.json); set data.samples_per_epoch")
    batches_per_epoch = max(1, samples_per_epoch // (t.batch_size * world))
    run_dir.mkdir(parents=True, exist_ok=True)  # every rank writes its own files there
    if is_main:
        save_recipe(recipe, run_dir / "config.json")
        params = sum(p.numel() for p in core.encoder.parameters())
        print(
            f"pretrain: {recipe.model.backbone} encoder {params / 1e6:.2f}M params | {world} process(es) on {acc.device} "
            f"| precision {acc.mixed_precision} | global batch {t.batch_size} x {world} x {t.grad_accum} = "
            f"{t.batch_size * world * t.grad_accum} | {len(shards.urls)} shards, {batches_per_epoch} batches/epoch/rank",
            file=sys.stderr,
        )
        acc.init_trackers(recipe.run.name, config=_flat_hparams(recipe))
    else:
        acc.init_trackers(recipe.run.name)

    positions: dict[int, int] = {}
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        positions = load_checkpoint(acc, checkpoints[-1])
        if is_main:
            print(f"pretrain: resumed from {checkpoints[-1]} (step {state.step})", file=sys.stderr)

    stream_kw = dict(
        batch_size=t.batch_size, target_frames=recipe.data.target_frames, seed=t.seed, rank=rank, world_size=world,
        features=core.encoder.config.features, normalization=normalization, compute_features=not recipe.features.on_device,
    )
    stream = ShardStream(shards, mode="train", num_workers=recipe.data.num_workers,
                         shuffle_buffer=recipe.data.shuffle_buffer, **stream_kw)
    progress = Progress(t.max_steps, "pretrain", initial=state.step, enabled=is_main)
    window: dict[str, list[float]] = {}
    val_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    two_pass = recipe.objective.mode == "two_pass"
    it = None
    t_log, samples_log = time.time(), 0
    corrupt_list: list[str] = []
    keys_file = open(run_dir / f"keys_rank{rank}.txt", "a") if t.record_keys else None  # noqa: SIM115
    probe = OnlineProbe(recipe.eval.probe_sets, recipe.eval.probe_every, recipe.eval.probe_max_clips)

    while state.step < t.max_steps:
        if it is None or state.batch_in_epoch >= batches_per_epoch:
            if it is not None:
                state.epoch, state.batch_in_epoch, positions = state.epoch + 1, 0, {}
            stream.set_epoch(state.epoch, state.batch_in_epoch, positions)
            it = iter(make_loader(stream))
        lr = schedule.apply(state.step)
        bad = False
        outs = []
        for micro in range(t.grad_accum):
            batch = next(it)
            state.batch_in_epoch += 1
            positions[batch["worker"]] = batch["raw"]
            if keys_file is not None:
                keys_file.write("\n".join(batch["keys"]) + "\n")
            fbank, frames = _features(batch, stream, acc.device)
            gens = [step_generator(t.seed, state.step, rank, micro, w) for w in range(2 if two_pass else 1)]
            masks = [m.to(acc.device) for m in build_masks(recipe, core.encoder, frames, fbank.shape[1], gens)]
            sync = acc.no_sync(model) if micro < t.grad_accum - 1 else nullcontext()
            with sync, acc.autocast():
                out = model(fbank, masks)
                finite = torch.isfinite(out["loss"].detach()).float()
                finite = acc.reduce(finite, reduction="sum").item() == world  # every rank agrees first
                if finite:
                    acc.backward(out["loss"] / t.grad_accum)
                else:
                    bad = True
            outs.append({k: v.detach().float().item() for k, v in out.items() if k in ("loss", "loss_d", "loss_g", "acc")})
            state.samples_seen += fbank.shape[0] * world
            state.seconds_seen += batch["seconds"] * world
            samples_log += fbank.shape[0] * world
            if batch["corrupt_keys"]:  # skipped, counted and listed; never fatal
                state.corrupt_samples += len(batch["corrupt_keys"])
                corrupt_list.extend(batch["corrupt_keys"][: max(0, t.max_corrupt_listed - len(corrupt_list))])
                if is_main:
                    progress.write(f"warning: skipped {len(batch['corrupt_keys'])} corrupt sample(s): "
                                   f"{batch['corrupt_keys'][0]}")
        grad_norm = float("nan")
        if bad:
            optimizer.zero_grad(set_to_none=True)
            state.nonfinite_in_a_row += 1
            state.skipped_steps += 1
            if is_main:
                log.warning("step %d: non-finite loss on some rank; step skipped on every rank", state.step)
                progress.write(f"warning: step {state.step}: non-finite loss, step skipped")
            if state.nonfinite_in_a_row >= t.max_nonfinite:
                raise TrainingError(
                    f"{state.nonfinite_in_a_row} non-finite losses in a row at step {state.step}; aborting "
                    "(lower optim.lr, enable optim.clip_grad_norm, or check the data)"
                )
        else:
            state.nonfinite_in_a_row = 0
            if recipe.optim.clip_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad_norm))
            else:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm(grads))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.step += 1
        for k in ("loss", "loss_d", "loss_g", "acc"):
            window.setdefault(k, []).append(sum(o[k] for o in outs) / len(outs))

        if state.step % t.log_every == 0 or state.step == t.max_steps:
            now = time.time()
            means = {k: sum(v) / len(v) for k, v in window.items()}
            logs = {f"train/{k}": v for k, v in means.items()} | {
                "train/lr": lr, "train/grad_norm": grad_norm,
                "train/samples_per_s": samples_log / max(now - t_log, 1e-9),
                "train/hours_seen": state.seconds_seen / 3600, "train/epoch": state.epoch,
            }
            acc.log(logs, step=state.step)
            history.append({"step": state.step, **means})
            progress.update(state.step, f"loss {means['loss']:.3f} (d {means['loss_d']:.3f} g {means['loss_g']:.4f}) "
                                        f"acc {means['acc']:.3f} lr {lr:.2e}", log=True)
            window, t_log, samples_log = {}, now, 0
        else:
            progress.update(state.step)
        if valid is not None and (state.step % t.val_every == 0 or state.step == t.max_steps):
            val_metrics = validate(acc, recipe, core, valid, stream_kw)
            acc.log(val_metrics, step=state.step)
            if schedule.report(val_metrics["val/acc"]) and is_main:
                progress.write(f"pretrain: validation plateau, LR scale now {schedule.scale}")
            if is_main:
                progress.write(f"validation at step {state.step}: loss {val_metrics['val/loss']:.4f} "
                               f"acc {val_metrics['val/acc']:.4f}")
        if probe.due(state.step, t.max_steps):
            probe.run(acc, core.encoder, state.step, progress.write)
        if t.checkpoint_every and state.step % t.checkpoint_every == 0:
            save_checkpoint(acc, run_dir, state, positions, t.keep_checkpoints)

    progress.close()
    if keys_file is not None:
        keys_file.close()
    # DDP sanity check: every rank must hold the same parameters at the end.
    checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in core.parameters())], dtype=torch.float64)
    checksums = acc.gather(checksum.to(acc.device)).cpu().tolist()
    export = run_dir / "export"
    acc.wait_for_everyone()
    if is_main:
        trained = {"shards": shards.source, "num_samples": shards.num_samples, "steps": state.step,
                   "hours_seen": state.seconds_seen / 3600, "recipe": recipe.to_dict()}
        core.encoder.config.trained_on = {k: v for k, v in trained.items() if k != "recipe"}
        core.encoder.save_pretrained(export, extra={"pretraining": {"objective": asdict(recipe.objective), "masking": asdict(recipe.masking),
                                                                     "online_probe": probe.last}})
        if t.keep_heads:
            heads = {k: v.detach().contiguous().cpu() for k, v in core.objective.state_dict().items()}
            save_file(heads, str(export / HEADS_NAME))
        metrics = {"steps": state.step, "samples_seen": state.samples_seen, "hours_seen": state.seconds_seen / 3600,
                   "skipped_steps": state.skipped_steps, "corrupt_samples": state.corrupt_samples,
                   "corrupt_list": corrupt_list,
                   "processes": world, "rank_param_checksums": checksums,
                   "final_train": history[-1] if history else {}, "validation": val_metrics, "history": history,
                   "probe": probe.history}
        write_json_atomic(run_dir / "metrics.json", metrics)
        print(f"pretrain: done, {state.step} steps; encoder exported to {export}", file=sys.stderr)
    acc.end_training()
    return export


def _flat_hparams(recipe: Recipe) -> dict[str, Any]:
    flat = {}
    for section, values in recipe.to_dict().items():
        for k, v in values.items():
            if isinstance(v, (int, float, str, bool)):
                flat[f"{section}.{k}"] = v
    return flat
