"""Reading tar shards that may be damaged, and the run's record of what was lost.

A shard can be cut off mid-member (a copy interrupted), unreadable from byte 0, or end early at a
zeroed header (tarfile takes it for the end of the archive and says nothing). :func:`read_shard` never
raises for any of these: it yields the complete samples before the damage and fills a
:class:`ShardRead` with what went wrong and, against ``index.json``'s per-shard count, how many samples
were lost. The sample being read when the data ran out is kept only if none of its members is missing.

:class:`CorruptLog` lives in the consuming process (the trainer, ``stats``): batches carry the loader
workers' records to it; it warns once per problem, counts the lost samples and keeps the list written
to ``metrics.json``, or raises with ``data.corrupt_shards = "error"``.
"""

from __future__ import annotations

import json
import lzma
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

# What damaged bytes make tarfile (and the decompressors "r|*" may pick) raise; anything else is a bug.
READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
POLICIES = ("skip", "error")


@dataclass
class ShardRead:
    """How reading one shard went: samples yielded, samples ``index.json`` promises, the error if any."""

    url: str
    expected: int | None = None
    samples: int = 0
    error: str | None = None

    @property
    def lost(self) -> int | None:
        """Samples missing against index.json (None: unknown, no count to compare with)."""
        if self.expected is not None:
            return max(0, self.expected - self.samples)
        return None

    @property
    def damaged(self) -> bool:
        return self.error is not None or bool(self.lost)

    def lost_count(self) -> int:
        """Samples to count as lost: the index's difference, or at least the one being read when it broke."""
        lost = self.lost
        return lost if lost is not None else int(self.error is not None)

    def message(self) -> str:
        what = (f"cut off or unreadable ({self.error})" if self.error
                else "ends early (cut at a member boundary, or a zeroed or damaged header)")
        if self.expected is None:
            return f"{self.url}: {what}; {self.samples} sample(s) read, the rest lost (no index.json count)"
        return f"{self.url}: {what}; {self.samples} of {self.expected} samples read, {self.lost} lost"


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/KEY.EXT`` -> (``dir/KEY``, ``ext``): the key ends at the first dot of the base name."""
    head, _, base = name.rpartition("/")
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    return (f"{head}/{key}" if head else key), ext.lower()


def read_shard(url: str, open_url: Callable[[str], IO[bytes]], record: ShardRead,
               complete: Callable[[dict[str, Any]], bool] = bool) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard (``{"__key__", "__url__", ext: bytes}``, members grouped by key).

    Never raises for damaged data: the error goes into ``record`` and reading stops. The last sample
    is yielded only if ``complete`` (no member missing), else counted as lost."""
    current: dict[str, Any] | None = None
    try:
        with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                parts = split_name(info.name) if info.isreg() else None
                if parts is None:
                    continue
                key, ext = parts
                if current is not None and (key != current["__key__"] or ext in current):
                    record.samples += 1
                    yield current
                    current = None
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                tar.members = []  # a streamed shard keeps no member list
                current = current or {"__key__": key, "__url__": url}
                current[ext] = data
    except READ_ERRORS as e:
        record.error = f"{type(e).__name__}: {e}"
    if current is not None and not complete(current):  # tarfile may also stop silently at a cut header
        members = ", ".join(sorted(k for k in current if not k.startswith("__")))
        record.error = record.error or f"the shard ends inside sample {current['__key__']} (only: {members})"
    elif current is not None:
        record.samples += 1
        yield current


def expected_counts(urls: Iterable[str], index: dict[str, Any] | None) -> dict[str, int]:
    """Per-shard sample counts from ``index``, or from an ``index.json`` beside local shards."""
    counts: dict[str, int] = {}
    indexes: dict[Path, dict[str, Any] | None] = {}
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            continue
        path = Path(url.removeprefix("file:"))
        if index is None and path.parent not in indexes:
            try:
                indexes[path.parent] = json.loads((path.parent / "index.json").read_text())
            except (OSError, ValueError):
                indexes[path.parent] = None
        source = index if index is not None else indexes[path.parent]
        for entry in (source or {}).get("shards", []):
            if isinstance(entry, dict) and entry.get("name") == path.name and isinstance(entry.get("samples"), int):
                counts[url] = entry["samples"]
    return counts


class CorruptLog:
    """The run's corrupt-data record: warns once per problem, counts lost samples, keeps the list."""

    def __init__(self, policy: str = "skip", limit: int = 1000, prefix: str = "warning: "):
        if policy not in POLICIES:
            raise ValueError(f"corrupt_shards must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy, self.limit, self.prefix = policy, limit, prefix
        self.samples = 0
        self.entries: list[str] = []
        self._seen: set[str] = set()

    def add(self, batch: dict[str, Any]) -> None:
        """Take a batch's records (raises under policy "error"). A problem met again (a shard read in every
        cycle, a validation set read every time) is counted once: ``samples`` counts distinct lost samples."""
        keys = batch.get("corrupt_keys", ())
        for entry, lost in zip(keys, batch.get("corrupt_counts", [1] * len(keys))):
            if entry in self._seen:
                continue
            self._seen.add(entry)
            self.samples += lost
            if self.policy == "error":
                from .data import DataError

                raise DataError(f"{entry} (data.corrupt_shards = \"error\"; \"skip\" goes on without it)")
            if len(self.entries) < self.limit:
                self.entries.append(entry)
            tqdm.write(f"{self.prefix}skipped damaged data: {entry}", file=sys.stderr)  # above any progress bar
        if batch.get("exhausted"):
            from .data import DataError

            raise DataError(f"{batch['exhausted']}: no readable sample in a whole pass over them")

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (a resumed run goes on counting and listing where it stopped)."""
        return {"samples": self.samples, "entries": list(self.entries)}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            self.samples, self.entries = int(state["samples"]), list(state["entries"])
            self._seen.update(self.entries)

    def watch(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``batches`` with their records taken, without the record-only (empty) ones."""
        for batch in batches:
            self.add(batch)
            if batch["keys"]:
                yield batch
