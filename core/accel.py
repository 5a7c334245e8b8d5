"""The ``accelerate`` setup shared by pretraining and fine-tuning."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration


def make_accelerator(mixed_precision: str, run_dir: Path) -> Accelerator:
    """CPU when no GPU is present; ``"auto"`` precision is fp32 on CPU and bf16 (else fp16) on GPU;
    TensorBoard logs under ``run_dir/logs``."""
    use_cpu = not torch.cuda.is_available()
    mp = mixed_precision
    if mp == "auto":
        mp = "no" if use_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Accelerator(
        cpu=use_cpu,
        mixed_precision=mp,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


def release_prepared(acc: Accelerator) -> None:
    """Drop accelerate's references to the models and optimizers it prepared, and collect them.

    Callers drop their own references to the prepared model first. A DDP wrapper must be gone before the
    process group is destroyed: one left to interpreter shutdown aborts the process ("terminate called
    without an active exception", SIGABRT) in about 5-15% of two-rank CPU runs, after all the work is
    done (bench/RESULTS.md, "Two-rank exit abort")."""
    acc.free_memory()
    gc.collect()


def end_training(acc: Accelerator) -> None:
    """The end of a process's only training run: :func:`release_prepared`, then destroy the process group."""
    release_prepared(acc)
    acc.end_training()


def end_process_group() -> None:
    """Destroy the process group (if any) once every training run of this process is done: a process that
    trains several times (k-fold cross-validation, ``finetune compare``) keeps one group throughout, since
    accelerate does not create a second one."""
    gc.collect()
    PartialState().destroy_process_group()
