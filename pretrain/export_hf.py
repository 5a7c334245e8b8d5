"""Export a ViT encoder (or a fine-tuned model pooling its cls tokens) to Hugging Face ``ASTModel``.

:func:`export_hf` writes ``config.json`` (``ASTConfig``),
``model.safetensors`` in the transformers-4 key layout that the Hub checkpoints use (transformers 5
renames it on load), ``preprocessor_config.json`` (``ASTFeatureExtractor`` with our normalization).
HF's AST has exactly 2 cls tokens, square patches and position embeddings fixed to its grid, so
only ViT encoders with 2 cls tokens and square patches are exported; the grid is the encoder's
configured one (``input_frames`` and ``stride``), with the position embeddings our model uses at
that grid. ``transformers`` itself is not needed to export (it is imported only by the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .encoder import (
    CLASSIFIER_HEAD_KEYS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    Encoder,
    EncoderConfig,
    ExportError,
    read_export,
    write_export,
)
from .patches import time_to_freq_major

HF_PREPROCESSOR_NAME = "preprocessor_config.json"

# What HF's ASTFeatureExtractor computes (torchaudio kaldi.fbank with its defaults + these).
_HF_FEATURES = {
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "window_type": "hanning",
    "use_energy": False,
    "dither": 0.0,
    "preemphasis_coefficient": 0.97,
    "remove_dc_offset": True,
    "low_freq": 20.0,
    "high_freq": 0.0,
}


def _check_hf_compatible(config: EncoderConfig, source: str) -> None:
    bc = config.backbone_config
    if config.backbone != "vit":
        raise ExportError(
            f"{source}: HF ASTModel is a ViT; backbone {config.backbone!r} cannot be exported to it"
        )
    if bc.get("num_cls") != 2:
        raise ExportError(
            f"{source}: HF ASTModel always has 2 cls tokens (cls + distillation); this encoder has "
            f"{bc.get('num_cls')}"
        )
    if config.patch[0] != config.patch[1]:
        raise ExportError(
            f"{source}: HF ASTModel needs square patches (patch_size); this encoder's patch is "
            f"{config.patch[0]} frames x {config.patch[1]} mel bins"
        )
    f = config.features
    bad = {k: getattr(f, k) for k, v in _HF_FEATURES.items() if getattr(f, k) != v}
    if bad or f.num_mel_bins != config.num_mel_bins:
        raise ExportError(
            f"{source}: ASTFeatureExtractor computes the default Kaldi fbank; these feature settings "
            f"differ from it: {bad or {'num_mel_bins': f.num_mel_bins}}"
        )
    if not f.remove_dc_offset and f.subtract_clip_mean:
        raise ExportError(f"{source}: subtract_clip_mean without remove_dc_offset cannot be reproduced by HF")


def hf_state_dict(
    encoder: Encoder, classifier: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Our ViT encoder in the transformers AST key layout (frequency-major tokens, (F, T) kernel).

    Position embeddings are those our model uses at its configured grid (``input_frames``,
    ``stride``). With ``classifier`` (``norm.*`` LayerNorm, ``linear.*`` Linear, see :func:`classifier_head`)
    the keys are those of ``ASTForAudioClassification``; otherwise of ``ASTModel``.
    """
    cfg = encoder.config
    nt, nf = cfg.grid
    bb = encoder.backbone
    s = {k: v.detach() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        cls_pos, patch_pos = bb.position_embedding((nt, nf))
    d = encoder.dim
    out = {
        "embeddings.cls_token": s["backbone.cls_tokens"][:, :1],
        "embeddings.distillation_token": s["backbone.cls_tokens"][:, 1:2],
        "embeddings.position_embeddings": torch.cat([cls_pos, time_to_freq_major(patch_pos, nt, nf)], 1),
        "embeddings.patch_embeddings.projection.weight": s["patch_embed.weight"].transpose(2, 3),
        "embeddings.patch_embeddings.projection.bias": s["patch_embed.bias"],
        "layernorm.weight": s["backbone.norm.weight"],
        "layernorm.bias": s["backbone.norm.bias"],
    }
    names = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(encoder.num_layers):
        ours, hf = f"backbone.blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            for a, b in names.items():
                out[f"{hf}{b}.{part}"] = s[f"{ours}{a}.{part}"]
            if f"{ours}attn.qkv.{part}" in s:  # rows: q (d), k (d), v (d)
                q, k, v = s[f"{ours}attn.qkv.{part}"].split(d, dim=0)
                for name, t in (("query", q), ("key", k), ("value", v)):
                    out[f"{hf}attention.attention.{name}.{part}"] = t
    if classifier is not None:
        out = {"audio_spectrogram_transformer." + k: v for k, v in out.items()}
        out |= {
            "classifier.layernorm.weight": classifier["norm.weight"],
            "classifier.layernorm.bias": classifier["norm.bias"],
            "classifier.dense.weight": classifier["linear.weight"],
            "classifier.dense.bias": classifier["linear.bias"],
        }
    return {k: v.to(torch.float32).contiguous().clone() for k, v in out.items()}


def hf_config(encoder: Encoder, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ASTConfig`` fields (as ``config.json``) of our encoder, with labels when ``task`` is given."""
    cfg, bc = encoder.config, encoder.config.backbone_config
    (pt, _), (st, sf) = cfg.patch, cfg.stride
    out: dict[str, Any] = {
        "architectures": ["ASTForAudioClassification" if task else "ASTModel"],
        "model_type": "audio-spectrogram-transformer",
        "hidden_size": encoder.dim,
        "num_hidden_layers": encoder.num_layers,
        "num_attention_heads": int(bc["num_heads"]),
        "intermediate_size": int(encoder.dim * bc["mlp_ratio"]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(bc["norm_eps"]),  # ours (1e-6, as timm/SSAST); HF's default 1e-12 differs
        "patch_size": int(pt),
        "qkv_bias": bool(bc["qkv_bias"]),
        "frequency_stride": int(sf),
        "time_stride": int(st),
        "max_length": int(cfg.input_frames),
        "num_mel_bins": int(cfg.num_mel_bins),
    }
    if task:
        labels = [str(x) for x in task["labels"]]
        names = task.get("display_names") or {}
        shown = [str(names.get(x, x)) for x in labels]
        out["id2label"] = {str(i): n for i, n in enumerate(shown)}
        out["label2id"] = {n: i for i, n in enumerate(shown)}
        kind = task.get("kind", "single_label")
        out["problem_type"] = (
            "multi_label_classification" if kind == "multi_label" else "single_label_classification"
        )
    return out


def hf_preprocessor_config(config: EncoderConfig) -> dict[str, Any]:
    """``ASTFeatureExtractor`` settings: our fbank, length and normalization statistics."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,  # as HF's own AST checkpoints; the fbank width is num_mel_bins
        "sampling_rate": int(config.features.sample_rate),
        "num_mel_bins": int(config.num_mel_bins),
        "max_length": int(config.input_frames),
        "padding_side": "right",
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": float(config.normalization.mean),
        "std": float(config.normalization.std),
        "return_attention_mask": False,
    }


def export_hf(export_dir: str | Path, out_dir: str | Path, encoder_only: bool = False) -> Path:
    """Write ``out_dir`` loadable by ``transformers.ASTModel`` (or ``ASTForAudioClassification`` for a
    fine-tuned model whose head pools the cls tokens); returns it.

    ``encoder_only`` exports just the encoder of a fine-tuned model.
    """
    export_dir = Path(export_dir)
    config_dict, weights = read_export(export_dir)
    source = str(export_dir / CONFIG_NAME)
    config = EncoderConfig.from_dict(config_dict, source=source)
    _check_hf_compatible(config, source)
    encoder = Encoder.from_pretrained(export_dir)
    task = None if encoder_only else config_dict.get("task")
    classifier = None
    if task:
        if task.get("pooling") != "cls":
            raise ExportError(
                f"{source}: ASTForAudioClassification classifies the mean of the 2 cls outputs, but this "
                f"model pools with {task.get('pooling')!r}; pass --encoder-only to export the encoder "
                f"(ASTModel) alone"
            )
        classifier = classifier_head(load_file(str(weights)), task, str(weights))
    tensors = {WEIGHTS_NAME: hf_state_dict(encoder, classifier)}
    files = {CONFIG_NAME: hf_config(encoder, task), HF_PREPROCESSOR_NAME: hf_preprocessor_config(config)}
    return write_export(out_dir, None, tensors, json_files=files)


def classifier_head(state: dict[str, torch.Tensor], task: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The LayerNorm + Linear head of a fine-tuned model as ``norm.*`` / ``linear.*``, found where the model
    says it keeps them (``task.head_keys``, written by the classifier; older exports use the standard layout)."""
    keys = task.get("head_keys") or CLASSIFIER_HEAD_KEYS
    need = {f"{part}.{p}": f"{keys[part]}.{p}" for part in ("norm", "linear") for p in ("weight", "bias")}
    head = sorted(k for k in state if not k.startswith("encoder."))
    if sorted(need.values()) != head:
        raise ExportError(f"{source}: expected a LayerNorm + Linear head ({sorted(need.values())}); found {head}")
    return {ours: state[theirs] for ours, theirs in need.items()}
