"""A better CPU memory allocator for training processes, chosen before anything big is allocated.

glibc's malloc, as configured by default, costs CPU training memory and time (bench/RESULTS.md):

* the small objects its per-thread cache ("tcache") holds back sit between freed large buffers, so the
  heap cannot merge or return them: a SSAMBA-tiny forward+backward at 8k tokens peaks at 4.3 GB;
* every buffer over 32 MB (its largest mmap threshold) is mapped afresh and page-faulted on first touch,
  and the heap's top is handed back and faulted in again: 16k tokens take 82 s instead of 37.

So ``python -m pretrain train`` and ``python -m finetune train`` re-run themselves once, at start-up, with
tcmalloc or jemalloc preloaded when the system has one (``apt install libtcmalloc-minimal4``), as
PyTorch's own ``torch.backends.xeon.run_cpu`` launcher does, and otherwise with glibc tuned by
:data:`GLIBC_SETTINGS` (no tcache, no mmap, a 256 MB trim threshold; glibc reads them only when a process
starts, hence the re-run), which comes close to tcmalloc without installing anything
(``SSL_AUDIO_ALLOCATOR=auto``, the default). ``glibc-tuned`` uses the tuned glibc even where tcmalloc is
installed; ``system`` keeps the process as started, as does an ``LD_PRELOAD`` that already names an
allocator or a ``GLIBC_TUNABLES`` that already sets malloc tunables.

The re-run keeps the process id and the command line (accelerate's launcher keeps track of it). Only the
command-line entry points do this; importing the packages never does. Torch-free.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

CHOICE_ENV = "SSL_AUDIO_ALLOCATOR"
CHOICES = ("auto", "glibc-tuned", "system")
# Set in the re-run's environment: it (and the processes it starts) never re-run again.
APPLIED_ENV = "SSL_AUDIO_ALLOCATOR_APPLIED"
PRELOAD_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
GLIBC_SETTINGS = "glibc.malloc.tcache_count=0:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=268435456"


def _library_dirs(env: Mapping[str, str]) -> list[Path]:
    dirs = [Path(env["CONDA_PREFIX"]) / "lib"] if env.get("CONDA_PREFIX") else []
    machine = platform.machine()
    return dirs + [Path(p) for p in (f"/usr/lib/{machine}-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")]


def find_preload_library(env: Mapping[str, str]) -> Path | None:
    """The first tcmalloc / jemalloc shared library found in the usual places, or None."""
    for name in PRELOAD_LIBRARIES:
        for folder in _library_dirs(env):
            if (folder / name).is_file():
                return folder / name
    return None


def tuned_environment(env: Mapping[str, str]) -> tuple[dict[str, str], str] | None:
    """``(environment to re-run with, what changed)``, or None when this process should keep its allocator.

    Raises ValueError for an unknown ``SSL_AUDIO_ALLOCATOR``."""
    choice = env.get(CHOICE_ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE_ENV}={env[CHOICE_ENV]!r} is not one of {list(CHOICES)}")
    if choice == "system" or env.get(APPLIED_ENV) or sys.platform != "linux":
        return None
    preload = env.get("LD_PRELOAD", "")
    if "malloc" in preload:  # the user preloads an allocator already (tcmalloc, jemalloc, mimalloc...)
        return None
    new = dict(env)
    new[APPLIED_ENV] = "1"
    if choice == "auto" and (library := find_preload_library(env)) is not None:
        new["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
        return new, f"LD_PRELOAD={library}"
    tunables = env.get("GLIBC_TUNABLES", "")
    if platform.libc_ver()[0] != "glibc" or "glibc.malloc." in tunables:  # not glibc, or tuned by the user
        return None
    new["GLIBC_TUNABLES"] = f"{tunables}:{GLIBC_SETTINGS}" if tunables else GLIBC_SETTINGS
    return new, f"GLIBC_TUNABLES={new['GLIBC_TUNABLES']}"


def rerun_with_tuned_allocator() -> None:
    """Replace this process with itself (``sys.orig_argv``) under :func:`tuned_environment`'s allocator;
    returns only when nothing changes."""
    try:
        tuned = tuned_environment(os.environ)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if tuned is None:
        return
    env, change = tuned
    print(f"note: training with a tuned memory allocator ({change}); {CHOICE_ENV}=system keeps the default",
          file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
