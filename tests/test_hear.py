"""The HEAR API (finetune/hear.py), checked the way the HEAR validator does, for every backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from finetune import hear
from finetune.predict import embed, window_features
from pretrain.encoder import Encoder, EncoderConfig

from .test_backbones_pipeline import TINY_BACKBONES


def export(path: Path, backbone: str = "vit", frames: int = 128, **extra) -> Path:
    torch.manual_seed(0)
    Encoder(EncoderConfig(backbone=backbone, backbone_config=dict(TINY_BACKBONES[backbone]) | extra,
                          input_frames=frames)).save_pretrained(path)
    return path


def audio(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    tone = torch.sin(2 * torch.pi * (200 + 300 * torch.rand(n, 1, generator=g)) * t)
    return (0.3 * tone + 0.05 * torch.randn(n, len(t), generator=g)).clamp(-1, 1)


def test_attributes_and_file_paths(tmp_path):
    path = export(tmp_path / "m")
    for given in (path, path / "model.safetensors", path / "config.json"):
        model = hear.load_model(str(given))
        assert isinstance(model, torch.nn.Module)
        for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
            assert type(getattr(model, name)) is int, name
        assert model.sample_rate == 16000 and model.scene_embedding_size == 32 == model.timestamp_embedding_size
        assert model.hop_ms == 40.0  # 16-frame patch columns (160 ms) in 4 shifted passes


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_shapes_timestamps_and_determinism_for_every_backbone(backbone, tmp_path):
    model = hear.load_model(str(export(tmp_path / backbone, backbone)))
    lengths = (0.1, 1.0, 3.3, 60.0) if backbone == "vit" else (0.1, 2.9)
    for seconds in lengths:
        for n in (1, 3) if seconds < 10 else (1,):
            x = audio(n, seconds)
            scene = hear.get_scene_embeddings(x, model)
            emb, ts = hear.get_timestamp_embeddings(x, model)
            assert scene.shape == (n, model.scene_embedding_size) and scene.dtype == torch.float32
            assert emb.shape == (n, ts.shape[1], model.timestamp_embedding_size) and ts.shape == (n, emb.shape[1])
            assert torch.isfinite(scene).all() and torch.isfinite(emb).all()
            d = torch.diff(ts, dim=1)
            assert (d > 0).all() and (d <= hear.MAX_HOP_MS + 1e-3).all(), (seconds, ts)
            assert ts.min() >= 0 and ts.max() <= 1000 * seconds
            assert ts.shape[1] >= int(1000 * seconds / model.hop_ms) - 4  # the whole duration is covered
            if seconds == 1.0 and n == 3:  # deterministic, and a sound's embedding does not depend on its batch
                assert torch.equal(scene, hear.get_scene_embeddings(x, model))
                torch.testing.assert_close(hear.get_scene_embeddings(x[1:2], model), scene[1:2], rtol=1e-4, atol=1e-5)
                e1, t1 = hear.get_timestamp_embeddings(x[2:3], model)
                torch.testing.assert_close(e1, emb[2:3], rtol=1e-4, atol=1e-5)
                assert torch.equal(t1, ts[2:3])


def test_timestamp_embeddings_are_patch_columns_of_the_encoder(tmp_path):
    model = hear.load_model(str(export(tmp_path / "m", num_cls=2)))  # AST/SSAST-like: 2 cls tokens
    x = audio(1, 2.0)
    emb, ts = hear.get_timestamp_embeddings(x, model)
    fb, _ = window_features(model.encoder, [x[0, :model.window]], 128)
    with torch.no_grad():
        out = model.encoder(fb).patches.reshape(1, 8, 8, -1).mean(2)  # (1, nt, D): columns of the first window
    torch.testing.assert_close(emb[0, 0], out[0, 0])  # shift 0, column 0
    torch.testing.assert_close(emb[0, 4], out[0, 1])  # 4 shifts per column
    assert ts[0, 0].item() == pytest.approx((0 + 15 * 160 + 400) / 2 / 16)


def test_scene_embeddings_equal_finetune_embed(tmp_path):
    path = export(tmp_path / "m")
    model = hear.load_model(str(path))
    x = audio(2, 3.7)
    files = []
    for i in range(2):
        files.append(tmp_path / f"a{i}.wav")
        sf.write(files[-1], x[i].numpy(), 16000, subtype="FLOAT")  # bit-exact float audio
    embed(str(path), [str(f) for f in files], str(tmp_path / "emb"))
    for i in range(2):
        pooled = np.load(tmp_path / "emb" / f"a{i}.npz")["pooled"]
        torch.testing.assert_close(hear.get_scene_embeddings(x, model)[i], torch.from_numpy(pooled), rtol=1e-5, atol=1e-6)


def test_frame_patches_need_no_shifts(tmp_path):
    torch.manual_seed(0)
    Encoder(EncoderConfig(backbone="vit", backbone_config=dict(TINY_BACKBONES["vit"]), patch=(2, 128),
                          stride=(2, 128), input_frames=128)).save_pretrained(tmp_path / "f")
    model = hear.load_model(str(tmp_path / "f"))
    assert model.shifts == 1 and model.hop_ms == 20.0
    emb, ts = hear.get_timestamp_embeddings(audio(1, 1.0), model)
    assert torch.allclose(torch.diff(ts[0]), torch.tensor(20.0)) and emb.shape[1] == ts.shape[1]


def test_bad_audio_shape_is_named(tmp_path):
    model = hear.load_model(str(export(tmp_path / "m")))
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\)"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
