"""Run models on audio files: ``predict`` (labels per file, sliding windows) and ``embed`` (features).

Any format and sample rate soundfile reads; resampled to 16 kHz. Long files are cut into windows of
the model's input length (``hop`` apart); per-window scores are averaged into the file's scores.
An unreadable file is reported and skipped; the others are still processed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import shard_format as fmt
from data_prep.audio import AudioError, load_audio
from pretrain.encoder import Encoder, read_export
from pretrain.features import model_input, pad_waves
from pretrain.patches import valid_patches


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to the audio files below them (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if fmt.is_audio_file(f.name) and f.is_file())
        else:
            out.append(p)
    return out


def windows(wave: np.ndarray, window: int, hop: int) -> list[tuple[int, np.ndarray]]:
    """``(start sample, chunk)`` sliding windows covering the whole file (the last one may be shorter)."""
    if wave.size <= window:
        return [(0, wave)]
    starts = list(range(0, wave.size - window + 1, hop))
    if starts[-1] + window < wave.size:
        starts.append(wave.size - window)
    return [(s, wave[s:s + window]) for s in starts]


def window_features(encoder: Encoder, chunks: list[np.ndarray], target_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's input for a file's windows, exactly as the training loader builds it."""
    cfg = encoder.config
    return model_input(*pad_waves(chunks), cfg.features, cfg.normalization, target_frames)


def _load(path: Path, sr: int) -> np.ndarray:
    wave, _ = load_audio(path, target_sr=sr)
    return wave


def iter_windows(paths: list[Path], encoder: Encoder, target_frames: int, hop_seconds: float | None,
                 errors: list[dict[str, str]]) -> Iterator[tuple[Path, list[int], torch.Tensor, torch.Tensor]]:
    cfg = encoder.config.features
    window = cfg.num_samples(target_frames)
    hop = int(hop_seconds * cfg.sample_rate) if hop_seconds else window // 2
    for path in paths:
        try:
            wave = _load(path, cfg.sample_rate)
        except (AudioError, OSError) as e:
            errors.append({"path": str(path), "error": str(e)})
            print(f"error: {path}: {e} (skipped)", file=sys.stderr)
            continue
        parts = windows(wave, window, hop)
        feats, frames = window_features(encoder, [c for _, c in parts], target_frames)
        yield path, [s for s, _ in parts], feats, frames


@torch.no_grad()
def predict(model_dir: str, paths: list[str], top_k: int = 5, hop_seconds: float | None = None,
            jsonl: str | None = None, batch_size: int = 16) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-k labels per file (stdout) and, with ``jsonl``, one JSON line per file with per-window scores."""
    from .heads import Classifier

    model = Classifier.from_pretrained(model_dir).eval()
    config, _ = read_export(model_dir)
    names = (config.get("task") or {}).get("display_names") or {}
    target = model.target_frames
    errors: list[dict[str, str]] = []
    results = []
    out = open(jsonl, "w") if jsonl else None  # noqa: SIM115 - written incrementally
    try:
        for path, starts, feats, frames in iter_windows(expand_paths(paths), model.encoder, target, hop_seconds, errors):
            scores = torch.cat([model.scores(model(feats[i:i + batch_size], frames[i:i + batch_size]))
                                for i in range(0, len(feats), batch_size)])
            mean = scores.mean(0)
            top = torch.topk(mean, min(top_k, mean.numel()))
            labels = [(model.labels[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
            rec = {"path": str(path), "top": [{"label": lab, "name": names.get(lab, lab), "score": round(s, 6)}
                                              for lab, s in labels],
                   "windows": [{"start_s": s / model.encoder.config.features.sample_rate,
                                "scores": [round(v, 6) for v in w.tolist()]} for s, w in zip(starts, scores)],
                   "scores": [round(v, 6) for v in mean.tolist()]}
            results.append(rec)
            print(f"{path}\t" + "  ".join(f"{names.get(lab, lab)}={s:.3f}" for lab, s in labels))
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
    finally:
        if out:
            out.close()
    return results, errors


@torch.no_grad()
def embed(model_dir: str, paths: list[str], out_dir: str, hop_seconds: float | None = None,
          target_frames: int | None = None) -> tuple[list[Path], list[dict[str, str]]]:
    """Write ``OUT/<name>.npz`` per file: ``pooled`` (D,), ``layers`` (L, D) mean-pooled block outputs,
    ``windows_pooled`` (W, D) per window; works for any export, pretrained or fine-tuned.

    Means run over the patches holding real frames, then over windows; a repeated file name gets ``_1``."""
    encoder = Encoder.from_pretrained(model_dir).eval()
    target = target_frames or encoder.config.input_frames
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    used: set[str] = set()
    cfg = encoder.config
    for path, starts, feats, frames in iter_windows(expand_paths(paths), encoder, target, hop_seconds, errors):
        res = encoder(feats, output_hidden_states=True)
        # mean over the patches that hold real frames (a short file's zero padding is left out, as in training)
        valid = valid_patches(frames, res.grid, cfg.patch, cfg.stride).to(res.patches.dtype).unsqueeze(-1)

        def pool(h: torch.Tensor, valid=valid) -> torch.Tensor:
            return (h * valid).sum(1) / valid.sum(1).clamp_min(1)

        pooled = pool(res.patches)  # (W, D)
        layers = torch.stack([pool(h) for h in res.hidden_states], 1) if res.hidden_states else pooled[:, None]
        stem = path.stem
        for n in range(1, len(used) + 2):  # two inputs with the same name do not overwrite each other
            if stem not in used:
                break
            stem = f"{path.stem}_{n}"
        used.add(stem)
        name = out / (stem + ".npz")
        tmp = name.with_suffix(".tmp.npz")
        np.savez(tmp, pooled=pooled.mean(0).numpy(), layers=layers.mean(0).numpy(), windows_pooled=pooled.numpy(),
                 window_starts_s=np.array(starts) / encoder.config.features.sample_rate)
        tmp.replace(name)
        written.append(name)
        print(f"{path} -> {name}")
    return written, errors
