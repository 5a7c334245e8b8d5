"""WebDataset input pipeline: shard lists, deterministic endless training streams, exact evaluation passes.

Built from webdataset's parts (tar iteration, key grouping, URL opening) with our own shard sampler,
because webdataset 1.0.2's ``resampled=True`` seeds itself from pid and time. Everything random is a
pure function of ``(seed, epoch, rank, worker)`` and of the position in the stream, so a resumed run
reads exactly the batches an uninterrupted run would have read.

Shard assignment: the shard list is permuted once with ``seed`` and dealt to the ``world x workers``
reader slots, so ranks and workers read disjoint shard subsets; each slot cycles through its subset
in an order reshuffled every cycle. Batches are formed inside each worker and the DataLoader takes
them round-robin, so batch ``i`` of an epoch comes from worker ``i % workers``.

The loader is never passed to ``accelerator.prepare()`` (that silently drops half the data with
``split_by_node``); batches are moved to the device by the trainer.
"""

from __future__ import annotations

import io
import json
import logging
import random
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from core import shard_format as fmt

from .config import DataSection
from .features import FeatureConfig, Normalization, model_input, pad_waves
from .shard_reader import CorruptLog, ShardRead, expected_counts, read_shard

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A shard specification that cannot be used; the message names it."""


@dataclass
class ShardSet:
    """Resolved shard URLs and what their ``index.json`` says (when there is one)."""

    urls: list[str]
    num_samples: int | None = None
    vocabulary: list[str] | None = None
    index: dict[str, Any] | None = None
    source: str = ""


def _index_urls(index_path: Path) -> ShardSet:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{index_path}: cannot read the shard index ({e})") from e
    if "shards" not in index:
        sets = index.get("splits") or index.get("sets")
        raise DataError(
            f"{index_path}: this index lists shard sets, not shards"
            + (f"; use one of: {', '.join(sorted(sets))}" if isinstance(sets, dict) else "")
        )
    base = index_path.parent
    urls = []
    for entry in index["shards"]:
        name = entry["name"] if isinstance(entry, dict) else str(entry)
        urls.append(name if "://" in name else str(base / name))
    return ShardSet(
        urls=urls,
        num_samples=index.get("samples", index.get("num_samples")),
        vocabulary=index.get("vocabulary"),
        index=index,
        source=str(index_path),
    )


def resolve_shards(spec: str | list[str], allow_pipe: bool = False, key: str | None = None) -> ShardSet:
    """Resolve an ``index.json``, a directory holding one, a brace pattern, or a list of any of these
    and shard paths/URLs (a list that names indexes adds up their sample counts).

    ``key`` (e.g. ``data.valid``) is the recipe key the spec came from; errors start with it."""
    try:
        return _resolve_shards(spec, allow_pipe)
    except DataError as e:
        if key is None:
            raise
        hint = ""
        if isinstance(spec, str) and spec.strip().lower() in ("none", "null", "nil"):
            hint = f" (to unset {key}, use --set {key}=null)"
        raise DataError(f"{key}: {e}{hint}") from None


def _names_index(item: Any) -> bool:
    """Whether a list item is a shard directory or an ``index.json`` (not a shard path or URL)."""
    return isinstance(item, str) and "://" not in item and (item.endswith(".json") or Path(item).is_dir())


def _merge(sets: list[ShardSet], spec: list[str]) -> ShardSet:
    """One ShardSet from several (e.g. ``["corpus_a/train", "corpus_b/train"]``): the shards in order,
    the sample counts summed when all are known, the label vocabularies united in first-seen order."""
    counts = [s.num_samples for s in sets]
    vocabulary = list(dict.fromkeys(v for s in sets for v in (s.vocabulary or [])))
    return ShardSet(urls=[u for s in sets for u in s.urls],
                    num_samples=None if None in counts else sum(counts),  # type: ignore[arg-type]
                    vocabulary=vocabulary or None, source=str(spec))


def _resolve_shards(spec: str | list[str], allow_pipe: bool) -> ShardSet:
    if not spec:
        raise DataError("no shards given (the shard list is empty)")
    if isinstance(spec, list) and any(_names_index(item) for item in spec):
        return _merge([_resolve_shards(item, allow_pipe) for item in spec], spec)
    if isinstance(spec, str) and "://" not in spec and not spec.startswith("pipe:"):
        p = Path(spec)
        if p.is_dir():
            if not (p / fmt.INDEX_FILE).is_file():
                raise DataError(f"{p}: directory has no {fmt.INDEX_FILE} (give a brace pattern or a list of shards)")
            return _index_urls(p / fmt.INDEX_FILE)
        if p.suffix == ".json":
            if not p.is_file():
                raise DataError(f"shard index {p} not found")
            return _index_urls(p)
    items = spec if isinstance(spec, list) else [s for s in spec.split(",") if s.strip()]
    urls: list[str] = []
    for item in items:
        urls.extend(braceexpand(item.strip()))
    for u in urls:
        if u.startswith("pipe:") and not allow_pipe:
            raise DataError(f"refusing shard URL {u!r}: pipe: URLs run shell commands; set data.allow_pipe = true")
        if "://" not in u and not u.startswith("pipe:"):
            if not Path(u).is_file():
                raise DataError(f"shard {u} not found")
            if not u.endswith(".tar") and not tarfile.is_tarfile(u):  # e.g. a .wav given as data.train
                raise DataError(f"{u} is not a tar shard; make shards first: python -m data_prep shard SRC OUT")
    if not urls:
        raise DataError(f"no shards match {spec!r}")
    return ShardSet(urls=urls, source=str(spec))


def fit_workers(shards: ShardSet, key: str, world: int, num_workers: int, announce: bool = False) -> int:
    """Loader workers per rank for a shard set, checked at start-up (before any training step).

    Every rank needs a shard of its own (training: disjoint data; evaluation: each sample once), else
    one clear error naming the recipe key. With fewer than ranks x workers shards, each rank runs
    ``shards // ranks`` workers instead (said when ``announce``)."""
    n = len(shards.urls)
    if n < world:
        raise DataError(f"{key}: {shards.source} has {n} shard(s) for {world} processes; every process needs "
                        "at least one (reshard with a smaller --samples-per-shard, or run fewer processes)")
    fit = min(num_workers, n // world)
    if fit < num_workers and announce:
        print(f"note: {key} has {n} shard(s) for {world} process(es) x {num_workers} loader workers; "
              f"using {fit} worker(s) per process so that none shares a shard", file=sys.stderr)
    return fit


def _open_url(url: str):
    if url.startswith("file:"):
        url = url[len("file:") :]
    return gopen(url, "rb")


def _seed(*parts: int) -> int:
    return zlib.crc32(json.dumps(parts).encode())


def slot_shards(urls: list[str], seed: int, slot: int, num_slots: int) -> list[str]:
    """The shards a reader slot (rank * workers + worker) owns: disjoint when there are enough shards."""
    order = list(urls)
    random.Random(_seed(seed, -1)).shuffle(order)
    if len(order) >= num_slots:
        return order[slot::num_slots]
    return [order[slot % len(order)]]


@dataclass
class SampleCounters:
    """Per-worker counts carried in each batch (for resume and for the skipped-sample report)."""

    raw: int = 0  # raw samples taken from the shuffle buffer in this epoch
    corrupt: int = 0
    corrupt_keys: list[str] = field(default_factory=list)
    corrupt_counts: list[int] = field(default_factory=list)  # samples each of corrupt_keys lost
    exhausted: bool = False  # a whole pass over this slot's shards gave no sample
    cycle_samples: int = 0  # raw samples in the longest pass so far over this slot's shards

    def damaged(self, message: str, lost: int) -> None:
        self.corrupt += lost
        self.corrupt_keys.append(message)
        self.corrupt_counts.append(lost)

    def take(self) -> dict[str, list]:
        """The records since the last batch, for the next one."""
        records = {"corrupt_keys": list(self.corrupt_keys), "corrupt_counts": list(self.corrupt_counts)}
        self.corrupt_keys.clear()
        self.corrupt_counts.clear()
        return records


def _complete(sample: dict[str, Any]) -> bool:
    """Whether a sample has the members of the shard format (audio and json)."""
    return fmt.META_MEMBER in sample and any(k in sample for k in fmt.READABLE_AUDIO_MEMBERS)


def decode_sample(sample: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Audio and metadata of a raw tar sample; raises on anything corrupt."""
    audio_key = next((k for k in fmt.READABLE_AUDIO_MEMBERS if k in sample), None)
    if audio_key is None:
        raise ValueError("no audio member")
    wave, sr = sf.read(io.BytesIO(sample[audio_key]), dtype="float32", always_2d=True)
    if sr != fmt.SAMPLE_RATE:
        raise ValueError(f"sample rate {sr}, expected {fmt.SAMPLE_RATE}")
    wave = wave.mean(axis=1)
    if wave.size == 0 or not np.isfinite(wave).all():
        raise ValueError("empty or non-finite audio")
    if fmt.META_MEMBER not in sample:  # every sample of the shard format has one (it may have been cut off)
        raise ValueError("no json member")
    meta = fmt.decode_meta(sample[fmt.META_MEMBER])
    return wave, meta


class ShardStream(IterableDataset):
    """Batches of waveforms (and optionally fbanks) from WebDataset shards.

    ``mode="train"``: endless, shuffled, random crops; every (rank, worker) slot reads its own shards.
    ``mode="eval"``: each sample exactly once, no shuffle, crops from the start.
    """

    def __init__(
        self,
        shards: ShardSet,
        batch_size: int,
        target_frames: int,
        mode: str = "train",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = DataSection.shuffle_buffer,
        features: FeatureConfig | None = None,
        normalization: Normalization | None = None,
        compute_features: bool = True,
        vocabulary: list[str] | None = None,
        drop_last: bool = True,
        sample_weight: Callable[[dict[str, Any]], float] | None = None,
        corrupt_log: CorruptLog | None = None,
    ):
        super().__init__()
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', not {mode!r}")
        self.shards, self.mode = shards, mode
        self.batch_size, self.target_frames = batch_size, target_frames
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.loader_workers = num_workers  # 0 = read in the main process
        self.num_workers = max(num_workers, 1)  # logical reader slots per rank
        self.shuffle_buffer = shuffle_buffer if mode == "train" else 0
        self.features = features or FeatureConfig()
        self.normalization = normalization or Normalization()
        self.compute_features = compute_features
        self.vocabulary = vocabulary
        self.label_index = {lab: i for i, lab in enumerate(vocabulary)} if vocabulary else None
        self.drop_last = drop_last and mode == "train"
        # Keep a sample with this probability (0 drops it: fold filters; <1: balanced sampling).
        self.sample_weight = sample_weight
        self.max_samples = self.features.num_samples(target_frames)
        self.epoch = 0
        # Resume: batch index within the epoch and each logical worker's raw-sample count at that point.
        self.start_batch = 0
        self.skip_raw: dict[int, int] = {}
        # Damaged data: workers send records with the batches; this log (in the consuming process) keeps them.
        self.corrupt_log = corrupt_log or CorruptLog()
        self.expected = expected_counts(shards.urls, shards.index)
        if mode == "eval" and len(shards.urls) < world_size * self.num_workers:
            raise DataError(
                f"{shards.source}: {len(shards.urls)} shard(s) cannot be read exactly once by "
                f"{world_size} rank(s) x {self.num_workers} worker(s); use fewer workers or more shards"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0, skip_raw: dict[int, int] | None = None) -> None:
        self.epoch, self.start_batch, self.skip_raw = epoch, start_batch, dict(skip_raw or {})

    # ----- raw samples -----
    def _shard_order(self, worker: int, cycle: int) -> list[str]:
        slot = self.rank * self.num_workers + worker
        num_slots = self.world_size * self.num_workers
        if self.mode == "eval":
            return self.shards.urls[slot::num_slots]
        mine = slot_shards(self.shards.urls, self.seed, slot, num_slots)
        random.Random(_seed(self.seed, self.epoch, self.rank, worker, cycle)).shuffle(mine)
        return mine

    def _raw_samples(self, worker: int, counters: SampleCounters) -> Iterator[dict[str, Any]]:
        cycle = 0
        while True:
            read = 0
            for url in self._shard_order(worker, cycle):
                record = ShardRead(url, self.expected.get(url))
                yield from read_shard(url, _open_url, record, _complete)
                read += record.samples
                if record.damaged:
                    counters.damaged(record.message(), record.lost_count())
            counters.cycle_samples = max(counters.cycle_samples, read)
            if self.mode == "eval":
                return
            if not read:  # an endless stream over shards that give nothing would spin forever
                counters.exhausted = True
                return
            cycle += 1

    def _shuffled(self, worker: int, counters: SampleCounters) -> Iterator[dict[str, Any]]:
        src = self._raw_samples(worker, counters)
        if not self.shuffle_buffer:
            yield from src
            return
        rng = random.Random(_seed(self.seed, self.epoch, self.rank, worker, -2))
        buf: list[dict[str, Any]] = []
        for s in src:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            i = rng.randrange(len(buf))
            buf[i], s = s, buf[i]
            yield s
        rng.shuffle(buf)
        yield from buf

    # ----- decoded clips -----
    def _crop(self, wave: np.ndarray, worker: int, raw_index: int) -> np.ndarray:
        # No mean subtraction here: fbank() applies config.subtract_clip_mean to what it is given.
        if wave.size <= self.max_samples:
            return wave
        hop = self.features.frame_shift
        steps = (wave.size - self.max_samples) // hop
        if self.mode == "train":
            start = int(np.random.default_rng([self.seed, self.epoch, self.rank, worker, raw_index]).integers(0, steps + 1))
        else:
            start = 0
        return wave[start * hop : start * hop + self.max_samples]

    def _keep(self, sample: dict[str, Any], worker: int, raw_index: int) -> bool:
        try:
            w = self.sample_weight(json.loads(sample.get(fmt.META_MEMBER, b"{}")))
        except (ValueError, TypeError, AttributeError):
            return True  # let decoding report the corrupt sample
        if w >= 1.0:
            return True
        if w <= 0.0:
            return False
        u = np.random.default_rng([self.seed, self.epoch, self.rank, worker, raw_index, 1]).random()
        return bool(u < w)

    def _labels(self, meta: dict[str, Any]) -> torch.Tensor | None:
        if self.label_index is None:
            return None
        y = torch.zeros(len(self.label_index))
        for lab in meta.get("labels") or []:
            if lab not in self.label_index and self.shards.vocabulary is not None and lab not in self.shards.vocabulary:
                # index.json lists every label of the set (checked against the model's): this json is damaged
                raise ValueError(f"label {lab!r} is not in index.json's vocabulary")
            if lab not in self.label_index:
                raise DataError(f"label {lab!r} of sample {meta.get('source')} is not in the model's vocabulary")
            y[self.label_index[lab]] = 1.0
        return y

    def _collate(self, clips: list[tuple[str, np.ndarray, dict, torch.Tensor | None]], worker: int,
                 counters: SampleCounters) -> dict[str, Any]:
        waves, lengths = pad_waves([c[1] for c in clips])
        batch: dict[str, Any] = {
            "keys": [c[0] for c in clips],
            "meta": [c[2] for c in clips],
            "lengths": lengths,
            "seconds": float(lengths.sum()) / self.features.sample_rate,
            "worker": worker,
            "raw": counters.raw,
            "corrupt": counters.corrupt,
            **counters.take(),
        }
        if self.label_index is not None:
            batch["labels"] = torch.stack([c[3] for c in clips])
        if self.compute_features:
            batch["fbank"], batch["num_frames"] = self.featurize(waves, lengths)
        else:
            batch["waves"] = waves
        return batch

    def featurize(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized fbank padded to ``target_frames`` and the real frame counts."""
        return model_input(waves, lengths, self.features, self.normalization, self.target_frames)

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        physical, count = (info.id, info.num_workers) if info is not None else (0, 1)
        if count != self.num_workers:
            raise DataError(f"ShardStream built for {self.num_workers} worker(s) but run with {count}")
        # After a resume at batch k, physical worker w plays logical worker (w + k) % W so the
        # round-robin order of batches continues where it stopped.
        return physical, (physical + self.start_batch) % self.num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is not None:
            torch.set_num_threads(1)
        _, worker = self._worker()
        counters = SampleCounters()
        skip = self.skip_raw.get(worker, 0)
        clips: list = []
        failed = 0  # decoding failures in a row
        for sample in self._shuffled(worker, counters):
            counters.raw += 1
            if counters.raw <= skip:  # a resume: read before the checkpoint, damage included (counted then)
                counters.take()
                continue
            key = sample.get("__key__", "?")
            if self.sample_weight is not None and not self._keep(sample, worker, counters.raw):
                continue
            try:
                wave, meta = decode_sample(sample)
                labels = self._labels(meta)
            except DataError:
                raise
            except Exception as e:  # corrupt samples are skipped and counted (fatal only by data.corrupt_shards)
                counters.damaged(f"{sample.get('__url__', '?')}:{key}: {e}", 1)
                failed += 1
                # An endless stream whose every sample fails would spin: this many failures in a row means
                # several whole cycles went by (a good sample survives that long in the buffer with p < 1e-8).
                if self.mode == "train" and failed > 20 * (self.shuffle_buffer + counters.cycle_samples + 1):
                    counters.exhausted = True
                    break
                continue
            failed = 0
            clips.append((key, self._crop(wave, worker, counters.raw), meta, labels))
            if len(clips) == self.batch_size:
                yield self._collate(clips, worker, counters)
                clips = []
        if clips and not self.drop_last:
            yield self._collate(clips, worker, counters)
        elif counters.corrupt_keys or counters.exhausted:
            yield self._records_only(worker, counters)

    def _slot_name(self, worker: int) -> str:
        mine = sorted(Path(u).name for u in self._shard_order(worker, 0))
        return (f"{self.shards.source}: the {len(mine)} shard(s) of rank {self.rank}, loader worker {worker} "
                f"({', '.join(mine[:3])}{' ...' if len(mine) > 3 else ''})")

    def _records_only(self, worker: int, counters: SampleCounters) -> dict[str, Any]:
        """A batch without clips that carries the last records (or the news that nothing is readable)."""
        batch = {"keys": [], "worker": worker, "raw": counters.raw, "corrupt": counters.corrupt,
                 "exhausted": self._slot_name(worker) if counters.exhausted else None, **counters.take()}
        return batch


class CheckedLoader:
    """A DataLoader whose batches' damaged-data records go to the stream's :class:`CorruptLog`."""

    def __init__(self, loader: DataLoader, log: CorruptLog):
        self.loader, self.log = loader, log

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.log.watch(self.loader)


def make_loader(stream: ShardStream) -> CheckedLoader:
    """A DataLoader over a :class:`ShardStream` (batches are formed inside the workers)."""
    workers = stream.loader_workers
    return CheckedLoader(DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        # its own generator: creating an iterator must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(stream.seed),
        prefetch_factor=2 if workers else None,
    ), stream.corrupt_log)
