"""The online probe: every ``eval.probe_every`` steps the frozen encoder is probed on labeled sets.

The same code as ``finetune probe`` (:func:`.suite.probe_task`: whole clips, every layer from one
forward pass, ridge probes with L2 and layer chosen on valid, test score), on the first
``eval.probe_max_clips`` clips of each split, without the weighted layer sum. It runs on the main
process while the others wait, and leaves the training stream untouched: the RNG states (torch, CUDA,
numpy, python) are restored, every module gets its training flag back, and it draws no random numbers
and changes no parameter or buffer (eval mode, ``no_grad``), so a run with the probe is bitwise equal
to one without it.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import DataError, ShardSet
from ..encoder import Encoder
from .suite import ProbeSettings, parse_task, probe_task


class _Frozen:
    """Context: module in eval mode, no gradients, RNG states saved; everything restored on exit."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    np.random.get_state(), random.getstate())
        self.grad = torch.is_grad_enabled()
        self.module.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch.set_grad_enabled(self.grad)
        for m, mode in self.modes:
            m.training = mode
        cpu, cuda, np_state, py_state = self.rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


class OnlineProbe:
    """``due(step)`` says when; ``run(acc, encoder, step, write)`` probes and returns the logged metrics."""

    def __init__(self, probe_sets: list[str], every: int, max_clips: int | None):
        if every < 0:
            raise DataError(f"eval.probe_every must be >= 0 (0 = only at the end), got {every}")
        self.tasks: list[tuple[str, dict[str, ShardSet]]] = []
        for spec in probe_sets:
            self.tasks.append(parse_task(spec, "eval.probe_sets:"))
        self.every, self.max_clips = every, max_clips
        self.history: list[dict[str, Any]] = []

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def due(self, step: int, max_steps: int) -> bool:
        return bool(self.tasks) and ((self.every and step % self.every == 0) or step == max_steps)

    def probe(self, encoder: Encoder, step: int, device: torch.device | str) -> dict[str, Any]:
        """Probe every set with the encoder frozen; ``{"step", "seconds", "probe/<name>/<metric>": ...}``."""
        settings = ProbeSettings(poolings=("mean", "meanstd"), max_clips=self.max_clips, device=str(device),
                                 weighted=False)
        t0 = time.perf_counter()
        out: dict[str, Any] = {"step": step}
        with _Frozen(encoder):
            for name, splits in self.tasks:
                task = probe_task(name, splits, {"encoder": encoder}, False, settings)
                best = task["results"]["encoder"]["best"]
                out[f"probe/{name}/{'acc' if task['kind'] == 'single_label' else 'mAP'}"] = best["test"]
                out[f"probe/{name}/layer"] = best["layer_index"]
                out[f"probe/{name}/valid"] = best["valid"]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.history.append(out)
        return out

    def run(self, acc: Any, encoder: Encoder, step: int, write=print) -> dict[str, Any]:
        """On the main process: probe, log to the trackers, print one line; the other ranks wait."""
        out: dict[str, Any] = {}
        if acc.is_main_process:
            out = self.probe(encoder, step, acc.device)
            acc.log({k: v for k, v in out.items() if k.startswith("probe/")}, step=step)
            scores = "  ".join(f"{k[6:]} {v:.3f}" for k, v in out.items()
                               if k.startswith("probe/") and k.endswith(("/acc", "/mAP")))
            write(f"probe at step {step}: {scores} ({out['seconds']:.1f} s)")
        acc.wait_for_everyone()
        return out
