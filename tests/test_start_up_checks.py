"""Shard sets are checked against processes x loader workers at start-up, before any training step."""

from __future__ import annotations

import pytest

from pretrain.data import DataError, ShardSet, fit_workers

from .conftest import launch_two_cpu_ranks
from .test_pretrain_run import tiny_args


def test_fit_workers_names_the_key_and_fits_workers(capsys):
    three = ShardSet(urls=["a.tar", "b.tar", "c.tar"], source="valid/index.json")
    with pytest.raises(DataError, match=r"data.valid: valid/index.json has 3 shard\(s\) for 4 processes"):
        fit_workers(three, "data.valid", 4, 2)
    assert fit_workers(three, "data.train", 1, 2) == 2  # enough shards: unchanged, nothing said
    assert capsys.readouterr().err == ""
    assert fit_workers(three, "data.train", 2, 2, announce=True) == 1  # 2 x 2 slots > 3 shards: 1 worker each
    assert "using 1 worker(s) per process" in capsys.readouterr().err
    assert fit_workers(three, "data.test", 3, 0) == 0


@pytest.mark.timeout(300)
def test_two_ranks_refuse_a_one_shard_valid_set_before_step_1(tiny_shards, tmp_path):
    """Two real ranks: the validation set would fail at its first use; it must fail before training."""
    one = sorted((tiny_shards / "valid").glob("*.tar"))[0]
    args = tiny_args(tiny_shards, tmp_path, "v", "train.max_steps=4", "train.val_every=2", f"data.valid={one}")
    proc = launch_two_cpu_ranks(*args, timeout=250)
    assert proc.returncode != 0
    assert f"error: data.valid: {one} has 1 shard(s) for 2 processes" in proc.stderr, proc.stderr[-3000:]
    assert "pretrain: " not in proc.stderr and "loss" not in proc.stderr  # no header, no step
    assert not (tmp_path / "v" / "checkpoints").exists()
