"""Atomic, strict JSON files: metrics, recipes, statistics, shard indexes and plans."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf -> null, keys sorted, UTF-8) so that readers see the old file
    or the whole new one, never half: a temporary name, fsync, then rename.

    Keys are sorted so that the same content always gives the same bytes (shard indexes are compared
    byte for byte after a resumed run)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(finite_or_none(obj), indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
