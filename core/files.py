"""File modes: files written by libraries that ignore the umask get the mode the user's umask asks for.

safetensors' ``save_file`` (and so accelerate's checkpoints) creates files with mode 0600, which makes a
shared export directory unreadable by colleagues; :func:`honour_umask` resets them as ``open()`` would.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def honour_umask(*paths: str | os.PathLike) -> None:
    """Give each path (and everything below a directory) mode 0666 / 0777 minus the umask."""
    mask = current_umask()
    for path in map(Path, paths):
        items = [path, *path.rglob("*")] if path.is_dir() else [path]
        for item in items:
            if item.is_symlink():
                continue
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
