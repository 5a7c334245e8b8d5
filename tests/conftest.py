"""Shared fixtures: a tiny synthetic corpus sharded once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600, cwd=None):
    """Run ``python -m ...`` in a subprocess; returns the CompletedProcess (stdout/stderr as text)."""
    full_env = os.environ.copy() | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def launch_two_cpu_ranks(*args: str, timeout: float = 450) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``python -m ARGS`` as 2 real CPU processes (one thread each); not checked."""
    env = os.environ.copy() | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """24 synthetic clips written in-process (the sharding tests' input)."""
    from data_prep import synth

    src = tmp_path_factory.mktemp("synth")
    synth.synthesize(src, clips=24, seed=0, progress=False)
    return src


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """36 synthetic clips (mixed formats/rates) with manifest.csv and train/valid/test splits."""
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    run_cli("data_prep", "synth", str(out), "--clips", "36", "--seed", "0")
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus sharded into OUT/{train,valid,test} (several small shards each)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    run_cli("data_prep", "shard", str(tiny_corpus), str(out), "--samples-per-shard", "4", "--workers", "1")
    return out
