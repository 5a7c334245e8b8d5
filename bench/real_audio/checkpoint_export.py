"""An encoder export from a pretraining checkpoint, for probing a run part-way (study tool).

    python bench/real_audio/checkpoint_export.py RUN/checkpoints/step-N TEMPLATE_EXPORT OUT

TEMPLATE_EXPORT is any export of the same architecture and features (e.g. a 1-step run of the same
recipe): its config is reused, the encoder weights come from the checkpoint's ``model.safetensors``
(the ``encoder.`` entries of the pretraining model). ``config.json`` notes the checkpoint it came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file

from pretrain.encoder import Encoder


def main(checkpoint: str, template: str, out: str) -> None:
    state = load_file(str(Path(checkpoint) / "model.safetensors"))
    weights = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not weights:
        raise SystemExit(f"{checkpoint}/model.safetensors has no encoder.* weights")
    encoder = Encoder.from_pretrained(template)
    encoder.load_state_dict(weights, strict=True)  # strict: a template of another architecture fails here
    encoder.save_pretrained(Path(out), extra={"from_checkpoint": str(Path(checkpoint).resolve())})
    print(f"exported {checkpoint} to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
