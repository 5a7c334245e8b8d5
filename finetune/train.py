"""Fine-tuning loop: exported encoder -> task model, with validation-based model selection and test metrics.

Runs alone or under ``accelerate launch`` (every rank reads its own shards; metrics are gathered).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object

from core.accel import end_process_group, release_prepared
from core.jsonio import write_json_atomic
from core.progress import Progress
from core.schedule import warmup_cosine_lr
from pretrain.data import DataError, ShardSet, ShardStream, make_loader
from pretrain.features import Normalization
from pretrain.shard_reader import CorruptLog

from .augment import augment_batch
from .config import FinetuneRecipe
from .heads import Classifier
from .metrics import compute_metrics
from .session import Session, header, setup


def task_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()  # soft targets (mixup) allowed


@torch.no_grad()
def predict_shards(acc, model: Classifier, shards: ShardSet, recipe: FinetuneRecipe, norm: Normalization,
                   weight=None, feature_cache: dict | None = None,
                   corrupt_log: CorruptLog | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores and targets of every sample of a shard set (each exactly once across ranks).

    With ``feature_cache`` (a frozen encoder: its features cannot change), the pooled features of a shard
    set are computed on the first call and only the head runs on later ones.
    """
    was_training = model.training
    model.eval()
    key = (shards.source, repr(weight))
    if feature_cache is not None and key in feature_cache:
        pooled, targets, keys = feature_cache[key]
    else:
        workers = min(recipe.data.num_workers, max(0, len(shards.urls) // acc.num_processes))
        stream = ShardStream(shards, batch_size=recipe.train.eval_batch_size or recipe.train.batch_size,
                             target_frames=recipe.data.target_frames, mode="eval", rank=acc.process_index,
                             world_size=acc.num_processes, num_workers=workers,
                             features=model.encoder.config.features, normalization=norm, vocabulary=model.labels,
                             sample_weight=weight, corrupt_log=corrupt_log or CorruptLog(recipe.data.corrupt_shards))
        pooled, targets, keys = [], [], []
        for batch in make_loader(stream):
            with acc.autocast():
                pooled.append(model.features(batch["fbank"].to(acc.device), batch["num_frames"]).float())
            targets.append(batch["labels"].numpy())
            keys += batch["keys"]
        if feature_cache is not None:
            feature_cache[key] = (pooled, targets, keys)
    scores = [model.scores(model(pooled=f).float()).cpu().numpy() for f in pooled]
    model.train(was_training)
    parts = gather_object([(np.concatenate(scores) if scores else None, np.concatenate(targets) if targets else None, keys)])
    if all(p[0] is None for p in parts):
        which = f" after the filter {weight!r}" if weight is not None else ""
        raise DataError(f"{shards.source}: no labeled sample to evaluate{which}")
    s = np.concatenate([p[0] for p in parts if p[0] is not None])
    t = np.concatenate([p[1] for p in parts if p[1] is not None])
    return s, t, [k for p in parts for k in p[2]]


def encoder_batches(loader_iter, steps: int, recipe: FinetuneRecipe, norm: Normalization, gen: torch.Generator,
                    device) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """``steps`` augmented training batches as (model inputs, targets)."""
    for _ in range(steps):
        batch = next(loader_iter)
        x, y = batch["fbank"].to(device), batch["labels"].to(device)
        x, y = augment_batch(x, y, batch["num_frames"], recipe.augment, norm, gen)
        yield {"fbank": x, "num_frames": batch["num_frames"]}, y


class ProbeViews:
    """A linear probe's training features: each view is one pass over the training stream through the
    frozen encoder (its own crops and augmentation), pooled once and reused by every epoch ``e`` with
    ``e % views == view``, in a new order each time. The head then trains without running the encoder."""

    def __init__(self, views: int):
        self.views = views
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def batches(self, epoch: int, acc, model: Classifier, stream: ShardStream, steps: int, recipe: FinetuneRecipe,
                norm: Normalization, gen: torch.Generator) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        view = epoch % self.views
        if view not in self.cache:
            stream.set_epoch(view)
            feats, targets = [], []
            # a probe's encoder stays in eval mode whatever the model's mode (Classifier.train)
            for inputs, y in encoder_batches(iter(make_loader(stream)), steps, recipe, norm, gen, acc.device):
                with acc.autocast():
                    feats.append(model.features(**inputs).float())
                targets.append(y)
            self.cache[view] = (torch.cat(feats), torch.cat(targets))
        feats, targets = self.cache[view]
        order = torch.randperm(len(feats), generator=gen).split(recipe.train.batch_size)
        for idx in order[:steps]:
            yield {"pooled": feats[idx]}, targets[idx]


def epoch_lr(recipe: FinetuneRecipe, epoch: int, step: int, total_steps: int) -> float:
    """SSAST's MultiStepLR(range(start, 1000, step), decay) per epoch, or cosine per step; linear warmup."""
    s, base = recipe.schedule, recipe.optim.lr
    lr = warmup_cosine_lr(step, base, s.warmup_steps, total_steps, s.min_lr, s.name == "cosine")
    if lr is not None:
        return lr
    drops = 0 if epoch < s.start else (epoch - s.start) // s.step + 1
    return base * s.decay ** drops


def finetune(recipe: FinetuneRecipe, run_dir: Path | None = None, fold: int | None = None) -> dict[str, Any]:
    """Train one task model; returns the metrics (also written to ``run_dir/metrics.json``)."""
    s = setup(recipe, Path(run_dir or recipe.run_dir), fold)
    if s.acc.is_main_process:
        print(header(s), file=sys.stderr)
    t = recipe.train
    total = s.steps_per_epoch * t.epochs
    progress = Progress(total, "finetune", enabled=s.acc.is_main_process)
    pick = Selection()
    history = []
    step = 0
    t0 = time.time()
    probe = ProbeViews(t.probe_views) if s.core.linear_probe and t.probe_views > 0 else None
    eval_cache: dict | None = {} if s.core.linear_probe else None  # a frozen encoder's eval features never change
    for epoch in range(t.epochs):
        s.model.train()
        if probe is not None:
            batches = probe.batches(epoch, s.acc, s.core, s.stream, s.steps_per_epoch, recipe, s.norm, s.gen)
        else:
            s.stream.set_epoch(epoch)
            batches = encoder_batches(iter(make_loader(s.stream)), s.steps_per_epoch, recipe, s.norm, s.gen,
                                      s.acc.device)
        losses, step = _train_epoch(s, batches, epoch, step, total, progress)
        del batches
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if s.data.valid is not None:
            m = _evaluate(s, s.data.valid, eval_cache)
            entry["valid"] = {k: v for k, v in m.items() if k != "per_class"}
            pick.report_valid(s.core, m["main"], epoch)
        pick.add_epoch(s.core, epoch, t.weight_averaging)
        history.append(entry)
        if s.acc.is_main_process:
            v = entry.get("valid", {})
            progress.write(f"finetune: epoch {epoch + 1}/{t.epochs} train loss {entry['train_loss']:.4f}"
                           + (f" | valid {recipe.task.kind == 'multi_label' and 'mAP' or 'acc'} {v.get('main', float('nan')):.4f}" if v else ""))
    progress.close()
    selected = pick.apply(s.core, t.weight_averaging)
    result: dict[str, Any] = {"selected": selected, "history": history, "labels": s.data.labels,
                              "mode": recipe.model.mode, "random_init": recipe.model.random_init,
                              "normalization": {"mean": s.norm.mean, "std": s.norm.std}, "seconds": time.time() - t0}
    if s.data.valid is not None:
        result["valid"] = _evaluate(s, s.data.valid, eval_cache)
    if s.data.test is not None:
        result["test"] = _evaluate(s, s.data.test, eval_cache)
    lost = gather_object([(s.corrupt.samples, s.corrupt.entries)])  # every rank's damaged-data record
    result |= {"corrupt_samples": sum(c[0] for c in lost), "corrupt_list": [e for c in lost for e in c[1]][:1000]}
    if s.acc.is_main_process:
        s.core.save_pretrained(s.run_dir / "export", recipe.data.target_frames,
                               extra={"finetuned_from": recipe.model.encoder, "selected": selected,
                                      "display_names": (s.data.train.index or {}).get("display_names")})
        write_json_atomic(s.run_dir / "metrics.json", result)
    del s.model  # the DDP wrapper must be gone before the process group (core.accel.release_prepared)
    release_prepared(s.acc)  # the group itself ends with the process's last run (finetune_all, compare)
    return result


def _train_epoch(s: Session, batches: Iterator[tuple[dict[str, Any], torch.Tensor]], epoch: int, step: int,
                 total: int, progress: Progress) -> tuple[list[float], int]:
    """One epoch of optimizer steps; returns the losses and the step count after it."""
    recipe, acc, t = s.recipe, s.acc, s.recipe.train
    losses = []
    for inputs, y in batches:
        lr = epoch_lr(recipe, epoch, step, total)
        for g in s.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with acc.autocast():
            logits = s.model(**inputs)
            loss = task_loss(logits.float(), y, recipe.task.loss)
        acc.backward(loss)
        if recipe.optim.clip_grad_norm > 0:
            acc.clip_grad_norm_(s.model.parameters(), recipe.optim.clip_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        if step % t.log_every == 0:
            progress.update(step, f"epoch {epoch + 1}/{t.epochs} loss {np.mean(losses[-t.log_every:]):.4f} lr {lr:.2e}",
                            log=True)
        else:
            progress.update(step)
    return losses, step


def _evaluate(s: Session, shards: ShardSet, eval_cache: dict | None) -> dict[str, Any]:
    scores, targets, _ = predict_shards(s.acc, s.core, shards, s.recipe, s.norm, s.data.eval_weight, eval_cache,
                                        s.corrupt)
    return compute_metrics(scores, targets, s.data.labels, s.recipe.task.kind)


class Selection:
    """Which weights the run keeps: a weight average over an epoch range (SSAST's wa), else the best epoch on
    the validation set, else the last."""

    def __init__(self) -> None:
        self.best: dict[str, Any] = {"main": -math.inf}
        self.wa_sum: dict[str, torch.Tensor] | None = None
        self.wa_count = 0

    def report_valid(self, core: Classifier, main: float, epoch: int) -> None:
        if main > self.best["main"]:
            self.best = {"main": main, "epoch": epoch + 1, "state": copy.deepcopy(core.state_dict())}

    def add_epoch(self, core: Classifier, epoch: int, wa: list[int] | None) -> None:
        if wa and wa[0] <= epoch + 1 <= wa[1]:
            sd = core.state_dict()
            self.wa_sum = {k: v.detach().clone().double() for k, v in sd.items()} if self.wa_sum is None else \
                {k: self.wa_sum[k] + sd[k].double() for k in sd}
            self.wa_count += 1

    def apply(self, core: Classifier, wa: list[int] | None) -> str:
        """Load the selected weights into ``core``; returns how they were selected."""
        if self.wa_sum is not None and wa:
            core.load_state_dict({k: (v / self.wa_count).to(core.state_dict()[k].dtype) for k, v in self.wa_sum.items()})
            return f"weight average of epochs {wa[0]}-{wa[1]}"
        if "state" in self.best:
            core.load_state_dict(self.best["state"])
            return f"best on valid (epoch {self.best['epoch']})"
        return "last"


def finetune_all(recipe: FinetuneRecipe) -> dict[str, Any]:
    """One run, or k-fold cross-validation over ``data.folds`` (mean and per-fold results)."""
    try:
        return _cross_validate(recipe) if recipe.data.folds else finetune(recipe)
    finally:
        end_process_group()


def _cross_validate(recipe: FinetuneRecipe) -> dict[str, Any]:
    per_fold = {}
    for f in recipe.data.folds:
        per_fold[f] = finetune(recipe, recipe.run_dir / f"fold-{f}", fold=f)
    key = "test"
    mains = [r[key]["main"] for r in per_fold.values()]
    summary = {"folds": {str(f): {k: v for k, v in r[key].items() if k != "per_class"} for f, r in per_fold.items()},
               "mean_main": float(np.mean(mains)), "std_main": float(np.std(mains))}
    if PartialState().is_main_process:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recipe.run_dir / "metrics.json", summary)
    return summary
