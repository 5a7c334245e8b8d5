"""Find audio files and their labels in a corpus: ``scan(src, layout)`` and ``auto`` layout detection.

The layouts themselves live in ``data_prep.corpora`` (one module each, registered in ``CORPORA``); this
module picks one and runs it. A scan only lists files and reads label files; it never decodes audio, so it
is fast on corpora of millions of files. Names beginning with ``.`` (hidden files, macOS ``._x.wav``
resource forks) are never audio. Items are sorted by ``rel`` so that every scan of the same tree gives the
same list.
"""

from __future__ import annotations

from pathlib import Path

from core.shard_format import AUDIO_SUFFIXES as AUDIO_EXTENSIONS
from data_prep.corpora import BY_NAME, CORPORA, manifest
from data_prep.corpora.base import (
    SPLITS,
    ScanOptions,
    SourceError,
    SourceItem,
    SourceScan,
    check_src,
    cyclic_gc_paused,
    is_audio_name,
    normalize_split,
)

# "auto" first, then the registered layouts in the order the help and README show them.
LAYOUTS = ("auto", "folder", "manifest", "esc50", "speechcommands", "audioset", "voxceleb1", "librispeech")
assert set(LAYOUTS[1:]) == set(BY_NAME), "every registered corpus must be listed in LAYOUTS"

__all__ = [
    "AUDIO_EXTENSIONS",
    "LAYOUTS",
    "SPLITS",
    "ScanOptions",
    "SourceError",
    "SourceItem",
    "SourceScan",
    "detect_layout",
    "is_audio_name",
    "normalize_split",
    "scan",
]


def detect_layout(src: str | Path) -> str:
    """Detect the layout of ``src``. First match wins, in this order:

    1. SRC is a ``.csv`` / ``.jsonl`` file → ``manifest``
    2. ``meta/esc50.csv`` → ``esc50``
    3. ``validation_list.txt`` and ``testing_list.txt`` → ``speechcommands``
    4. ``iden_split.txt`` → ``voxceleb1``
    5. ``class_labels_indices.csv`` → ``audioset``
    6. ``manifest.csv`` or ``manifest.jsonl`` → ``manifest``
    7. ``[SUBSET/]SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` → ``librispeech``
    8. otherwise → ``folder``

    (the order of ``data_prep.corpora.CORPORA``). Marker files are looked for at the top of SRC only.
    """
    root = check_src(src)
    if root.is_file():
        if root.suffix.lower() in manifest.MANIFEST_SUFFIXES:
            return manifest.NAME
        raise SourceError(f"{root} is a file but not a .csv/.jsonl manifest; give a directory or a manifest")
    return next(module.NAME for module in CORPORA if module.detect(root))


def scan(src: str | Path, layout: str = "auto", *, folder_labels: bool = False) -> SourceScan:
    """Scan ``src`` with the given layout (``auto`` detects it, see ``detect_layout``).

    ``folder_labels``: with the ``folder`` layout, label each file with its parent directory name.
    Raises SourceError for a missing SRC, an unknown layout, missing marker/label files, label files
    that do not match the audio, and a corpus without any audio.
    """
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    root = check_src(src)
    if layout == "auto":
        layout = detect_layout(root)
    if layout != manifest.NAME and root.is_file():
        raise SourceError(f"{root} is a file; the {layout} layout needs a directory")
    with cyclic_gc_paused():
        result = BY_NAME[layout].scan(root, ScanOptions(folder_labels=folder_labels))
    if not result.items:
        raise SourceError(f"no audio found in {src} (layout {layout})")
    result.items.sort(key=lambda item: item.rel)
    return result
