"""WebDataset shards in LAION's layout, written deterministically and atomically; and their check.

Layout (see docs/shard-format.md)::

    <out>/<dataset>/<split>/0.tar, 1.tar, ...   KEY.flac immediately followed by KEY.json
    <out>/<dataset>/<split>/sizes.json          {"0.tar": 512, ...}  (what CLAP reads)
    <out>/<dataset>/<split>/index.json          per shard: samples, bytes, sha256, seconds
    <out>/<dataset>/<split>/.receipts/N.tar.json  what each finished tar holds (for resume)

Why it is built this way:

* **Split per id.** ``assign_split`` hashes ``(seed, source, source_id)``, so adding or removing
  other records never moves a sample between train and test (LAION's shuffle-then-cut did).
* **Order by a seeded hash of the key**, never by input order, so the same records give the same
  tars whatever order the ledger hands them in; another seed gives another order.
* **Byte-identical tars.** One tar format (USTAR), mtime 0, uid/gid 0, empty user/group names,
  fixed modes, sorted-key JSON.
* **Atomic.** A tar is built in a temporary file and published in one step (rename locally, one
  PUT on object storage). ``sizes.json`` is the commit marker of a split: it is removed before any
  tar of that split changes and written after all of them are complete, so a reader never sees a
  split whose tars disagree with it.
* **Resume.** After each tar a small receipt records the plan fingerprint of the tar (keys, JSON
  bytes, FLAC size and content hash). A rerun skips a tar whose receipt matches the new plan and whose
  size matches the receipt, and rewrites the rest; the result equals an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import soundfile as sf

from .ledger import fail
from .records import FailureCode, Record, Status, sample_key
from .storage import Root

log = logging.getLogger(__name__)

DEFAULT_SEED = 1234
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SAMPLES_PER_SHARD = 512    # LAION's make_tar.py default
SAMPLE_RATE = 48000                # what CLAP expects; it never resamples

SIZES_NAME = "sizes.json"
INDEX_NAME = "index.json"
RECEIPTS_DIR = ".receipts"
INDEX_FORMAT = "laion-audio-shard-index"
#: Bump when the bytes a given plan produces change (tar layout, JSON keys); old receipts then
#: no longer match and every tar is rewritten.
WRITER_VERSION = 1

READY_STATUSES = (Status.TRANSCODED, Status.CAPTIONED, Status.SHARDED)
STAGE = "shard"

_TAR_FORMAT = tarfile.USTAR_FORMAT
_BLOCK = tarfile.BLOCKSIZE            # 512
_RECORD = tarfile.RECORDSIZE          # 10240: tarfile pads the archive to a multiple of this
_MEMBER_MODE = 0o644
_SAFE_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHARD_NAME = re.compile(r"^(\d+)\.tar$")


class ShardError(RuntimeError):
    """The run cannot go on (bad arguments, an input changed under us, storage failure)."""


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


def _audio_id(record: Record, path: str) -> str:
    """The transcode stage's hash of the FLAC's PCM when the ledger has it (free); otherwise the
    SHA-256 of the file bytes (one extra read, for records that came without it)."""
    if record.audio_sha256:
        return f"pcm:{record.audio_sha256}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file:{h.hexdigest()}"


def _prepare(index: int, record: Record) -> tuple[PlannedSample | None, Record | None]:
    """Check one record and build its sample, or return it failed with a typed reason."""
    if not _SAFE_DIR.match(record.source) or ".." in record.source:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.BAD_METADATA,
                          f"source name {record.source!r} cannot be a shard folder name "
                          "(letters, digits, '.', '_', '-'; not starting with '.' or '-')")
    texts = [t for t in record.texts if isinstance(t, str) and t.strip()]
    if not texts:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.NO_CAPTION,
                          "no non-empty caption in texts")
    path = record.flac_path
    if not path:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.MISSING_FILE,
                          "flac_path is empty")
    try:
        st = os.stat(path)
        info = sf.info(path)
    except FileNotFoundError:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.MISSING_FILE,
                          f"FLAC not found: {path}")
    except Exception as exc:  # libsndfile reports unreadable files as generic errors
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.UNDECODABLE,
                          f"cannot read {path}: {exc}")
    if info.format != "FLAC" or info.samplerate != SAMPLE_RATE or info.channels != 1:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.UNDECODABLE,
                          f"{path} is {info.format} {info.samplerate} Hz {info.channels} ch; "
                          f"shards hold {SAMPLE_RATE} Hz mono FLAC")
    if info.frames <= 0:
        return None, fail(dataclasses.replace(record), STAGE, FailureCode.EMPTY_FILE,
                          f"{path} holds no samples")
    seconds = info.frames / info.samplerate
    key = sample_key(record.source, record.source_id)
    return PlannedSample(index=index, key=key, flac_path=path, flac_bytes=st.st_size,
                         flac_mtime_ns=st.st_mtime_ns, audio_id=_audio_id(record, path),
                         json_bytes=sample_json(record, texts, seconds), seconds=seconds), None


def plan_shards(records: list[Record], *, seed: int = DEFAULT_SEED,
                test_fraction: float = DEFAULT_TEST_FRACTION,
                samples_per_shard: int | None = None, shard_bytes: int | None = None,
                workers: int = 1,
                ) -> tuple[list[PlannedShard], dict[int, Record], dict[int, str]]:
    """Decide which sample goes into which tar. Returns the shards, the failed records (by input
    position) and each planned input position's split."""
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
    with ThreadPoolExecutor(max(1, workers)) as pool:   # file checks (and hashes) are I/O
        prepared = list(pool.map(_prepare, range(len(records)), records))
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


# ---------------------------------------------------------------------------- writing one tar
class _HashingWriter:
    """A write-only file that hashes and counts what goes through it (tarfile needs ``tell``)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.raw.write(data)
        self.sha.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write_tar(shard: PlannedShard, tmp: Path) -> dict:
    """Build the tar at ``tmp`` (fsynced) and return its index entry."""
    with open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w", format=_TAR_FORMAT) as tar:
            for s in shard.samples:
                with open(s.flac_path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_size != s.flac_bytes or st.st_mtime_ns != s.flac_mtime_ns:
                        raise ShardError(f"{s.flac_path} changed while sharding; rerun the command")
                    tar.addfile(_tarinfo(f"{s.key}.flac", s.flac_bytes), f)
                tar.addfile(_tarinfo(f"{s.key}.json", len(s.json_bytes)), io.BytesIO(s.json_bytes))
        raw.flush()
        os.fsync(raw.fileno())
    if out.count != shard.expected_bytes:   # our size arithmetic drives --shard-bytes: keep it honest
        raise ShardError(f"{shard.rel}: wrote {out.count} bytes, planned {shard.expected_bytes}")
    return _index_entry(shard, out.count, out.sha.hexdigest())


def _index_entry(shard: PlannedShard, nbytes: int, sha256: str) -> dict:
    return {"name": shard.name, "samples": len(shard.samples), "bytes": nbytes, "sha256": sha256,
            "seconds": round(shard.seconds, 6), "first_key": shard.samples[0].key,
            "last_key": shard.samples[-1].key, "plan": shard.fingerprint()}


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------- the run
class ShardRun(NamedTuple):
    """``records, report = write_shards(...)`` unpacks it."""

    records: list[Record]     # every input record, in input order: sharded or failed
    report: dict

    def lines(self) -> list[str]:
        r = self.report
        out = [f"shards -> {r['out']}  (seed {r['seed']}, test fraction {r['test_fraction']})"]
        for ds, splits in sorted(r["datasets"].items()):
            for split, s in sorted(splits.items()):
                out.append(f"  {ds}/{split}: {s['samples']} samples in {s['shards']} shards, "
                           f"{s['bytes'] / 1e6:.1f} MB, {s['seconds'] / 3600:.3f} h")
        t = r["totals"]
        fails = ", ".join(f"{k}={v}" for k, v in sorted(r["failed"].items())) or "none"
        out.append(f"  total: {t['inputs']} in = {t['samples']} sharded + {t['failed']} failed "
                   f"({fails}); {t['shards']} shards ({r['shards_written']} written, "
                   f"{r['shards_kept']} already complete, {r['stale_removed']} stale removed); "
                   f"{t['bytes'] / 1e6:.1f} MB, {t['seconds'] / 3600:.3f} h; {r['wall_seconds']:.1f}s")
        return out


def _staging_dir(root: Root) -> Path:
    """Where remote tars are built. One folder per output root, so a rerun finds and clears
    what a killed run left there."""
    tag = hashlib.sha256(root.url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"laion-audio-shards-{tag}"


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def _ours(root: Root, d: str) -> bool:
    """Only a split whose index this writer made may be deleted (never LAION's own shards)."""
    raw = root.read_bytes(f"{d}/{INDEX_NAME}")
    try:
        return bool(raw) and json.loads(raw).get("format") == INDEX_FORMAT
    except (ValueError, AttributeError):
        return False


def _retire_split(root: Root, d: str) -> int:
    """Delete one of our splits: sizes.json first (readers stop seeing it), then the rest."""
    root.remove(f"{d}/{SIZES_NAME}")
    root.remove(f"{d}/{INDEX_NAME}")
    for folder in (f"{d}/{RECEIPTS_DIR}", d):
        for name in root.listdir(folder):
            if _SHARD_NAME.match(name) or name.endswith(".tar.json"):
                root.remove(f"{folder}/{name}")
        if root.is_local:
            try:
                os.rmdir(folder)          # only when empty: anything else there is not ours
            except OSError:
                pass
    return 1


def write_shards(records: Iterable[Record], out: str | os.PathLike, *, seed: int = DEFAULT_SEED,
                 test_fraction: float = DEFAULT_TEST_FRACTION,
                 samples_per_shard: int | None = None, shard_bytes: int | None = None,
                 workers: int = 1, storage_options: dict | None = None) -> ShardRun:
    """Write ready records into LAION-layout shards under ``out`` (a folder or ``s3://...``).

    Every dataset/split present in ``records`` is (re)written as a whole; tars that already hold
    exactly what the plan asks for are kept. Returns the records with ``split``, ``shard`` and
    ``status=sharded`` (or failed, with a typed reason) and a report."""
    t0 = time.monotonic()
    records = list(records)
    root = Root(out, storage_options)
    shards, failed, splits = plan_shards(records, seed=seed, test_fraction=test_fraction,
                                         samples_per_shard=samples_per_shard,
                                         shard_bytes=shard_bytes, workers=workers)
    staging = None
    if not root.is_local:
        staging = _staging_dir(root)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

    by_split: dict[tuple[str, str], list[PlannedShard]] = defaultdict(list)
    for s in shards:
        by_split[(s.dataset, s.split)].append(s)

    def split_dir(ds: str, split: str) -> str:
        return root.join(ds, split)

    # Splits this writer made earlier that the plan no longer has (e.g. --test-fraction 0 now):
    # retire them, so no sizes.json disagrees with the ledger.
    retired = 0
    for ds in sorted({s.dataset for s in shards}):
        for split in root.listdir(root.join(ds)):
            if (ds, split) not in by_split and _ours(root, split_dir(ds, split)):
                retired += _retire_split(root, split_dir(ds, split))

    # Decide per tar: keep (receipt matches plan and size) or write; find tars (and receipts)
    # numbered past the plan, which a bigger earlier plan left behind.
    todo: list[PlannedShard] = []
    stale: list[str] = []
    entries: dict[str, dict] = {}
    for (ds, split), group in by_split.items():
        d = split_dir(ds, split)
        if root.is_local:
            Path(d).mkdir(parents=True, exist_ok=True)
            for folder in (d, f"{d}/{RECEIPTS_DIR}"):
                for name in root.listdir(folder):
                    if _is_temp_name(name):       # left by a killed run
                        root.remove(f"{folder}/{name}")
        changing = False
        for shard in group:
            receipt_raw = root.read_bytes(f"{d}/{RECEIPTS_DIR}/{shard.name}.json")
            receipt = json.loads(receipt_raw) if receipt_raw else None
            if (receipt and receipt.get("plan") == shard.fingerprint()
                    and root.size(f"{d}/{shard.name}") == receipt.get("bytes")):
                entries[shard.rel] = receipt
            else:
                todo.append(shard)
                changing = True
        for folder, suffix in ((d, ".tar"), (f"{d}/{RECEIPTS_DIR}", ".tar.json")):
            for name in root.listdir(folder):
                number = name[: -len(suffix)] if name.endswith(suffix) else ""
                if number.isdigit() and int(number) >= len(group):
                    stale.append(f"{folder}/{name}")
                    changing = True
        if changing:     # hide the split from readers until it is consistent again
            root.remove(f"{d}/{SIZES_NAME}")
            root.remove(f"{d}/{INDEX_NAME}")
    for path in stale:
        root.remove(path)

    def write_one(shard: PlannedShard) -> dict:
        d = split_dir(shard.dataset, shard.split)
        receipt_path = f"{d}/{RECEIPTS_DIR}/{shard.name}.json"
        root.remove(receipt_path)     # the old receipt must never vouch for the new bytes
        tmp_dir = Path(d) if root.is_local else staging
        tmp = tmp_dir / f".{shard.dataset}.{shard.split}.{shard.name}.tmp-{os.getpid()}"
        try:
            entry = _write_tar(shard, tmp)
            root.commit_file(tmp, f"{d}/{shard.name}")
        finally:
            tmp.unlink(missing_ok=True)
        root.write_bytes_atomic(receipt_path, _dumps(entry))
        return entry

    if todo:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for shard, entry in zip(todo, pool.map(write_one, todo)):
                entries[shard.rel] = entry

    # Commit each split: index first, sizes.json last.
    for (ds, split), group in by_split.items():
        d = split_dir(ds, split)
        shard_entries = [entries[s.rel] for s in group]
        index = {"format": INDEX_FORMAT, "version": WRITER_VERSION, "dataset": ds, "split": split,
                 "seed": seed, "test_fraction": test_fraction, "sample_rate": SAMPLE_RATE,
                 "samples": sum(e["samples"] for e in shard_entries),
                 "bytes": sum(e["bytes"] for e in shard_entries),
                 "seconds": round(sum(e["seconds"] for e in shard_entries), 6),
                 "shards": shard_entries}
        root.write_bytes_atomic(f"{d}/{INDEX_NAME}", _dumps(index))
        root.write_bytes_atomic(f"{d}/{SIZES_NAME}",
                                _dumps({e["name"]: e["samples"] for e in shard_entries}))
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)

    # Records out, in input order.
    shard_of: dict[int, PlannedShard] = {s.index: sh for sh in shards for s in sh.samples}
    out_records: list[Record] = []
    for i, rec in enumerate(records):
        if i in failed:
            bad = failed[i]
            bad.split, bad.shard = "", ""
            out_records.append(bad)
            continue
        sh = shard_of[i]
        out_records.append(dataclasses.replace(
            rec, split=splits[i], shard=sh.rel, status=Status.SHARDED,
            failure_stage="", failure_code="", failure_message=""))

    datasets: dict[str, dict[str, dict]] = defaultdict(dict)
    for (ds, split), group in sorted(by_split.items()):
        es = [entries[s.rel] for s in group]
        datasets[ds][split] = {"samples": sum(e["samples"] for e in es), "shards": len(es),
                               "bytes": sum(e["bytes"] for e in es),
                               "seconds": round(sum(e["seconds"] for e in es), 3)}
    flat = [v for splits_ in datasets.values() for v in splits_.values()]
    report = {
        "out": root.url, "seed": seed, "test_fraction": test_fraction,
        "samples_per_shard": samples_per_shard, "shard_bytes": shard_bytes,
        "datasets": dict(datasets),
        "totals": {"inputs": len(records), "samples": sum(v["samples"] for v in flat),
                   "failed": len(failed), "shards": sum(v["shards"] for v in flat),
                   "bytes": sum(v["bytes"] for v in flat),
                   "seconds": round(sum(v["seconds"] for v in flat), 3)},
        "failed": dict(Counter(r.failure_code for r in failed.values())),
        "shards_written": len(todo), "shards_kept": len(shards) - len(todo),
        "stale_removed": sum(p.endswith(".tar") for p in stale), "splits_retired": retired,
        "wall_seconds": round(time.monotonic() - t0, 3),
    }
    return ShardRun(out_records, report)


# ---------------------------------------------------------------------------- verify
class _HashingReader:
    """A read-only stream that hashes and counts every byte read from it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _check_text(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "'text' is an empty string"
    if isinstance(value, list):
        if not value:
            return "'text' is an empty list"
        if not all(isinstance(t, str) and t.strip() for t in value):
            return "'text' holds a non-string or empty caption"
        return None
    return "'text' is missing" if value is None else f"'text' is a {type(value).__name__}"


def _check_sample(key: str, members: dict[str, bytes]) -> tuple[float, list[str]]:
    problems = []
    seconds = 0.0
    for ext in ("flac", "json"):
        if ext not in members:
            problems.append(f"sample {key}: no .{ext} member next to the others")
    if "flac" in members:
        try:
            data, sr = sf.read(io.BytesIO(members["flac"]), dtype="float32", always_2d=True)
            if sr != SAMPLE_RATE or data.shape[1] != 1:
                problems.append(f"sample {key}: FLAC is {sr} Hz {data.shape[1]} ch, "
                                f"not {SAMPLE_RATE} Hz mono")
            if data.shape[0] == 0:
                problems.append(f"sample {key}: FLAC holds no samples")
            seconds = data.shape[0] / sr
        except Exception as exc:
            problems.append(f"sample {key}: FLAC does not decode: {exc}")
    if "json" in members:
        try:
            doc = json.loads(members["json"].decode("utf-8"))
        except Exception as exc:
            problems.append(f"sample {key}: JSON does not parse: {exc}")
        else:
            if not isinstance(doc, dict):
                problems.append(f"sample {key}: JSON is not an object")
            else:
                bad = _check_text(doc.get("text"))
                if bad:
                    problems.append(f"sample {key}: {bad}")
                if "tag" in doc and not isinstance(doc["tag"], list):
                    problems.append(f"sample {key}: 'tag' is not a list")
                if "flac" in members and seconds > 0:
                    problems.extend(_check_promised_length(key, doc, seconds))
    return seconds, problems


#: a sample may end this much before the window its record promised (codec granularity)
WINDOW_SLACK_SECONDS = 0.5


def _check_promised_length(key: str, doc: dict, seconds: float) -> list[str]:
    """What a shard can know about length: its own JSON ``duration`` (written from the FLAC)
    and, for windowed sources (AudioSet), ``original_data`` start/end seconds. A sample cut
    off in transit decodes fine but is shorter than both promised."""
    out = []
    stated = doc.get("duration")
    if isinstance(stated, (int, float)) and abs(float(stated) - seconds) > 0.01:
        out.append(f"sample {key}: JSON duration {float(stated):.3f} s, FLAC holds {seconds:.3f} s")
    od = doc.get("original_data")
    if isinstance(od, dict):
        start, end = od.get("start_seconds"), od.get("end_seconds")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start:
            window = float(end) - float(start)
            if seconds < window - WINDOW_SLACK_SECONDS:
                out.append(f"sample {key}: holds {seconds:.3f} s of the {window:.3f} s window "
                           "its record promised (cut off?)")
    return out


def _verify_tar(root: Root, path: str) -> dict:
    """Stream one tar once: hash its bytes, group members into samples, decode every sample."""
    problems: list[str] = []
    keys: list[str] = []
    seconds = 0.0
    seen: set[str] = set()
    current_key, members = None, {}

    def close_sample():
        nonlocal seconds
        if current_key is None:
            return
        s, p = _check_sample(current_key, members)
        seconds += s
        problems.extend(p)
        keys.append(current_key)

    with root.open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = _member_key(info.name)
                    if key != current_key:
                        close_sample()
                        if key in seen:
                            problems.append(f"sample {key}: members are not adjacent "
                                            "(key appears twice)")
                        seen.add(key)
                        current_key, members = key, {}
                    if ext in members:
                        problems.append(f"sample {key}: duplicate member {info.name}")
                    members[ext] = tar.extractfile(info).read()
                close_sample()
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"tar is damaged: {exc}")
        reader.drain()
    return {"samples": len(keys), "bytes": reader.count, "sha256": reader.sha.hexdigest(),
            "seconds": seconds, "keys": keys, "problems": problems}


@dataclass
class VerifyReport:
    out: str
    splits: dict[str, dict] = field(default_factory=dict)   # "ds/split" -> counts
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def totals(self) -> dict:
        keys = ("shards", "samples", "bytes", "seconds")
        return {k: sum(s[k] for s in self.splits.values()) for k in keys}

    def as_dict(self) -> dict:
        return {"out": self.out, "ok": self.ok, "splits": self.splits, "totals": self.totals,
                "problems": self.problems, "notes": self.notes}

    def lines(self) -> list[str]:
        out = [f"verify {self.out}"]
        for name, s in sorted(self.splits.items()):
            out.append(f"  {name}: {s['samples']} samples in {s['shards']} shards, "
                       f"{s['bytes'] / 1e6:.1f} MB, {s['seconds'] / 3600:.3f} h"
                       + ("" if s["indexed"] else "  (no index.json: checksums not checked)"))
        t = self.totals
        out.append(f"  total: {t['samples']} samples, {t['shards']} shards, "
                   f"{t['bytes'] / 1e6:.1f} MB, {t['seconds'] / 3600:.3f} h")
        out += [f"  note: {n}" for n in self.notes]
        if self.ok:
            out.append("  OK: every sample decodes; sizes.json and index agree with the tars")
        else:
            out.append(f"  {len(self.problems)} PROBLEMS:")
            out += [f"    {p}" for p in self.problems]
        return out


def verify(out: str | os.PathLike, *, workers: int = 2,
           storage_options: dict | None = None) -> VerifyReport:
    """Check every split under ``out`` (ours or LAION's layout): sizes.json lists exactly the tars
    present with the right counts; the index (when present) matches bytes, sha256 and seconds;
    every FLAC decodes as 48 kHz mono and every JSON has a non-empty ``text``; a sample's members
    are adjacent and keys are unique within a split. Problems are collected, never raised."""
    root = Root(out, storage_options)
    report = VerifyReport(root.url)
    if not root.exists(root.path):
        report.problems.append(f"{root.url} does not exist")
        return report
    split_dirs = sorted(p.rsplit("/", 1)[0] for p in root.find(SIZES_NAME))
    if not split_dirs:
        report.problems.append(f"no {SIZES_NAME} under {root.url}: not a shard folder")
    if not root.is_local:
        root.fs.invalidate_cache()
    all_files = root.fs.find(root.path)
    for path in all_files:
        folder, _, name = path.rpartition("/")
        if _is_temp_name(name):
            report.problems.append(f"{root.display(path)}: temporary file left by an unfinished run")
        elif name.endswith(".tar") and folder not in split_dirs \
                and not folder.endswith("/" + RECEIPTS_DIR):
            report.problems.append(f"{root.display(path)}: tar in a folder without {SIZES_NAME} "
                                   "(CLAP never reads it)")

    jobs: list[tuple[str, str]] = []      # (split dir, tar name)
    sizes_of: dict[str, dict] = {}
    index_of: dict[str, dict | None] = {}
    for d in split_dirs:
        shown = root.display(d)
        try:
            sizes = json.loads(root.read_bytes(f"{d}/{SIZES_NAME}"))
            if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
                raise ValueError("not an object of shard name -> integer")
        except Exception as exc:
            report.problems.append(f"{shown}/{SIZES_NAME}: unreadable: {exc}")
            continue
        sizes_of[d] = sizes
        raw_index = root.read_bytes(f"{d}/{INDEX_NAME}")
        index = None
        if raw_index is not None:
            try:
                index = json.loads(raw_index)
                index["by_name"] = {e["name"]: e for e in index["shards"]}
            except Exception as exc:
                report.problems.append(f"{shown}/{INDEX_NAME}: unreadable: {exc}")
                index = None
        index_of[d] = index
        present = {n for n in root.listdir(d) if n.endswith(".tar")}
        for name in sorted(set(sizes) - present):
            report.problems.append(f"{shown}/{name}: listed in {SIZES_NAME} but missing")
        for name in sorted(present - set(sizes)):
            report.problems.append(f"{shown}/{name}: not listed in {SIZES_NAME} (CLAP never reads it)")
        if index is not None:
            if set(index["by_name"]) != set(sizes):
                report.problems.append(f"{shown}: {INDEX_NAME} and {SIZES_NAME} list different shards")
            total = sum(e.get("samples", 0) for e in index["shards"])
            if index.get("samples") != total:
                report.problems.append(f"{shown}/{INDEX_NAME}: total samples {index.get('samples')} "
                                       f"!= sum over shards {total}")
        jobs += [(d, name) for name in sorted(set(sizes) & present, key=_shard_sort_key)]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda job: _verify_tar(root, f"{job[0]}/{job[1]}"), jobs))

    keys_of: dict[str, Counter] = defaultdict(Counter)
    for d in sizes_of:
        report.splits[_split_name(root, d)] = {"shards": 0, "samples": 0, "bytes": 0,
                                               "seconds": 0.0, "indexed": index_of[d] is not None}
    for (d, name), res in zip(jobs, results):
        shown = f"{root.display(d)}/{name}"
        split = report.splits[_split_name(root, d)]
        split["shards"] += 1
        split["samples"] += res["samples"]
        split["bytes"] += res["bytes"]
        split["seconds"] = round(split["seconds"] + res["seconds"], 6)
        keys_of[d].update(k.rsplit("/", 1)[-1] for k in res["keys"])
        report.problems += [f"{shown}: {p}" for p in res["problems"]]
        if res["samples"] != sizes_of[d][name]:
            report.problems.append(f"{shown}: holds {res['samples']} samples, "
                                   f"{SIZES_NAME} says {sizes_of[d][name]}")
        entry = (index_of[d] or {}).get("by_name", {}).get(name)
        if entry is not None:
            for k in ("samples", "bytes", "sha256"):
                if entry.get(k) != res[k]:
                    report.problems.append(f"{shown}: {k} is {res[k]}, {INDEX_NAME} says {entry.get(k)}")
            if abs(float(entry.get("seconds", -1)) - res["seconds"]) > 1e-3:
                report.problems.append(f"{shown}: holds {res['seconds']:.3f} s of audio, "
                                       f"{INDEX_NAME} says {entry.get('seconds')}")
    for d, counts in keys_of.items():
        dups = [k for k, n in counts.items() if n > 1]
        if dups:
            report.problems.append(f"{root.display(d)}: {len(dups)} sample names occur more than "
                                   f"once in the split, e.g. {dups[:3]}")
    if any(not s["indexed"] for s in report.splits.values()):
        report.notes.append(f"splits without {INDEX_NAME} (LAION's own layout) were checked "
                            "against sizes.json only")
    return report


def _shard_sort_key(name: str) -> tuple[int, str]:
    m = _SHARD_NAME.match(name)
    return (int(m.group(1)) if m else 1 << 62, name)


def _split_name(root: Root, d: str) -> str:
    rel = d[len(root.path):].strip("/")
    return rel or "."
