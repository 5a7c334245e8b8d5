"""The pretraining loop under ``accelerate``: SSAST objective on any backbone.

bf16 on GPU and fp32 on CPU automatically, gradient accumulation and clipping, SSAST's or a cosine
schedule, atomic ``save_state`` checkpoints with the stream position (exact resume), TensorBoard
logs, validation, non-finite losses skipped on every rank together, export at the end.
The method is :mod:`pretrain.ssast`; what the loop runs on is built by :func:`pretrain.session.setup`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import save_file

from core.accel import end_training
from core.files import honour_umask
from core.jsonio import write_json_atomic
from core.progress import Progress

from .checkpoint import TrainingError, open_keys_file, save_checkpoint
from .config import Recipe
from .data import ShardSet, ShardStream, make_loader
from .encoder import HEADS_NAME
from .evaluation.online import OnlineProbe
from .session import Session, setup
from .ssast import Pretrainer, build_masks, step_generator

__all__ = ["TrainingError", "train", "validate"]

log = logging.getLogger("pretrain")
_LOGGED = ("loss", "loss_d", "loss_g", "acc")


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
        masks = [x.to(acc.device) for x in build_masks(recipe.masking, model.encoder, frames, fbank.shape[1], gens)]
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


@dataclass
class Tally:
    """What the loop reports: the window of losses since the last log line, the history, the last validation
    (checkpointed in the train state: a resumed run reports what an uninterrupted one would)."""

    window: dict[str, list[float]] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)
    t_log: float = field(default_factory=time.time)
    samples_log: int = 0


def train(recipe: Recipe) -> Path:
    """Run (or resume) pretraining as the recipe says; returns the export directory."""
    s = setup(recipe)
    t = recipe.train
    progress = Progress(t.max_steps, "pretrain", initial=s.state.step, enabled=s.is_main)
    tally = Tally(s.state.window, s.state.history, s.state.validation)  # restored by a resume
    keys_lines = s.state.step * t.grad_accum * t.batch_size  # every micro-batch of a training stream is full
    keys_path = s.run_dir / f"keys_rank{s.acc.process_index}.txt"
    keys_file = open_keys_file(keys_path, keys_lines) if t.record_keys else None
    probe = OnlineProbe(recipe.eval.probe_sets, recipe.eval.probe_every, recipe.eval.probe_max_clips)
    batches = None
    while s.state.step < t.max_steps:
        if batches is None or s.state.batch_in_epoch >= s.batches_per_epoch:
            batches = _next_epoch(s, batches is None)
        lr = s.schedule.apply(s.state.step)
        outs, bad = _accumulate(s, batches, tally, keys_file)
        grad_norm = _optimizer_step(s, bad, progress)
        s.state.step += 1
        for k in _LOGGED:
            tally.window.setdefault(k, []).append(sum(o[k] for o in outs) / len(outs))
        if s.state.step % t.log_every == 0 or s.state.step == t.max_steps:
            _log(s, tally, lr, grad_norm, progress)
        else:
            progress.update(s.state.step)
        if s.valid is not None and (s.state.step % t.val_every == 0 or s.state.step == t.max_steps):
            _validate(s, tally, progress)
        if probe.due(s.state.step, t.max_steps):  # frozen encoder, main process; the stream is untouched
            probe.run(s.acc, s.core.encoder, s.state.step, progress.write)
        if t.checkpoint_every and s.state.step % t.checkpoint_every == 0:
            _checkpoint(s, tally, keys_file)
    progress.close()
    if keys_file is not None:
        keys_file.close()
    return _finish(s, tally, probe)


def _checkpoint(s: Session, tally: Tally, keys_file) -> None:
    """Save the state, with what the run's files hold so far (every rank's damaged-data record included)."""
    s.state.window, s.state.validation, s.state.history = tally.window, tally.validation, tally.history
    s.state.corrupt = gather_object([(s.acc.process_index, s.stream.corrupt_log.state())])  # rank 0's is saved
    if keys_file is not None:
        keys_file.flush()  # the keys up to a checkpoint survive a kill
    save_checkpoint(s.acc, s.run_dir, s.state, s.positions, s.recipe.train.keep_checkpoints)


def _next_epoch(s: Session, first: bool) -> Iterator[dict[str, Any]]:
    """The loader of the current epoch (resuming inside it on the first call), or of the next one."""
    if not first:
        s.state.epoch, s.state.batch_in_epoch, s.positions = s.state.epoch + 1, 0, {}
    s.stream.set_epoch(s.state.epoch, s.state.batch_in_epoch, s.positions)
    return iter(make_loader(s.stream))


def _accumulate(s: Session, batches: Iterator[dict[str, Any]], tally: Tally,
                keys_file) -> tuple[list[dict[str, float]], bool]:
    """Forward and backward of ``grad_accum`` micro-batches; True when some rank's loss was not finite."""
    t, state, acc = s.recipe.train, s.state, s.acc
    world, rank = acc.num_processes, acc.process_index
    two_pass = s.recipe.objective.mode == "two_pass"
    bad = False
    outs = []
    for micro in range(t.grad_accum):
        batch = next(batches)
        state.batch_in_epoch += 1
        s.positions[batch["worker"]] = batch["raw"]
        if keys_file is not None:
            keys_file.write("\n".join(batch["keys"]) + "\n")
        fbank, frames = _features(batch, s.stream, acc.device)
        gens = [step_generator(t.seed, state.step, rank, micro, w) for w in range(2 if two_pass else 1)]
        masks = [x.to(acc.device) for x in build_masks(s.recipe.masking, s.core.encoder, frames, fbank.shape[1], gens)]
        sync = acc.no_sync(s.model) if micro < t.grad_accum - 1 else nullcontext()
        with sync, acc.autocast():
            out = s.model(fbank, masks)
            finite = torch.isfinite(out["loss"].detach()).float()
            finite = acc.reduce(finite, reduction="sum").item() == world  # every rank agrees first
            if finite:
                acc.backward(out["loss"] / t.grad_accum)
            else:
                bad = True
        outs.append({k: v.detach().float().item() for k, v in out.items() if k in _LOGGED})
        state.samples_seen += fbank.shape[0] * world
        state.seconds_seen += batch["seconds"] * world
        tally.samples_log += fbank.shape[0] * world  # damaged data: warned and listed by s.stream.corrupt_log
    return outs, bad


def _optimizer_step(s: Session, bad: bool, progress: Progress) -> float:
    """Step (after clipping), or skip on every rank when a loss was not finite; returns the gradient norm."""
    state, acc = s.state, s.acc
    if bad:
        s.optimizer.zero_grad(set_to_none=True)
        state.nonfinite_in_a_row += 1
        state.skipped_steps += 1
        if s.is_main:
            log.warning("step %d: non-finite loss on some rank; step skipped on every rank", state.step)
            progress.write(f"warning: step {state.step}: non-finite loss, step skipped")
        if state.nonfinite_in_a_row >= s.recipe.train.max_nonfinite:
            raise TrainingError(
                f"{state.nonfinite_in_a_row} non-finite losses in a row at step {state.step}; aborting "
                "(lower optim.lr, enable optim.clip_grad_norm, or check the data)"
            )
        return float("nan")
    state.nonfinite_in_a_row = 0
    if s.recipe.optim.clip_grad_norm > 0:
        grad_norm = float(acc.clip_grad_norm_(s.model.parameters(), s.recipe.optim.clip_grad_norm))
    else:
        grads = [p.grad for p in s.model.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(grads))
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _log(s: Session, tally: Tally, lr: float, grad_norm: float, progress: Progress) -> None:
    """TensorBoard scalars, a history entry and a progress line from the window since the last log."""
    now = time.time()
    means = {k: sum(v) / len(v) for k, v in tally.window.items()}
    logs = {f"train/{k}": v for k, v in means.items()} | {
        "train/lr": lr, "train/grad_norm": grad_norm,
        "train/samples_per_s": tally.samples_log / max(now - tally.t_log, 1e-9),
        "train/hours_seen": s.state.seconds_seen / 3600, "train/epoch": s.state.epoch,
    }
    s.acc.log(logs, step=s.state.step)
    tally.history.append({"step": s.state.step, **means})
    progress.update(s.state.step, f"loss {means['loss']:.3f} (d {means['loss_d']:.3f} g {means['loss_g']:.4f}) "
                                  f"acc {means['acc']:.3f} lr {lr:.2e}", log=True)
    tally.window, tally.t_log, tally.samples_log = {}, now, 0


def _validate(s: Session, tally: Tally, progress: Progress) -> None:
    assert s.valid is not None
    tally.validation = validate(s.acc, s.recipe, s.core, s.valid, s.stream_kw)
    s.acc.log(tally.validation, step=s.state.step)
    if s.schedule.report(tally.validation["val/acc"]) and s.is_main:
        progress.write(f"pretrain: validation plateau, LR scale now {s.schedule.scale}")
    if s.is_main:
        progress.write(f"validation at step {s.state.step}: loss {tally.validation['val/loss']:.4f} "
                       f"acc {tally.validation['val/acc']:.4f}")


def _finish(s: Session, tally: Tally, probe: OnlineProbe) -> Path:
    """Check that every rank holds the same weights; export the encoder (and heads) and the metrics."""
    acc, state, core, recipe = s.acc, s.state, s.core, s.recipe
    # DDP sanity check: every rank must hold the same parameters at the end.
    checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in core.parameters())], dtype=torch.float64)
    checksums = acc.gather(checksum.to(acc.device)).cpu().tolist()
    corrupt = gather_object([(s.stream.corrupt_log.samples, s.stream.corrupt_log.entries)])  # every rank's record
    export = s.run_dir / "export"
    acc.wait_for_everyone()
    if s.is_main:
        trained = {"shards": s.shards.source, "num_samples": s.shards.num_samples, "steps": state.step,
                   "hours_seen": state.seconds_seen / 3600, "recipe": recipe.to_dict()}
        core.encoder.config.trained_on = {k: v for k, v in trained.items() if k != "recipe"}
        core.encoder.save_pretrained(export, extra={"pretraining": {"objective": asdict(recipe.objective), "masking": asdict(recipe.masking),
                                                                     "online_probe": probe.last}})
        if recipe.train.keep_heads:
            heads = {k: v.detach().contiguous().cpu() for k, v in core.objective.state_dict().items()}
            save_file(heads, str(export / HEADS_NAME))
            honour_umask(export / HEADS_NAME)  # save_file writes 0600
        metrics = {"steps": state.step, "samples_seen": state.samples_seen, "hours_seen": state.seconds_seen / 3600,
                   "skipped_steps": state.skipped_steps, "corrupt_samples": sum(c[0] for c in corrupt),
                   "corrupt_list": [e for c in corrupt for e in c[1]][: recipe.train.max_corrupt_listed],
                   "processes": acc.num_processes, "rank_param_checksums": checksums,
                   "final_train": tally.history[-1] if tally.history else {}, "validation": tally.validation,
                   "history": tally.history, "probe": probe.history}
        write_json_atomic(s.run_dir / "metrics.json", metrics)
        print(f"pretrain: done, {state.step} steps; encoder exported to {export}", file=sys.stderr)
    del s.model  # the DDP wrapper must be gone before the process group (core.accel.end_training)
    end_training(acc)
    return export
