"""Fine-tuning loop: exported encoder -> task model, with validation-based model selection and test metrics.

Runs alone or under ``accelerate launch`` (every rank reads its own shards; metrics are gathered).
"""

from __future__ import annotations

import copy
import json
import math
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object, set_seed

from core import shard_format as fmt
from core.accel import make_accelerator
from core.jsonio import write_json_atomic
from core.optim import build_optimizer
from core.progress import Progress
from core.schedule import warmup_cosine_lr
from pretrain.config import RecipeError, save_recipe
from pretrain.data import DataError, ShardSet, ShardStream, make_loader, resolve_shards
from pretrain.encoder import ExportError
from pretrain.features import FeatureConfig, Normalization, resolve_normalization
from pretrain.stats import compute_stats

from .augment import augment_batch
from .config import FinetuneRecipe
from .heads import Classifier, layer_decay_groups, load_encoder
from .metrics import compute_metrics


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


def task_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()  # soft targets (mixup) allowed


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


@torch.no_grad()
def predict_shards(acc, model: Classifier, shards: ShardSet, recipe: FinetuneRecipe, norm: Normalization,
                   weight=None, feature_cache: dict | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
                             sample_weight=weight)
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
    run_dir = Path(run_dir or recipe.run_dir)
    acc = make_accelerator(recipe.train.mixed_precision, run_dir)
    is_main = acc.is_main_process
    d, t = recipe.data, recipe.train
    if not recipe.model.encoder:
        raise ExportError("model.encoder is not set: give an export directory (--set model.encoder=runs/X/export)")
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

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "config.json")
    set_seed(t.seed)
    encoder = load_encoder(recipe.model.encoder, recipe.model.random_init, seed=t.seed)
    norm = normalization_for(recipe, encoder.config.normalization, train_set, run_dir, acc,
                                 encoder.config.features)
    encoder.config.normalization = norm
    if recipe.model.stride:
        encoder.set_stride(tuple(recipe.model.stride))
    try:
        model = Classifier(encoder, labels, recipe.model.pooling, recipe.task.kind, recipe.model.head_dropout,
                           linear_probe=recipe.model.mode == "linear_probe")
    except ValueError as e:
        raise RecipeError(f"model.pooling: {e}") from e
    o = recipe.optim
    groups = layer_decay_groups(model, o.lr, o.weight_decay, recipe.model.layer_decay, o.head_lr_mult)
    optimizer = build_optimizer(o.name, groups, o.lr, o.betas, o.eps)
    model, optimizer = acc.prepare(model, optimizer)
    core: Classifier = acc.unwrap_model(model)

    world = acc.num_processes
    n_train = train_set.num_samples or 0
    if fold is not None and d.folds:
        n_train = int(n_train * (len(d.folds) - 1) / len(d.folds))
    steps_per_epoch = t.steps_per_epoch or max(1, n_train // (t.batch_size * world))
    total = steps_per_epoch * t.epochs
    stream = ShardStream(train_set, batch_size=t.batch_size, target_frames=d.target_frames, mode="train",
                         seed=t.seed, rank=acc.process_index, world_size=world, num_workers=d.num_workers,
                         shuffle_buffer=d.shuffle_buffer, features=core.encoder.config.features, normalization=norm,
                         vocabulary=labels, sample_weight=train_weight)
    gen = torch.Generator().manual_seed(t.seed * 1000 + acc.process_index)
    progress = Progress(total, "finetune", enabled=is_main)
    best: dict[str, Any] = {"main": -math.inf}
    wa_sum: dict[str, torch.Tensor] | None = None
    wa_count = 0
    history = []
    step = 0
    t0 = time.time()
    probe = ProbeViews(t.probe_views) if core.linear_probe and t.probe_views > 0 else None
    eval_cache: dict | None = {} if core.linear_probe else None  # a frozen encoder's eval features never change
    for epoch in range(t.epochs):
        model.train()
        if probe is not None:
            batches = probe.batches(epoch, acc, core, stream, steps_per_epoch, recipe, norm, gen)
        else:
            stream.set_epoch(epoch)
            batches = encoder_batches(iter(make_loader(stream)), steps_per_epoch, recipe, norm, gen, acc.device)
        losses = []
        for inputs, y in batches:
            lr = epoch_lr(recipe, epoch, step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with acc.autocast():
                logits = model(**inputs)
                loss = task_loss(logits.float(), y, recipe.task.loss)
            acc.backward(loss)
            if o.clip_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), o.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % t.log_every == 0:
                progress.update(step, f"epoch {epoch + 1}/{t.epochs} loss {np.mean(losses[-t.log_every:]):.4f} lr {lr:.2e}",
                                log=True)
            else:
                progress.update(step)
        del batches
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if valid_set is not None:
            s, tg, _ = predict_shards(acc, core, valid_set, recipe, norm, eval_weight, eval_cache)
            m = compute_metrics(s, tg, labels, recipe.task.kind)
            entry["valid"] = {k: v for k, v in m.items() if k != "per_class"}
            if m["main"] > best["main"]:
                best = {"main": m["main"], "epoch": epoch + 1, "state": copy.deepcopy(core.state_dict())}
        wa = t.weight_averaging
        if wa and wa[0] <= epoch + 1 <= wa[1]:
            sd = core.state_dict()
            wa_sum = {k: v.detach().clone().double() for k, v in sd.items()} if wa_sum is None else \
                {k: wa_sum[k] + sd[k].double() for k in sd}
            wa_count += 1
        history.append(entry)
        if is_main:
            v = entry.get("valid", {})
            progress.write(f"finetune: epoch {epoch + 1}/{t.epochs} train loss {entry['train_loss']:.4f}"
                           + (f" | valid {recipe.task.kind == 'multi_label' and 'mAP' or 'acc'} {v.get('main', float('nan')):.4f}" if v else ""))

    progress.close()
    selected = "last"
    if wa_sum is not None:
        core.load_state_dict({k: (v / wa_count).to(core.state_dict()[k].dtype) for k, v in wa_sum.items()})
        selected = f"weight average of epochs {t.weight_averaging[0]}-{t.weight_averaging[1]}"
    elif "state" in best:
        core.load_state_dict(best["state"])
        selected = f"best on valid (epoch {best['epoch']})"
    result: dict[str, Any] = {"selected": selected, "history": history, "labels": labels,
                              "mode": recipe.model.mode, "random_init": recipe.model.random_init,
                              "normalization": {"mean": norm.mean, "std": norm.std}, "seconds": time.time() - t0}
    if valid_set is not None:
        s, tg, _ = predict_shards(acc, core, valid_set, recipe, norm, eval_weight, eval_cache)
        result["valid"] = compute_metrics(s, tg, labels, recipe.task.kind)
    if test_set is not None:
        s, tg, _ = predict_shards(acc, core, test_set, recipe, norm, eval_weight, eval_cache)
        result["test"] = compute_metrics(s, tg, labels, recipe.task.kind)
    if is_main:
        core.save_pretrained(run_dir / "export", d.target_frames,
                             extra={"finetuned_from": recipe.model.encoder, "selected": selected,
                                    "display_names": (train_set.index or {}).get("display_names")})
        write_json_atomic(run_dir / "metrics.json", result)
    acc.end_training()
    return result


def finetune_all(recipe: FinetuneRecipe) -> dict[str, Any]:
    """One run, or k-fold cross-validation over ``data.folds`` (mean and per-fold results)."""
    if not recipe.data.folds:
        return finetune(recipe)
    per_fold = {}
    for f in recipe.data.folds:
        per_fold[f] = finetune(recipe, recipe.run_dir / f"fold-{f}", fold=f)
    key = "test"
    mains = [r[key]["main"] for r in per_fold.values()]
    summary = {"folds": {str(f): {k: v for k, v in r[key].items() if k != "per_class"} for f, r in per_fold.items()},
               "mean_main": float(np.mean(mains)), "std_main": float(np.std(mains))}
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(recipe.run_dir / "metrics.json", summary)
    return summary
