"""The ``accelerate`` setup shared by pretraining and fine-tuning."""

from __future__ import annotations

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
