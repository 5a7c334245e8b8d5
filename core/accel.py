"""The ``accelerate`` setup shared by pretraining and fine-tuning."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from accelerate import Accelerator
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


def end_training(acc: Accelerator) -> None:
    """Destroy the process group once no prepared (DDP-wrapped) model is left alive.

    Callers drop their own references to the prepared model first; this drops accelerate's and collects
    them. A DDP wrapper that outlives the gloo process group is destroyed during interpreter shutdown,
    where it aborts the process ("terminate called without an active exception", SIGABRT) in about
    5-15% of two-rank CPU runs, after all the work is done (bench/RESULTS.md, "Two-rank exit abort")."""
    acc.free_memory()
    gc.collect()
    acc.end_training()
