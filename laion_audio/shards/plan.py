"""Planning: which record becomes which sample of which tar, decided before a byte is written.

Split per id (a seeded hash of ``(source, source_id)``), order by a seeded hash of the key, tars
cut by sample count or by exact byte arithmetic; a record that cannot be a sample is returned
failed with a typed reason.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import soundfile as sf

from ..records import FailureCode, Record, sample_key
from .members import MemberReader, locate
from .layout import (_BLOCK, _RECORD, _SAFE_DIR, DEFAULT_SAMPLES_PER_SHARD, DEFAULT_SEED,
                     DEFAULT_TEST_FRACTION, READY_STATUSES, SAMPLE_RATE, STAGE, WRITER_VERSION,
                     ShardError)


# ---------------------------------------------------------------------------- split and order
def _hash_int(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def assign_split(source: str, source_id: str, seed: int = DEFAULT_SEED,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """``"test"`` for about ``test_fraction`` of ids, else ``"train"``; decided by this id alone."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    u = _hash_int("split", seed, source, source_id) / 2.0 ** 64
    return "test" if u < test_fraction else "train"


def _order_key(key: str, seed: int) -> tuple[int, str]:
    return (_hash_int("order", seed, key), key)


# ---------------------------------------------------------------------------- sample JSON
def _json_safe(value: Any) -> Any:
    """NaN/inf (pandas-born metadata) become null: strict JSON readers reject ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def sample_json(record: Record, texts: list[str], seconds: float) -> bytes:
    """The ``KEY.json`` member: LAION's keys (``text`` list, ``tag`` list, ``original_data``) plus
    our provenance; ``text_augment_t5``/``text_augment_all`` when a T5 caption exists, the keys
    LAION-CLAP's ``--text-augment-selection`` reads. Sorted keys, so the bytes are stable."""
    doc: dict[str, Any] = {
        "text": list(texts),
        "tag": list(record.tags),
        "original_data": record.original_data,
        "source": record.source,
        "source_id": record.source_id,
        "license": record.license,
        "author": record.author,
        "url": record.url,
        "caption_provenance": record.caption_provenance,
        "duration": round(seconds, 6),
    }
    t5 = (record.text_augment_t5 or "").strip()
    if t5:
        doc["text_augment_t5"] = t5
        doc["text_augment_all"] = [*texts, t5]
    return json.dumps(_json_safe(doc), sort_keys=True, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------- planning
def _member_bytes(size: int) -> int:
    return _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _tar_bytes(member_bytes: int) -> int:
    """Size of a tar whose members take ``member_bytes``: two zero blocks end it, and tarfile
    pads the whole to a multiple of its 10240-byte record."""
    raw = member_bytes + 2 * _BLOCK
    return (raw + _RECORD - 1) // _RECORD * _RECORD


@dataclass
class PlannedSample:
    index: int              # position in the caller's record list
    key: str
    flac_path: str
    flac_bytes: int
    flac_mtime_ns: int      # only to notice a file changing during this run; never stored
    audio_id: str           # what the FLAC holds, independent of where it lies (see _audio_id)
    json_bytes: bytes
    seconds: float
    #: (tar path, data offset) when the FLAC is read from the record's published tar (its
    #: ``flac_path`` was deleted by the keep policy); then ``flac_mtime_ns`` is the tar's
    member: tuple[str, int] | None = None

    def open_flac(self):
        return MemberReader(self.member[0], self.member[1], self.flac_bytes) if self.member \
            else open(self.flac_path, "rb")

    @property
    def tar_bytes(self) -> int:
        return _member_bytes(self.flac_bytes) + _member_bytes(len(self.json_bytes))


@dataclass
class PlannedShard:
    dataset: str
    split: str
    number: int
    samples: list[PlannedSample] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.number}.tar"

    @property
    def rel(self) -> str:
        return f"{self.dataset}/{self.split}/{self.name}"

    @property
    def expected_bytes(self) -> int:
        return _tar_bytes(sum(s.tar_bytes for s in self.samples))

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.samples)

    def fingerprint(self) -> str:
        """What this tar will hold. Equal fingerprints mean equal bytes (FLAC by size and content
        id, JSON by its bytes), so a rerun can trust a tar with a matching receipt. Nothing here
        depends on paths or mtimes: two work folders built from the same inputs (a Ray run and
        an inline one, a killed run and a clean one) write the same index and receipts."""
        h = hashlib.sha256(f"laion-audio-shard v{WRITER_VERSION}\n".encode())
        for s in self.samples:
            h.update(f"{s.key}\t{s.flac_bytes}\t{s.audio_id}\t".encode())
            h.update(hashlib.sha256(s.json_bytes).digest())
        return h.hexdigest()


def _audio_id(record: Record, opener) -> str:
    """The transcode stage's hash of the FLAC's PCM when the ledger has it (free); otherwise the
    SHA-256 of the file bytes (one extra read, for records that came without it)."""
    if record.audio_sha256:
        return f"pcm:{record.audio_sha256}"
    h = hashlib.sha256()
    with opener() as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file:{h.hexdigest()}"


def _in_published_tar(record: Record, members_root: str | None) -> tuple[str, int, int, int] | None:
    """(tar, offset, size, tar mtime) of the record's FLAC in the tar it was sharded into, when
    its own file is gone (deleted by the build's keep policy once that tar was published)."""
    if not members_root or not record.shard or os.path.isfile(record.flac_path):
        return None
    tar = f"{members_root}/{record.shard}"
    where = locate(tar, f"{sample_key(record.source, record.source_id)}.flac")
    if where is None:
        return None
    try:
        return tar, where[0], where[1], os.stat(tar).st_mtime_ns
    except OSError:
        return None


def _prepare(index: int, record: Record, members_root: str | None = None,
             ) -> tuple[PlannedSample | None, Record | None]:
    """Check one record and build its sample, or return it failed with a typed reason."""
    if not _SAFE_DIR.match(record.source) or ".." in record.source:
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.BAD_METADATA,
                          f"source name {record.source!r} cannot be a shard folder name "
                          "(letters, digits, '.', '_', '-'; not starting with '.' or '-')")
    texts = [t for t in record.texts if isinstance(t, str) and t.strip()]
    if not texts:
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.NO_CAPTION,
                          "no non-empty caption in texts")
    path = record.flac_path
    if not path:
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.MISSING_FILE,
                          "flac_path is empty")
    member = _in_published_tar(record, members_root)
    try:
        if member:
            tar, offset, nbytes, mtime_ns = member
            with MemberReader(tar, offset, nbytes) as f:
                info = sf.info(f)
        else:
            st = os.stat(path)
            nbytes, mtime_ns = st.st_size, st.st_mtime_ns
            info = sf.info(path)
    except FileNotFoundError:
        if record.shard and members_root:
            # released by the keep policy, and its tar no longer holds it whole (cut short,
            # damaged, deleted): nothing is wrong with the record, so it goes back to be fetched
            return None, dataclasses.replace(record).defer(STAGE, FailureCode.CLIP_LOST,
                          f"FLAC gone from the work folder and from its tar {record.shard}; "
                          "queued to be fetched again")
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.MISSING_FILE,
                          f"FLAC not found: {path}")
    except Exception as exc:  # libsndfile reports unreadable files as generic errors
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.UNDECODABLE,
                          f"cannot read {path}: {exc}")
    if info.format != "FLAC" or info.samplerate != SAMPLE_RATE or info.channels != 1:
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.UNDECODABLE,
                          f"{path} is {info.format} {info.samplerate} Hz {info.channels} ch; "
                          f"shards hold {SAMPLE_RATE} Hz mono FLAC")
    if info.frames <= 0:
        return None, dataclasses.replace(record).fail(STAGE, FailureCode.EMPTY_FILE,
                          f"{path} holds no samples")
    seconds = info.frames / info.samplerate
    key = sample_key(record.source, record.source_id)
    sample = PlannedSample(index=index, key=key, flac_path=path, flac_bytes=nbytes,
                           flac_mtime_ns=mtime_ns, audio_id="", member=member[:2] if member else None,
                           json_bytes=sample_json(record, texts, seconds), seconds=seconds)
    sample.audio_id = _audio_id(record, sample.open_flac)
    return sample, None


def plan_shards(records: list[Record], *, seed: int = DEFAULT_SEED,
                test_fraction: float = DEFAULT_TEST_FRACTION,
                samples_per_shard: int | None = None, shard_bytes: int | None = None,
                workers: int = 1, members_root: str | None = None,
                ) -> tuple[list[PlannedShard], dict[int, Record], dict[int, str]]:
    """Decide which sample goes into which tar. Returns the shards, the failed records (by input
    position) and each planned input position's split. With ``members_root`` (a local shard
    root), a record whose FLAC file is gone is read from its tar there (``record.shard``)."""
    if samples_per_shard is None and shard_bytes is None:
        samples_per_shard = DEFAULT_SAMPLES_PER_SHARD
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ShardError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if shard_bytes is not None and shard_bytes < 1:
        raise ShardError(f"shard_bytes must be >= 1, got {shard_bytes}")
    not_ready = [r.key for r in records if r.status not in READY_STATUSES]
    if not_ready:
        raise ShardError(f"{len(not_ready)} records are not ready for sharding (status must be "
                         f"one of {READY_STATUSES}), e.g. {not_ready[:3]}")
    keys = Counter(r.key for r in records)
    dups = [k for k, n in keys.items() if n > 1]
    if dups:
        raise ShardError(f"duplicate (source, source_id) in the input: {dups[:3]}")

    groups: dict[tuple[str, str], list[PlannedSample]] = defaultdict(list)
    failed: dict[int, Record] = {}
    splits: dict[int, str] = {}
    # checked tar by tar: a released clip is looked up in its tar's member list, a cache of 64
    # tars, and the input (ledger) order interleaves the tars, so past 64 tars nearly every
    # lookup re-read a tar's headers (as the keep policy's release did: docs/scale.md)
    order = sorted(range(len(records)), key=lambda i: records[i].shard or "")
    prepared: list = [None] * len(records)
    with ThreadPoolExecutor(max(1, workers)) as pool:   # file checks (and hashes) are I/O
        for i, result in zip(order, pool.map(_prepare, order, [records[i] for i in order],
                                             [members_root] * len(order))):
            prepared[i] = result
    for i, (rec, (sample, bad)) in enumerate(zip(records, prepared)):
        if bad is not None:
            failed[i] = bad
            continue
        split = assign_split(rec.source, rec.source_id, seed, test_fraction)
        splits[i] = split
        groups[(rec.source, split)].append(sample)

    shards: list[PlannedShard] = []
    for (dataset, split) in sorted(groups):
        samples = sorted(groups[(dataset, split)], key=lambda s: _order_key(s.key, seed))
        current = PlannedShard(dataset, split, 0)
        payload = 0
        for s in samples:
            full = samples_per_shard is not None and len(current.samples) >= samples_per_shard
            too_big = shard_bytes is not None and _tar_bytes(payload + s.tar_bytes) > shard_bytes
            if current.samples and (full or too_big):
                shards.append(current)
                current = PlannedShard(dataset, split, current.number + 1)
                payload = 0
            current.samples.append(s)
            payload += s.tar_bytes
        shards.append(current)
    return shards, failed, splits
