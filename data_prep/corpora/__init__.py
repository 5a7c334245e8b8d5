"""The corpus layouts, one module each, and the registry that ``--layout`` and ``auto`` detection use.

A layout module defines ``NAME``, ``detect(root) -> bool`` (is SRC in this layout? look only at the top of
SRC, cheaply) and ``scan(root, options) -> SourceScan`` (list the audio files and their labels; never decode).
Adding a corpus: write ``data_prep/corpora/NAME.py``, add it to ``CORPORA`` below, add its test
``tests/test_sources_NAME.py``.
"""

from __future__ import annotations

from types import ModuleType

from data_prep.corpora import audioset, esc50, folder, librispeech, manifest, speechcommands, voxceleb1

# Detection order of ``--layout auto``: the first whose ``detect`` is true wins. Marker files first, the
# LibriSpeech name probe after them, ``folder`` (always true) last. A SRC that is a .csv/.jsonl file is a
# manifest before any of these is asked (see data_prep.sources.detect_layout).
CORPORA: tuple[ModuleType, ...] = (esc50, speechcommands, voxceleb1, audioset, manifest, librispeech, folder)

BY_NAME: dict[str, ModuleType] = {module.NAME: module for module in CORPORA}
