"""Pretraining checkpoints: the counters saved with them and atomic save/load with the stream position."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""


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
