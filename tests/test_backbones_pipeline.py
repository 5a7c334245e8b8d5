"""Every registered backbone through the whole pipeline: masked pretraining (CLI), export,
``from_pretrained``, fine-tuning (CLI) and ``predict`` on an audio file."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.backbones import available_backbones
from pretrain.encoder import Encoder

from .conftest import REPO, run_cli

TINY_BACKBONES = {
    "vit": {"dim": 32, "depth": 2, "num_heads": 2},
    "mamba": {"dim": 32, "depth": 2},
    "rwkv7": {"dim": 64, "depth": 2},
    "repinception": {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "decoder_width": 16, "dim": 32},
}


def test_every_registered_backbone_is_covered():
    assert set(available_backbones()) == set(TINY_BACKBONES)


def _sets(pairs: dict) -> list[str]:
    return [a for k, v in pairs.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_backbone_pretrain_export_finetune_predict(backbone, tiny_shards, tiny_corpus, tmp_path):
    pre = {
        "model.backbone": backbone, "model.preset": "", "model.backbone_config": TINY_BACKBONES[backbone],
        "data.train": str(tiny_shards / "train"), "data.valid": "", "data.target_frames": 128,
        "data.num_workers": 0, "data.shuffle_buffer": 8, "data.samples_per_epoch": 16, "masking.count": 30,
        "train.batch_size": 4, "train.max_steps": 4, "train.log_every": 1, "train.checkpoint_every": 0,
        "run.output_dir": str(tmp_path), "run.name": "pre", "schedule.warmup_steps": 1,
    }
    run_cli("pretrain", "train", "--recipe", str(REPO / "recipes/pretrain/demo.toml"), *_sets(pre))
    export = tmp_path / "pre" / "export"
    metrics = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in metrics["history"])
    enc = Encoder.from_pretrained(export).eval()
    assert enc.config.backbone == backbone
    x = torch.randn(1, 160, 128)
    assert torch.equal(enc(x).patches, Encoder.from_pretrained(export).eval()(x).patches)

    ft = {
        "model.encoder": str(export), "data.train": str(tiny_shards / "train"), "data.valid": str(tiny_shards / "valid"),
        "data.test": "", "data.target_frames": 128, "data.num_workers": 0, "data.shuffle_buffer": 8,
        "train.batch_size": 4, "train.epochs": 1, "train.steps_per_epoch": 3, "features.use_encoder_stats": True,
        "run.output_dir": str(tmp_path), "run.name": "ft",
    }
    run_cli("finetune", "train", "--recipe", str(REPO / "recipes/finetune/demo.toml"), *_sets(ft))
    wav = next(p for p in sorted(tiny_corpus.rglob("*")) if p.suffix in (".wav", ".flac", ".ogg"))
    out = tmp_path / "pred.jsonl"
    run_cli("finetune", "predict", "--model", str(tmp_path / "ft" / "export"), str(wav), "--jsonl", str(out))
    rec = json.loads(out.read_text().splitlines()[0])
    assert abs(sum(rec["scores"]) - 1.0) < 1e-3 and rec["top"]
