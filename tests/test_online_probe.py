"""The online probe of pretraining ([eval] probe_sets): logged, recorded in the export, and the
training stream is bitwise the same as without it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pretrain.encoder import Encoder, EncoderConfig
from pretrain.evaluation.online import OnlineProbe, _Frozen

from .conftest import run_cli
from .test_pretrain_run import tiny_args

# Dropout and drop-path on: a probe that left the model in eval mode, or drew random numbers, would
# change the training run.
NOISY = ["model.backbone_config.dropout=0.1", "model.backbone_config.drop_path=0.1", "train.max_steps=5",
         "data.samples_per_epoch=16"]


@pytest.mark.timeout(600)
def test_a_run_with_the_probe_is_bitwise_the_run_without_it(tiny_shards, tmp_path):
    run_cli(*tiny_args(tiny_shards, tmp_path, "plain", *NOISY))
    probe = [f'eval.probe_sets=["synth={tiny_shards}"]', "eval.probe_every=2", "eval.probe_max_clips=12"]
    proc = run_cli(*tiny_args(tiny_shards, tmp_path, "probed", *NOISY, *probe))
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    assert (plain / "export" / "model.safetensors").read_bytes() == (probed / "export" / "model.safetensors").read_bytes()
    assert (plain / "export" / "heads.safetensors").read_bytes() == (probed / "export" / "heads.safetensors").read_bytes()
    m0, m1 = (json.loads((r / "metrics.json").read_text()) for r in (plain, probed))
    assert m0["history"] == m1["history"] and m0["probe"] == []
    assert [p["step"] for p in m1["probe"]] == [2, 4, 5]  # every 2 steps and at the end
    last = m1["probe"][-1]
    assert 0.0 <= last["probe/synth/acc"] <= 1.0 and last["seconds"] > 0
    assert "probe at step 2: synth/acc" in proc.stderr
    cfg = json.loads((probed / "export" / "config.json").read_text())
    assert cfg["pretraining"]["online_probe"] == last
    Encoder.from_pretrained(probed / "export")  # the extra entry does not disturb loading

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((probed / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert [s.step for s in events.Scalars("probe/synth/acc")] == [2, 4, 5]


def test_frozen_restores_modes_and_rng_states():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(backbone="vit", backbone_config={"dim": 32, "depth": 2, "num_heads": 2, "dropout": 0.5},
                                input_frames=64))
    enc.train()
    enc.backbone.blocks[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in enc.modules()]
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with _Frozen(enc):
        assert not any(m.training for m in enc.modules()) and not torch.is_grad_enabled()
        torch.rand(5), np.random.rand(3), random.random()
        out1 = enc(torch.randn(1, 64, 128)).patches
        out2 = enc(torch.randn(1, 64, 128)).patches
        assert not out1.requires_grad and out2 is not None
    assert [m.training for m in enc.modules()] == modes and torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_probe_set_errors_name_the_key(tiny_shards, tmp_path):
    with pytest.raises(ValueError, match="eval.probe_sets: 'nonsense': expected NAME=SHARDS_DIR"):
        OnlineProbe(["nonsense"], 10, None)
    with pytest.raises(ValueError, match=r"eval.probe_sets: x: .*has no train/index.json or test/index.json"):
        OnlineProbe([f"x={tiny_shards / 'train'}"], 10, None)
    assert not OnlineProbe([], 10, None).due(10, 10)
    p = run_cli(*tiny_args(tiny_shards, tmp_path, "bad", "train.max_steps=1", 'eval.probe_sets=["oops"]'), check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: eval.probe_sets:")
