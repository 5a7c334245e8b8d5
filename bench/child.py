"""Run one benchmark case in a fresh interpreter, so its time and peak memory are its own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn(script: str, case: dict, timeout: float) -> dict:
    """``python SCRIPT _child JSON`` -> the JSON dict the child prints last, or ``{"error": ...}``."""
    cmd = [sys.executable, script, "_child", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_kb() -> int:
    """Current resident set size in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kb() -> int:
    """Peak resident size of this process image in KiB (VmHWM).

    Not ``ru_maxrss``: Linux carries the parent's resident size over a fork + exec into the child's
    ``ru_maxrss``, so a child spawned by a big benchmark process would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(fn, repeat: int, warmup: bool) -> dict:
    """Peak memory of the first (cold) call; time = best of ``repeat`` further calls (or the cold one)."""
    base = rss_kb()
    t0 = time.perf_counter()
    fn()
    cold = time.perf_counter() - t0
    peak = peak_rss_kb()
    times = [cold] if not warmup else []
    for _ in range(repeat if warmup else 0):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "peak_mb": max(peak - base, 0) / 1024}
