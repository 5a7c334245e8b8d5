"""One progress display for every stage: rate and ETA on a terminal (a tqdm bar) and in logs (plain lines).

The rate is measured over a recent window and only after a warm-up, so neither start-up (worker spawn,
the first batch, kernel compilation) nor the units done before a restart distort the ETA.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

_PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class RateWindow:
    """Units per second over the last ``window_s`` seconds, counting only units done after the first
    ``warmup`` units since ``start`` (the position at start-up or restart)."""

    def __init__(self, start: float = 0, warmup: int = 1, window_s: float = 60.0):
        self.begin, self.window_s = start + warmup, window_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, n: float) -> None:
        if n < self.begin:  # still warming up: this time is start-up, not throughput
            return
        if self.samples and n <= self.samples[-1][1]:
            return
        self.samples.append((t, n))
        # Keep one sample at or before the window's start, so the window always spans window_s.
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


class _Bar(tqdm):
    """tqdm whose rate (and so ETA) comes from a RateWindow; '?' until the window has one."""

    monitor_interval = 0  # no monitor thread inside training processes

    def __init__(self, *args: Any, rate: Callable[[], float | None], **kwargs: Any):
        self._window_rate = rate  # set first: tqdm's __init__ already draws
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["rate"] = self._window_rate() or 0.0  # 0 -> tqdm prints '?' for rate and ETA
        return d


class _Discard:
    """A file that drops what tqdm writes: in plain mode the lines are written by Progress itself."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


class Progress:
    """Progress of ``total`` units (None: unknown) from position ``initial`` (a resumed run's step).

    On a terminal a tqdm bar redrawn at most 4 times a second; otherwise a plain line every
    ``log_interval_s`` seconds and whenever ``update(..., log=True)`` asks, so logs stay readable.
    """

    def __init__(self, total: float | None, desc: str, *, unit: str = "step", initial: float = 0,
                 enabled: bool = True, file: TextIO | None = None, tty: bool | None = None, warmup: int = 1,
                 window_s: float = 60.0, log_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.file = file or sys.stderr
        self.enabled = enabled
        self.tty = self.file.isatty() if tty is None else tty
        self.clock, self.log_interval_s = clock, log_interval_s
        self.window = RateWindow(initial, warmup, window_s)
        self.window.add(clock(), initial)
        self.n = initial
        self.last_line, self.last_line_n = clock(), None
        self.bar: _Bar | None = None
        if enabled:
            self.bar = _Bar(
                total=total, initial=initial, desc=desc, unit=unit, rate=self.window.rate, miniters=1,
                file=self.file if self.tty else _Discard(), mininterval=0.25, dynamic_ncols=self.tty,
                bar_format=None if self.tty or total is None else _PLAIN_FORMAT, smoothing=0,
            )

    def update(self, n: float, text: str | None = None, log: bool = False) -> None:
        """Move to position ``n``; ``text`` replaces the status shown after the rate."""
        now = self.clock()
        self.window.add(now, n)
        self.n = n
        if self.bar is None:
            return
        if text is not None:
            self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(n - self.bar.n)
        if self.tty:
            if log:
                self.bar.refresh()
        elif log or now - self.last_line >= self.log_interval_s:
            self._line(now)

    def advance(self, k: float = 1, text: str | None = None) -> None:
        self.update(self.n + k, text)

    def write(self, message: str) -> None:
        """Print a message above the bar (or as a plain line) without garbling it."""
        if self.bar is not None and self.tty:
            self.bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def _line(self, now: float) -> None:
        assert self.bar is not None
        self.file.write(str(self.bar) + "\n")
        self.file.flush()
        self.last_line, self.last_line_n = now, self.n

    def close(self) -> None:
        """The final state: the bar stays on the terminal; in logs one last line."""
        if self.bar is None:
            return
        if not self.tty and self.last_line_n != self.n:
            self._line(self.clock())
        self.bar.close()
        self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
