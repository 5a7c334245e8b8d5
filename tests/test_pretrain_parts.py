"""Recipes, ViT sizes, Encoder export, and the shard stream."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from pretrain.backbones import make_backbone_config
from pretrain.config import RecipeError, load_recipe
from pretrain.data import DataError, ShardStream, make_loader, resolve_shards
from pretrain.encoder import Encoder, EncoderConfig, ExportError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- recipes
def test_every_shipped_recipe_loads():
    for path in sorted((REPO / "recipes" / "pretrain").glob("*.toml")):
        r = load_recipe(path)
        make_backbone_config(r.model.backbone, r.model.preset, **r.model.backbone_config)


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1e-4\n")
    with pytest.raises(RecipeError, match="learning_rate.*valid keys: name, lr"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="unknown key 'modle'"):
        load_recipe(None, ["modle.backbone=vit"])
    with pytest.raises(RecipeError, match="train.batch_size: expected an integer"):
        load_recipe(None, ["train.batch_size=big"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_set_overrides_are_typed():
    r = load_recipe(None, ["optim.lr=3e-4", "model.patch=[2, 128]", "data.train=a/b", "model.backbone_config.dim=96"])
    assert r.optim.lr == 3e-4 and r.model.patch == [2, 128] and r.data.train == "a/b"
    assert r.model.backbone_config == {"dim": 96}


# ----------------------------------------------------------------------------- ViT and Encoder
@pytest.mark.parametrize("preset,expected", [("tiny", 5.3e6), ("small", 21.3e6), ("base", 85.1e6)])
def test_vit_parameter_counts_match_ssast(preset, expected):
    """SSAST's encoder counts (5.3/21.3/85.1 M) are the transformer (blocks, final norm, cls tokens):
    patch and position embeddings (~0.15-0.6 M) come on top."""
    enc = Encoder(EncoderConfig(backbone="vit", backbone_config=dataclasses.asdict(make_backbone_config("vit", preset))))
    transformer = sum(p.numel() for n, p in enc.named_parameters()
                      if n.startswith(("backbone.blocks", "backbone.norm", "backbone.cls_tokens")))
    assert abs(transformer - expected) / expected < 0.02


def _tiny_encoder(**kw) -> Encoder:
    torch.manual_seed(0)
    cfg = dict(backbone="vit", backbone_config={"dim": 32, "depth": 2, "num_heads": 2}, input_frames=128)
    return Encoder(EncoderConfig(**(cfg | kw)))


def test_encoder_round_trip_is_bit_exact(tmp_path):
    enc = _tiny_encoder().eval()
    enc.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    again = Encoder.from_pretrained(tmp_path / "export").eval()
    x = torch.randn(2, 128, 128)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    for m in (None, mask):
        a, b = enc(x, m), again(x, m)
        assert torch.equal(a.patches, b.patches) and torch.equal(a.cls, b.cls)
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    for key in ("format_version", "backbone", "patch", "stride", "token_order", "features", "normalization"):
        assert key in cfg
    assert cfg["token_order"] == "time-major" and cfg["backbone_config"]["num_cls"] == 2


def test_encoder_other_lengths_and_hidden_states():
    enc = _tiny_encoder().eval()
    out = enc(torch.randn(1, 300, 128), output_hidden_states=True)
    assert out.grid == (18, 8) and out.patches.shape == (1, 144, 32) and len(out.hidden_states) == 2
    enc.set_stride((10, 10))
    assert enc(torch.randn(1, 128, 128)).grid == (12, 12)


def test_mask_replaces_embeddings_with_the_mask_embedding():
    enc = _tiny_encoder().eval()
    x = torch.randn(1, 128, 128)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, 5] = True
    y = x.clone()
    y[0, 0:16, 5 * 16:6 * 16] += 5.0  # change only the content of masked patch (t=0, f=5)
    a, b = enc(x, mask).patches, enc(y, mask).patches
    assert torch.allclose(a, b, atol=1e-6)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ExportError, match="not a model directory"):
        Encoder.from_pretrained(tmp_path / "nope")
    d = tmp_path / "broken"
    _tiny_encoder().save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"backbone": "transformerx"}))
    with pytest.raises(ExportError, match="backbone = 'transformerx' is not one of.*vit"):
        Encoder.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        Encoder.from_pretrained(d)


# ----------------------------------------------------------------------------- shard stream
def _keys(stream: ShardStream) -> list[str]:
    return [k for b in make_loader(stream) for k in b["keys"]]


def test_resolve_shards_forms_and_errors(tiny_shards):
    by_dir = resolve_shards(str(tiny_shards / "train"))
    by_index = resolve_shards(str(tiny_shards / "train" / "index.json"))
    assert by_dir.urls == by_index.urls and by_dir.num_samples > 0 and by_dir.vocabulary
    n = len(by_dir.urls)
    pattern = str(tiny_shards / "train" / f"train-{{000000..{n - 1:06d}}}.tar")
    assert resolve_shards(pattern).urls == by_dir.urls
    both = resolve_shards([str(tiny_shards / "train"), str(tiny_shards / "valid" / "index.json")])
    valid = resolve_shards(str(tiny_shards / "valid"))
    assert both.urls == by_dir.urls + valid.urls
    assert both.num_samples == by_dir.num_samples + valid.num_samples
    assert set(both.vocabulary) == set(by_dir.vocabulary) | set(valid.vocabulary)
    mixed = resolve_shards([str(tiny_shards / "train"), valid.urls[0]])  # a tar without an index: no count
    assert mixed.urls == by_dir.urls + valid.urls[:1] and mixed.num_samples is None
    with pytest.raises(DataError, match="lists shard sets, not shards; use one of: test, train, valid"):
        resolve_shards([str(tiny_shards / "train"), str(tiny_shards)])
    with pytest.raises(DataError, match="pipe: URLs run shell commands"):
        resolve_shards("pipe:cat x.tar")
    with pytest.raises(DataError, match="not found"):
        resolve_shards(str(tiny_shards / "nothing-{000..002}.tar"))
    with pytest.raises(DataError, match="no shards given"):
        resolve_shards("")


def test_eval_reads_each_sample_exactly_once(tiny_shards):
    shards = resolve_shards(str(tiny_shards / "train"))
    seen = []
    for rank in range(2):
        s = ShardStream(shards, batch_size=3, target_frames=64, mode="eval", rank=rank, world_size=2)
        seen += _keys(s)
    assert len(seen) == len(set(seen)) == shards.num_samples


def test_eval_with_too_few_shards_is_a_clear_error(tiny_shards):
    shards = resolve_shards(str(tiny_shards / "valid"))
    with pytest.raises(DataError, match="cannot be read exactly once"):
        ShardStream(shards, batch_size=2, target_frames=64, mode="eval", world_size=len(shards.urls) + 1)


def test_train_stream_is_deterministic_and_ranks_are_disjoint(tiny_shards):
    shards = resolve_shards(str(tiny_shards / "train"))

    def first(rank, seed=0, epoch=0, n=4):
        s = ShardStream(shards, batch_size=2, target_frames=64, seed=seed, rank=rank, world_size=2, shuffle_buffer=4)
        s.set_epoch(epoch)
        it = iter(make_loader(s))
        return [next(it) for _ in range(n)]

    a, b = first(0), first(0)
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all(torch.equal(x["fbank"], y["fbank"]) for x, y in zip(a, b))
    assert [x["keys"] for x in first(0, epoch=1)] != [x["keys"] for x in a]
    keys_of_rank = [{k for x in first(r) for k in x["keys"]} for r in (0, 1)]
    assert not (keys_of_rank[0] & keys_of_rank[1])


def test_resume_position_continues_the_stream(tiny_shards):
    shards = resolve_shards(str(tiny_shards / "train"))
    kw = dict(batch_size=2, target_frames=64, seed=3, num_workers=2, shuffle_buffer=3)
    full = ShardStream(shards, **kw)
    it = iter(make_loader(full))
    batches = [next(it) for _ in range(7)]
    del it
    k = 3  # resume after 3 batches, with each logical worker's raw position
    pos = {}
    for b in batches[:k]:
        pos[b["worker"]] = b["raw"]
    resumed = ShardStream(shards, **kw)
    resumed.set_epoch(0, start_batch=k, skip_raw=pos)
    it = iter(make_loader(resumed))
    rest = [next(it) for _ in range(4)]
    assert [b["keys"] for b in rest] == [b["keys"] for b in batches[k:]]
    assert all(torch.equal(x["fbank"], y["fbank"]) for x, y in zip(rest, batches[k:]))


def test_corrupt_samples_are_skipped_and_counted(tiny_shards, tmp_path):
    src = sorted((tiny_shards / "train").glob("*.tar"))[0]
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        members = tin.getmembers()
        for i, m in enumerate(members):
            data = tin.extractfile(m).read()
            if i == 0 and m.name.endswith(".flac"):
                data = b"garbage" * 10
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    shards = resolve_shards(str(bad))
    s = ShardStream(shards, batch_size=1, target_frames=64, mode="eval", drop_last=False)
    batches = list(make_loader(s))
    n_flac = sum(1 for m in members if m.name.endswith(".flac"))
    assert len(batches) == n_flac - 1
    assert sum(len(b["corrupt_keys"]) for b in batches) == 1
