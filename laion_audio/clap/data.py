"""WebDataset loader for LAION-layout shards: ``<root>/<dataset>/<split>/N.tar`` + ``sizes.json``.

It reads our shards and LAION's unchanged (reference/clap.md §1):
* shards are the keys of ``sizes.json`` (a tar not listed there is never read, a missing
  ``sizes.json`` skips that split with a warning), the counts size the epoch;
* a sample is ``KEY.flac`` + ``KEY.json``; JSON ``text`` is a list or a plain string, ``tag``
  may be missing, ``text_augment_t5``/``text_augment_all`` are selected as LAION does;
* audio is decoded in-process with soundfile (48 kHz expected; anything else is resampled
  with soxr rather than silently mis-timed), then fitted to 10 s (rand_trunc / fusion,
  repeat-then-pad) by :mod:`features`;
* a corrupt tar member, undecodable FLAC or unusable JSON is skipped and counted (each batch
  carries ``skipped``), never fatal.

Determinism (for exact resume): shard order, the sample shuffle buffer, caption choice and
crops are functions of (seed, epoch, rank, worker, sample key) only; a resumed run skips the
batches already consumed in the interrupted epoch and then sees exactly what an uninterrupted
run would. Training epochs have a fixed number of batches per worker (LAION's ``with_epoch``):
ceil(N / global batch) rounded up to a multiple of the worker count, cycling the shards when
a worker runs dry.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .features import AudioConfig, audio_features

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "unbalanced_train", "balanced_train")
EVAL_SPLITS = ("valid", "test", "eval")
TEXT_AUGMENT_SELECTIONS = ("none", "all", "augment_only")
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".oga", ".mp3")


@dataclass
class ShardSet:
    """The shards of one ``<dataset>/<split>`` folder as listed by its ``sizes.json``."""

    dataset: str
    split: str
    urls: list[str]
    sizes: list[int]
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.split}"

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def find_shards(root: str | Path, datasets: list[str] | None = None,
                splits: tuple[str, ...] | list[str] = TRAIN_SPLITS,
                weights: dict[str, float] | None = None) -> list[ShardSet]:
    """Shard sets under ``root`` (local path or fsspec URL). ``datasets=None`` takes every
    folder that has a ``sizes.json`` in one of ``splits``."""
    root = str(root)
    fs, base = fsspec.core.url_to_fs(root)
    if datasets is None:
        datasets = sorted({Path(p).parent.parent.name for p in fs.glob(_join(base, "*", "*", "sizes.json"))})
    found = []
    for name in datasets:
        for split in splits:
            sizes_path = _join(base, name, split, "sizes.json")
            if not fs.exists(sizes_path):
                log.debug("no %s: split skipped", sizes_path)
                continue
            try:
                sizes = json.loads(fs.cat_file(sizes_path))
                if not isinstance(sizes, dict) or not all(type(n) is int and n >= 0 for n in sizes.values()):
                    raise ValueError("not an object of shard name -> sample count")
            except (OSError, ValueError) as exc:
                log.warning("unreadable %s (%s): split skipped", sizes_path, exc)
                continue
            urls, counts = [], []
            for shard, count in sizes.items():
                path = _join(base, name, split, shard)
                if not fs.exists(path):
                    log.warning("%s listed in sizes.json but missing: skipped", path)
                    continue
                urls.append(fs.unstrip_protocol(path) if "://" in root else path)
                counts.append(int(count))
            if urls:
                found.append(ShardSet(name, split, urls, counts, (weights or {}).get(name, 1.0)))
    return found


def require_shards(root: str | Path, datasets: list[str] | None, splits,
                   weights: dict[str, float] | None = None, what: str = "") -> list[ShardSet]:
    """:func:`find_shards` for a command: none found, or a name in ``datasets`` with no split
    (a typo silently trained or evaluated the others), is the user's to fix (one line)."""
    from ..errors import UserError
    from ..http import redact

    sets = find_shards(root, datasets, splits, weights)
    if not sets:
        hint = ""
        if "://" not in str(root) and (Path(root) / "sizes.json").is_file():
            hint = (f"; {root} is itself a split folder: pass --data-root "
                    f"{Path(root).resolve().parent.parent} (it holds <dataset>/<split>/)")
        raise UserError(f"no {what}shards under {redact(str(root))} (datasets "
                        f"{' '.join(datasets) if datasets else 'all'}, splits {' '.join(splits)}): "
                        "each split needs a sizes.json and its tars" + hint)
    found = {s.dataset for s in sets}
    missing = [d for d in datasets or () if d not in found]
    if missing:
        raise UserError(f"--datasets {' '.join(missing)}: no {'/'.join(splits)} split with a "
                        f"sizes.json there (found: {', '.join(sorted(found))})")
    return sets


def select_text(meta: dict, selection: str | None):
    """LAION's ``--text-augment-selection``: none -> text; all -> text_augment_all if
    present; augment_only -> text_augment_t5 when text_augment_all exists and t5 is not null."""
    if selection in (None, "none"):
        return meta["text"]
    if selection == "all":
        return meta.get("text_augment_all", meta["text"])
    if selection == "augment_only":
        if "text_augment_all" in meta and meta.get("text_augment_t5") is not None:
            return meta["text_augment_t5"]
        return meta["text"]
    raise ValueError(f"unknown text augment selection {selection!r}; expected {TEXT_AUGMENT_SELECTIONS}")


def captions_of(meta: dict, selection: str | None) -> list[str]:
    """The candidate captions as a non-empty list of strings (ValueError otherwise)."""
    texts = select_text(meta, selection)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"unusable text field (a blank caption is no caption): {texts!r:.80}")
    return texts


def decode_audio(data: bytes, sample_rate: int) -> tuple[torch.Tensor, int]:
    """FLAC (or any libsndfile format) bytes -> mono float32 at ``sample_rate``, original rate."""
    from ..transcode.audio import read_mono

    wave, sr = read_mono(io.BytesIO(data), sample_rate)
    if len(wave) == 0:
        raise ValueError("no audio frames")
    return torch.from_numpy(np.ascontiguousarray(wave)), sr


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample generator: the same sample in the same epoch always gets the same crop and
    caption, whatever was skipped or resumed before it."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, zlib.crc32(key.encode("utf-8"))])


@dataclass
class Counter:
    """Samples skipped and why (bad tar member, bad audio, bad json), each counted once however
    many passes meet it again. ``bad`` holds the (url, key) of samples known not to decode:
    later passes leave them out, so a corpus with nothing usable ends instead of cycling
    forever."""

    counts: dict = field(default_factory=dict)
    seen: set = field(default_factory=set)
    bad: set = field(default_factory=set)

    def add(self, reason: str, ident=None) -> None:
        if ident is not None:
            if (reason, ident) in self.seen:
                return
            self.seen.add((reason, ident))
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())


class ClapShards(IterableDataset):
    """Batches of CLAP inputs from shard sets. ``train=True``: shuffled, split by node and
    worker, fixed batches per epoch; ``train=False``: every sample once in shard order, last
    batch partial (evaluation)."""

    def __init__(self, shard_sets: list[ShardSet], tokenizer, audio_cfg: AudioConfig,
                 batch_size: int, train: bool = True, truncating: str = "rand_trunc",
                 filling: str = "repeatpad", text_augment_selection: str | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 shuffle_buffer: int = 5000, shuffle_initial: int = 1000,
                 class_index: dict[str, int] | None = None, need_fusion: bool | None = None,
                 weighted: bool = False):
        if not shard_sets:
            raise ValueError("no shards found (check --data-root, --datasets and the splits' sizes.json)")
        self.shard_sets = shard_sets
        self.tokenizer = tokenizer
        self.audio_cfg = audio_cfg
        self.batch_size = batch_size
        self.train = train
        self.truncating, self.filling = truncating, filling
        self.text_augment_selection = text_augment_selection
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = max(1, workers)
        self.shuffle_buffer, self.shuffle_initial = shuffle_buffer, shuffle_initial
        self.class_index = class_index
        self.need_fusion = need_fusion
        self.weighted = weighted and len(shard_sets) > 1
        self.epoch = 0
        self.skip_batches = 0
        self.num_samples = sum(s.num_samples for s in shard_sets)
        global_batch = batch_size * world_size
        if train:
            self.batches_per_worker = math.ceil(math.ceil(self.num_samples / global_batch) / self.workers)
            self.num_batches = self.batches_per_worker * self.workers
        else:
            self.batches_per_worker = None
            self.num_batches = math.ceil(self.num_samples / batch_size)

    # -- epoch control (called in the main process before iterating) -----------------------
    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    # -- raw sample streams ------------------------------------------------------------------
    def _worker(self) -> tuple[int, int]:
        """(logical worker, workers). The DataLoader always starts its round robin at worker 0,
        so after skipping ``skip_batches`` physical worker w plays logical worker
        (w + skip) % n, the one that produced global batch ``skip + w`` in the full epoch."""
        info = get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.skip_batches) % info.num_workers, info.num_workers

    def _slot(self) -> tuple[int, int]:
        worker, n_workers = self._worker()
        if self.train:
            return self.rank * n_workers + worker, self.world_size * n_workers
        return worker, n_workers

    def _raw_samples(self, urls: list[str], counter: Counter, sample_slot=None) -> Iterator[dict]:
        """Samples (dicts of bytes) of ``urls`` in order; tar errors are counted and skipped."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        current = [None]

        def handler(exc: Exception) -> bool:
            if ("tar", current[0]) not in counter.seen:
                log.warning("skipped unreadable tar data in %s: %s", current[0],
                            exc.args[0] if exc.args else exc)
            counter.add("tar", current[0])
            return True

        def streams():
            for url in urls:
                current[0] = url
                try:
                    with fsspec.open(url, "rb") as f:
                        yield {"url": url, "stream": f}
                except OSError as exc:
                    handler(exc)

        index = 0
        for sample in group_by_keys(tar_file_expander(streams(), handler=handler), handler=handler):
            if sample_slot is not None:
                slot, n = sample_slot
                index += 1
                if (index - 1) % n != slot:
                    continue
            if counter.bad and (sample.get("__url__"), sample.get("__key__")) in counter.bad:
                continue
            yield sample

    def _shard_stream(self, shard_sets: list[ShardSet], counter: Counter, epoch_pass: int) -> Iterator[dict]:
        """One pass over the shards of ``shard_sets`` assigned to this node/worker."""
        slot, n_slots = self._slot()
        urls = [u for s in shard_sets for u in s.urls]
        if self.train:  # the node/worker assignment is fixed for the epoch, the order per pass
            random.Random(f"{self.seed}-{self.epoch}-shards").shuffle(urls)
        if len(urls) >= n_slots:
            mine = urls[slot::n_slots]
            if self.train and epoch_pass:
                random.Random(f"{self.seed}-{self.epoch}-{epoch_pass}-{slot}").shuffle(mine)
            yield from self._raw_samples(mine, counter)
        else:  # fewer shards than readers: every reader reads all, keeps every n-th sample
            yield from self._raw_samples(urls, counter, sample_slot=(slot, n_slots))

    def _train_stream(self, counter: Counter) -> Iterator[dict]:
        """Endless shuffled stream (passes re-shuffled), weighted across datasets if asked."""
        slot, _ = self._slot()
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}-mix")
        source = self._weighted_passes(counter, rng) if self.weighted else self._passes(counter)
        buffer: list[dict] = []
        for seen, sample in enumerate(source):
            buffer.append(sample)
            if len(buffer) < self.shuffle_initial:
                continue
            if len(buffer) < self.shuffle_buffer and seen % 2:
                continue  # grow the buffer from `initial` towards `shuffle_buffer`
            yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def _passes(self, counter: Counter) -> Iterator[dict]:
        """All shard sets as one list (LAION's behaviour), pass after pass."""
        epoch_pass = 0
        while True:
            got = False
            for sample in self._shard_stream(self.shard_sets, counter, epoch_pass):
                got = True
                yield sample
            if not got:
                return
            epoch_pass += 1

    def _weighted_passes(self, counter: Counter, rng: random.Random) -> Iterator[dict]:
        """Each draw picks a dataset with probability proportional to its weight."""
        def cycle(shard_set):
            epoch_pass = 0
            while True:
                got = False
                for sample in self._shard_stream([shard_set], counter, epoch_pass):
                    got = True
                    yield sample
                if not got:
                    return
                epoch_pass += 1

        streams = [cycle(s) for s in self.shard_sets]
        weights = [s.weight for s in self.shard_sets]
        while streams:
            i = rng.choices(range(len(streams)), weights)[0]
            try:
                yield next(streams[i])
            except StopIteration:
                del streams[i], weights[i]

    # -- decoding and batching ----------------------------------------------------------------
    def _decode(self, sample: dict, counter: Counter) -> dict | None:
        key = sample.get("__key__", "?")
        ident = (sample.get("__url__"), sample.get("__key__"))

        def skip(reason: str, why: str) -> None:
            if (reason, ident) not in counter.seen:
                log.warning("sample %s in %s: %s: skipped", key, sample.get("__url__"), why)
            counter.add(reason, ident)
            counter.bad.add(ident)

        if "flac" not in sample or "json" not in sample:
            skip("incomplete", "lacks flac or json")
            return None
        try:
            meta = json.loads(sample["json"])
            texts = captions_of(meta, self.text_augment_selection)
        except (ValueError, KeyError, TypeError) as exc:
            skip("json", f"bad json ({exc})")
            return None
        try:
            wave, sr = decode_audio(sample["flac"], self.audio_cfg.sample_rate)
        except Exception as exc:  # libsndfile raises its own error types
            skip("audio", f"undecodable audio ({exc})")
            return None
        return {"key": key, "url": sample.get("__url__", ""), "wave": wave, "sr": sr,
                "texts": texts, "tags": meta.get("tag") or []}

    def _features(self, item: dict) -> dict:
        rng = sample_rng(self.seed, self.epoch, item["key"])
        feats = audio_features(item["wave"], self.audio_cfg, self.truncating, self.filling, rng,
                               need_fusion=self.need_fusion)
        texts = item["texts"]
        feats["raw_text"] = texts[int(rng.integers(len(texts)))] if len(texts) > 1 else texts[0]
        return feats

    def collate(self, items: list[dict], skipped: int) -> dict:
        feats = [self._features(it) for it in items]
        batch = {"waveform": torch.stack([f["waveform"] for f in feats]),
                 "longer": torch.stack([f["longer"] for f in feats])}
        if "mel_fusion" in feats[0]:
            batch["mel_fusion"] = torch.stack([f["mel_fusion"] for f in feats])
        batch["raw_text"] = [f["raw_text"] for f in feats]
        batch["full_text"] = [it["texts"] for it in items]
        batch["text"] = self.tokenizer(batch["raw_text"]) if self.tokenizer is not None else None
        batch["__key__"] = [it["key"] for it in items]
        batch["__url__"] = [it["url"] for it in items]
        batch["dataset"] = ["-".join(Path(u).parts[-3:-1]) for u in batch["__url__"]]
        batch["audio_orig_sr"] = [it["sr"] for it in items]
        batch["tags"] = [it["tags"] for it in items]
        if self.class_index is not None:
            labels = torch.zeros(len(items), len(self.class_index))
            for i, it in enumerate(items):
                for tag in it["tags"]:
                    if tag in self.class_index:
                        labels[i, self.class_index[tag]] = 1
            batch["class_label"] = labels
        batch["skipped"] = skipped
        return batch

    def __iter__(self) -> Iterator[dict]:
        counter = Counter()
        reported = 0
        worker, n_workers = self._worker()
        if self.train:
            # global batch b comes from worker b % n_workers (DataLoader round robin)
            local_skip = len(range(worker, self.skip_batches, n_workers))
            target = self.batches_per_worker * self.workers // n_workers
            source = self._train_stream(counter)
        else:
            local_skip, target = 0, None
            source = self._shard_stream(self.shard_sets, counter, 0)
        produced = 0
        items: list[dict] = []
        for raw in source:
            item = self._decode(raw, counter)
            if item is None:
                continue
            items.append(item)
            if len(items) < self.batch_size:
                continue
            if produced >= local_skip:
                yield self.collate(items, counter.total() - reported)
                reported = counter.total()
            items = []
            produced += 1
            if target is not None and produced >= target:
                return
        if items and not self.train:
            yield self.collate(items, counter.total() - reported)
        elif not self.train and counter.total() > reported:
            yield {"skipped": counter.total() - reported}   # no sample left to batch: the count alone
        elif target is not None and produced < target:
            log.warning("worker %d ran out of samples after %d of %d batches", worker, produced, target)


def make_loader(dataset: ClapShards, workers: int = 0, prefetch_factor: int | None = None,
                seed: int = 0) -> DataLoader:
    """DataLoader over whole batches (the dataset batches itself, as LAION's WebLoader).
    It gets its own generator: creating an iterator must not draw from the global torch RNG,
    or a resumed run would diverge from an uninterrupted one."""
    kwargs = {"generator": torch.Generator().manual_seed(seed)}
    if workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers in forked workers
        kwargs.update(prefetch_factor=prefetch_factor or 2, persistent_workers=False)
    return DataLoader(dataset, batch_size=None, num_workers=workers, **kwargs)
