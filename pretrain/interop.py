"""CLI glue of the interop jobs: ``python -m pretrain import-checkpoint`` (:mod:`pretrain.import_ssast`)
and ``python -m pretrain export-hf`` (:mod:`pretrain.export_hf`)."""

from __future__ import annotations

import argparse
import json

from .encoder import CONFIG_NAME
from .export_hf import export_hf
from .import_ssast import FORMATS, import_checkpoint


def _cmd_import(args: argparse.Namespace) -> None:
    out = import_checkpoint(
        args.src,
        args.out_dir,
        fmt=args.format,
        keep_heads=False if args.drop_heads else None,
        fstride=args.fstride,
        tstride=args.tstride,
        input_frames=args.input_frames,
    )
    cfg = json.loads((out / CONFIG_NAME).read_text())
    files = sorted(p.name for p in out.iterdir())
    print(
        f"wrote {out}: {cfg['backbone']} {cfg['backbone_config']['dim']}x{cfg['backbone_config']['depth']}, "
        f"patch {cfg['patch']} stride {cfg['stride']} (frames, mel), grid {cfg['pos_grid']}, "
        f"{cfg['backbone_config']['num_cls']} cls; files {files}"
    )


def _cmd_export_hf(args: argparse.Namespace) -> None:
    out = export_hf(args.export_dir, args.out_dir, encoder_only=args.encoder_only)
    arch = json.loads((out / CONFIG_NAME).read_text())["architectures"][0]
    print(f"wrote {out} (transformers {arch})")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``import-checkpoint`` and ``export-hf`` on ``python -m pretrain``'s subparsers."""
    p = subparsers.add_parser(
        "import-checkpoint", help="convert a published SSAST/AST .pth into an export directory"
    )
    p.add_argument("src", help="the .pth file (read with torch.load(weights_only=True): no code is run)")
    p.add_argument("out_dir", help="export directory to write (config.json + model.safetensors [+ heads])")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="ssast: pretraining checkpoint (has p_input_fdim); ast: fine-tuned AST/SSAST (default: detect)",
    )
    p.add_argument(
        "--drop-heads",
        action="store_true",
        help="do not keep the pretraining heads (cpredlayer/gpredlayer) or AST's mlp_head",
    )
    p.add_argument(
        "--fstride", type=int, default=None, help="frequency stride, if it cannot be inferred (ast)"
    )
    p.add_argument("--tstride", type=int, default=None, help="time stride, if it cannot be inferred (ast)")
    p.add_argument(
        "--input-frames", type=int, default=None, help="input length in frames (ast; default inferred)"
    )
    p.set_defaults(func=_cmd_import)
    p = subparsers.add_parser("export-hf", help="write a transformers ASTModel directory from a ViT export")
    p.add_argument("export_dir", help="an export directory (pretrained or fine-tuned)")
    p.add_argument("out_dir", help="directory for transformers' from_pretrained")
    p.add_argument(
        "--encoder-only", action="store_true", help="export only the encoder of a fine-tuned model"
    )
    p.set_defaults(func=_cmd_export_hf)
