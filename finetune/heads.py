"""Task model: a pretrained Encoder + pooling + LayerNorm/Linear head, and its export format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pretrain.encoder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Encoder,
    EncoderConfig,
    ExportError,
    load_state_strict,
    read_export,
    write_export,
)
from pretrain.patches import valid_patches


class Classifier(nn.Module):
    """``Encoder`` -> pooled features -> ``LayerNorm + Linear`` (SSAST's mlp_head).

    A linear probe (``linear_probe=True``) uses MAE's probe head instead: ``BatchNorm1d`` without
    affine parameters (per-feature standardization) + Linear. SSAST never probes; on the demo task the
    standardized probe separates pretrained from random features far better than a LayerNorm head.
    """

    def __init__(self, encoder: Encoder, labels: list[str], pooling: str = "mean", kind: str = "single_label",
                 dropout: float = 0.0, linear_probe: bool = False, head_norm: str | None = None):
        super().__init__()
        if pooling == "cls" and encoder.num_cls == 0:
            raise ValueError(f"pooling 'cls' needs a backbone with cls tokens; {encoder.config.backbone} has none")
        self.encoder, self.labels, self.pooling, self.kind = encoder, list(labels), pooling, kind
        self.head_norm = head_norm or ("batchnorm" if linear_probe else "layernorm")
        if self.head_norm not in ("layernorm", "batchnorm"):
            raise ValueError(f"head_norm must be 'layernorm' or 'batchnorm', not {self.head_norm!r}")
        norm = (nn.BatchNorm1d(encoder.dim, affine=False, eps=1e-6) if self.head_norm == "batchnorm"
                else nn.LayerNorm(encoder.dim))
        self.head = nn.Sequential(norm, nn.Dropout(dropout), nn.Linear(encoder.dim, len(labels)))
        self.linear_probe = linear_probe
        # Pretraining's mask tokens never get a gradient here, and DDP (2+ ranks) stops at the second step
        # when a trainable parameter got none ("did not receive grad for rank 0: 0").
        frozen = encoder.pretraining_only()
        for name, p in encoder.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
        if linear_probe:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.linear_probe:  # a frozen encoder stays in eval mode: BN statistics and dropout untouched
            self.encoder.eval()
        return self

    def pool(self, out, num_frames: torch.Tensor | None) -> torch.Tensor:
        """Mean over real (non-padding) patch tokens, or the mean of the cls outputs."""
        if self.pooling == "cls":
            return out.cls.mean(1)
        feats = out.patches
        if num_frames is None:
            return feats.mean(1)
        cfg = self.encoder.config
        valid = valid_patches(num_frames.to(feats.device), out.grid, cfg.patch, cfg.stride).to(feats.dtype)
        return (feats * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)

    def features(self, fbank: torch.Tensor, num_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled encoder features ``(B, D)``, the head's input (without a graph when the encoder is frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear_probe):
            return self.pool(self.encoder(fbank), num_frames)

    def forward(self, fbank: torch.Tensor | None = None, num_frames: torch.Tensor | None = None, *,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from an fbank batch, or from already pooled features (``pooled=``, a probe's feature cache)."""
        if pooled is None:
            if fbank is None:
                raise ValueError("Classifier needs an fbank batch or pooled features")
            pooled = self.features(fbank, num_frames)
        return self.head(pooled)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.kind == "multi_label" else torch.softmax(logits, -1)

    def head_keys(self) -> dict[str, str]:
        """Where the head's norm and Linear sit in this model's weights (read by the Hugging Face export)."""
        names = {id(m): n for n, m in self.named_modules()}
        return {"norm": names[id(self.head[0])], "linear": names[id(self.head[-1])]}

    def task_config(self, target_frames: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"labels": self.labels, "kind": self.kind, "pooling": self.pooling, "head_norm": self.head_norm,
                "head_keys": self.head_keys(), "target_frames": target_frames} | (extra or {})

    def save_pretrained(self, directory: str | os.PathLike, target_frames: int,
                        extra: dict[str, Any] | None = None) -> Path:
        """Export: encoder config + ``task`` section in config.json, all weights in model.safetensors."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = self.encoder.config.to_dict() | {"task": self.task_config(target_frames, extra)}
        return write_export(directory, config, {WEIGHTS_NAME: state})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Classifier:
        """Load a fine-tuned model directory (config.json with a ``task`` section)."""
        config, weights = read_export(directory)
        task = config.get("task")
        if not task or "labels" not in task:
            raise ExportError(f"{directory}: not a fine-tuned model (config.json has no task labels); "
                              "fine-tune it first or use `finetune embed` for encoder features")
        encoder = build_encoder(config, directory)
        model = cls(encoder, task["labels"], pooling=task.get("pooling", "mean"), kind=task.get("kind", "single_label"),
                    head_norm=task.get("head_norm", "layernorm"))
        load_state_strict(model, load_file(str(weights)), str(weights))
        model.target_frames = int(task.get("target_frames", encoder.config.input_frames))
        return model


def load_encoder(directory: str, random_init: bool = False, seed: int = 0) -> Encoder:
    """The encoder of an export (pretrained or fine-tuned), or a randomly initialized twin of it."""
    if not random_init:
        return Encoder.from_pretrained(directory)
    config, _ = read_export(directory)
    torch.manual_seed(seed)
    return build_encoder(config, directory)


def build_encoder(config: dict[str, Any], directory: str | os.PathLike) -> Encoder:
    """An Encoder (random weights) from an export's config; bad values become an ExportError naming the file."""
    source = str(Path(directory) / CONFIG_NAME)
    try:
        return Encoder(EncoderConfig.from_dict(config, source=source))
    except ExportError:
        raise
    except (ValueError, TypeError) as e:  # unknown backbone, bad backbone options, wrong value types
        raise ExportError(f"{source}: {e}") from e


def layer_decay_groups(model: Classifier, lr: float, weight_decay: float, layer_decay: float,
                       head_lr_mult: float) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise LR decay (``lr * decay^(L + 1 - layer)``) and the head multiplier."""
    enc = model.encoder
    top = enc.num_layers + 1
    no_decay = enc.no_weight_decay()
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoder."):
            sub = name[len("encoder."):]
            scale = layer_decay ** (top - min(enc.layer_id(sub), top))
            wd = 0.0 if (p.ndim <= 1 or sub in no_decay) else weight_decay
        else:
            scale, wd = head_lr_mult, (0.0 if p.ndim <= 1 else weight_decay)
        groups.setdefault((scale, wd), []).append(p)
    return [{"params": ps, "lr": lr * s, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in groups.items()]
