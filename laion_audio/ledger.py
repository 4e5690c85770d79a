"""The ledger: a Parquet manifest keyed by ``(source, source_id)``; resume state and audit trail.

Layout of a ledger directory::

    ledger.parquet          compacted rows, sorted by key (deterministic bytes)
    journal/00000001-transcode.parquet   full rows written since the last compaction
    LOCK                    held by the one process that writes this ledger

Stages never edit rows in place. The driver appends each finished batch as a journal file
(written under a temporary name, then renamed), so a kill -9 loses at most the batch in flight
and a rerun sees every batch that finished. Reading applies "last row per key wins" over the
base and the journal in order; :meth:`Ledger.compact` folds the journal into the base.
Rows carry no timestamps, so an interrupted-and-resumed run compacts to the same bytes as an
uninterrupted one.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .records import COLUMNS, KEY, SCHEMA, SCHEMA_VERSION, Record, Status, records_to_table

#: Fields a crawler owns. A re-crawl that changes any of these marks the record "changed".
SOURCE_FIELDS = ("url", "title", "description", "tags", "license", "author", "duration",
                 "original_data", "trim_start", "trim_end")


class LedgerError(RuntimeError):
    pass


@dataclass
class UpsertResult:
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    audio_changed: list[tuple[str, str]] = field(default_factory=list)  # subset of changed
    unchanged: int = 0

    def summary(self) -> dict:
        return {"added": len(self.added), "changed": len(self.changed),
                "audio_changed": len(self.audio_changed), "unchanged": self.unchanged}


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _joined_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("source"), table.column("source_id"), "\x00")


def _check_version(schema: pa.Schema, path: Path) -> None:
    meta = schema.metadata or {}
    version = int(meta.get(b"laion_audio_schema_version", b"0"))
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{path} was written by a newer laion-audio (schema v{version}, "
                          f"this one reads up to v{SCHEMA_VERSION}); upgrade laion-audio")


def _conform(table: pa.Table) -> pa.Table:
    """Bring an older-version table to the current schema (missing columns become null)."""
    if table.column_names == list(SCHEMA.names):
        return table.cast(SCHEMA)  # Parquet names list items "element", Arrow "item"
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


class Ledger:
    """One writer at a time (a lock file); any number of readers."""

    def __init__(self, root: str | os.PathLike, *, lock: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "journal").mkdir(exist_ok=True)
        self.base_path = self.root / "ledger.parquet"
        self._lock_fd = None
        if lock:
            self._lock_fd = os.open(self.root / "LOCK", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise LedgerError(f"another laion-audio process is writing {self.root}")
            # the writer is us: temp files left by a killed writer are garbage
            for stale in [*self.root.glob(".*.tmp-*"), *(self.root / "journal").glob(".*.tmp-*")]:
                stale.unlink(missing_ok=True)
        self._cache: pa.Table | None = None
        self._sorted = False

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _journal_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "journal").glob("*.parquet") if not p.name.startswith("."))

    def _view(self) -> pa.Table:
        """The current rows in no particular order (cheap)."""
        if self._cache is None:
            self._cache = self._load()
        return self._cache

    def table(self) -> pa.Table:
        """The current rows (last write per key wins), sorted by key."""
        self._view()
        if not self._sorted:
            self._cache = self._cache.sort_by([(k, "ascending") for k in KEY])
            self._sorted = True
        return self._cache

    def _load(self) -> pa.Table:
        parts = []
        for path in ([self.base_path] if self.base_path.exists() else []) + self._journal_files():
            t = pq.read_table(path)
            _check_version(t.schema, path)
            parts.append(_conform(t).replace_schema_metadata(SCHEMA.metadata))
        if not parts:
            return SCHEMA.empty_table()
        full = pa.concat_tables(parts)
        if len(parts) > 1:
            seq = pa.array(range(len(full)), pa.int64())
            full = full.append_column("_seq", seq)
            last = full.group_by(list(KEY)).aggregate([("_seq", "max")])
            full = full.filter(pc.is_in(full.column("_seq"), value_set=last.column("_seq_max")))
            full = full.drop_columns(["_seq"])
        self._sorted = False
        return full

    def _apply(self, new: pa.Table) -> None:
        """Fold freshly written rows into the in-memory view (no re-read of the journal)."""
        if self._cache is None:
            return
        stale = pc.is_in(_joined_keys(self._cache), value_set=_joined_keys(new))
        self._cache = pa.concat_tables([self._cache.filter(pc.invert(stale)), new])
        self._sorted = False

    def __len__(self) -> int:
        return len(self.table())

    def records(self, *, status: str | Iterable[str] | None = None,
                source: str | None = None) -> list[Record]:
        return [Record.from_row(r) for r in self.select(status=status, source=source).to_pylist()]

    def select(self, *, status: str | Iterable[str] | None = None,
               source: str | Iterable[str] | None = None) -> pa.Table:
        t = self.table()
        mask = None
        for col, want in (("status", status), ("source", source)):
            if want is None:
                continue
            values = [want] if isinstance(want, str) else list(want)
            m = pc.is_in(t.column(col), value_set=pa.array(values, pa.string()))
            mask = m if mask is None else pc.and_(mask, m)
        return t if mask is None else t.filter(mask)

    def get(self, source: str, source_id: str) -> Record | None:
        t = self.table()
        m = pc.and_(pc.equal(t.column("source"), source), pc.equal(t.column("source_id"), source_id))
        rows = t.filter(m).to_pylist()
        return Record.from_row(rows[0]) if rows else None

    def iter_batches(self, records: list[Record], batch_size: int) -> Iterator[list[Record]]:
        for i in range(0, len(records), batch_size):
            yield records[i:i + batch_size]

    def status_counts(self, source: str | None = None) -> dict[str, int]:
        t = self.select(source=source)
        return dict(Counter(t.column("status").to_pylist()))

    def failure_counts(self) -> dict[str, int]:
        t = self.select(status=Status.FAILED)
        pairs = zip(t.column("failure_stage").to_pylist(), t.column("failure_code").to_pylist())
        return dict(Counter(f"{s}:{c}" for s, c in pairs))

    # ------------------------------------------------------------------ writing
    def write(self, records: Iterable[Record], tag: str = "update") -> int:
        """Append full rows to the journal (one atomic file). Returns the number written."""
        records = list(records)
        if not records:
            return 0
        keys = [r.key for r in records]
        if len(set(keys)) != len(keys):
            dup = [k for k, n in Counter(keys).items() if n > 1][:3]
            raise LedgerError(f"duplicate keys in one ledger write: {dup}")
        table = records_to_table(records)
        files = self._journal_files()
        seq = int(files[-1].name.split("-", 1)[0]) + 1 if files else 1
        safe_tag = "".join(c if c.isalnum() else "_" for c in tag)[:40]
        _write_atomic(table, self.root / "journal" / f"{seq:08d}-{safe_tag}.parquet")
        self._apply(table)
        return len(records)

    def upsert(self, records: Iterable[Record], tag: str = "crawl") -> UpsertResult:
        """Add new records; for known keys update the source fields when they changed.

        A change of ``url`` or of the trim window means the audio must be fetched again (status
        back to ``new``); a metadata-only change keeps the audio and sends the record back to
        captioning. Vanished records that reappear are revived.
        """
        result = UpsertResult()
        records = list(records)
        existing = {}
        t = self._view()
        if len(t) and records:
            wanted = pa.array([f"{r.source}\x00{r.source_id}" for r in records], pa.string())
            for row in t.filter(pc.is_in(_joined_keys(t), value_set=wanted)).to_pylist():
                existing[(row["source"], row["source_id"])] = row
        out: dict[tuple[str, str], Record] = {}
        for rec in records:
            if rec.key in out:   # same id listed twice by a source (Epidemic categories): first wins
                continue
            old = existing.get(rec.key)
            if old is None:
                out[rec.key] = rec
                result.added.append(rec.key)
                continue
            new_row = rec.to_row()
            diff = [f for f in SOURCE_FIELDS if new_row[f] != old[f]]
            revived = old["status"] == Status.VANISHED
            if not diff and not revived:
                result.unchanged += 1
                continue
            merged = Record.from_row(old)
            for f in SOURCE_FIELDS:
                setattr(merged, f, getattr(rec, f))
            merged.texts = rec.texts
            merged.caption_provenance = rec.caption_provenance
            audio_changed = revived or any(f in ("url", "trim_start", "trim_end") for f in diff)
            if audio_changed:
                merged.status = Status.NEW
                merged.audio_path = merged.flac_path = merged.audio_sha256 = ""
                merged.failure_stage = merged.failure_code = merged.failure_message = ""
                result.audio_changed.append(rec.key)
            elif Status.reached(merged.status, Status.TRANSCODED):
                merged.status = Status.TRANSCODED  # captions are rebuilt, audio kept
            out[rec.key] = merged
            result.changed.append(rec.key)
        self.write(out.values(), tag=tag)
        return result

    def mark_vanished(self, source: str, present_ids: Iterable[str]) -> list[str]:
        """Mark records of ``source`` that a full re-crawl did not list (kept, not deleted)."""
        present = set(present_ids)
        gone = [r for r in self.records(source=source)
                if r.source_id not in present and r.status != Status.VANISHED]
        for r in gone:
            r.status = Status.VANISHED
        self.write(gone, tag=f"vanished_{source}")
        return [r.source_id for r in gone]

    def compact(self) -> None:
        """Fold the journal into ``ledger.parquet`` (atomic; safe to interrupt and redo)."""
        files = self._journal_files()
        if not files and self.base_path.exists():
            return
        _write_atomic(self.table().combine_chunks(), self.base_path)
        for p in files:
            p.unlink(missing_ok=True)


def fail(record: Record, stage: str, code: str, message: str) -> Record:
    """Mark one record failed at ``stage`` (message trimmed so a ledger row stays small)."""
    record.status = Status.FAILED
    record.failure_stage = stage
    record.failure_code = code
    record.failure_message = message[:500]
    return record


@dataclass
class StageStats:
    """Accounting for one stage run: inputs = successes + failures + dropped (+ skipped,
    already done). A record a filter dropped (eval overlap, duplicate) is not a failure, so it
    has its own count; its reason is still listed under ``failures`` as ``dropped:<reason>``."""

    stage: str
    inputs: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    dropped: int = 0

    def add(self, before: Record, after: Record) -> None:
        self.inputs += 1
        if after.status == Status.FAILED:
            self.failed += 1
            self.failures[after.failure_code] += 1
        elif after.status == Status.DROPPED:
            self.dropped += 1
            self.failures[f"dropped:{after.filter_reason}"] += 1
        else:
            self.succeeded += 1

    @property
    def closes(self) -> bool:
        return self.inputs == self.succeeded + self.failed + self.dropped

    def as_dict(self) -> dict:
        return {"stage": self.stage, "inputs": self.inputs, "succeeded": self.succeeded,
                "failed": self.failed, "dropped": self.dropped,
                "skipped_already_done": self.skipped,
                "failures": dict(self.failures), "seconds": round(self.seconds, 3),
                "accounting_closes": self.closes, **self.extra}

    def line(self) -> str:
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        dropped = f" + {self.dropped} dropped" if self.dropped else ""
        return (f"{self.stage}: {self.inputs} in = {self.succeeded} ok + {self.failed} failed"
                f"{dropped} ({fails}); {self.skipped} already done; {self.seconds:.1f}s"
                + ("" if self.closes else "  ACCOUNTING DOES NOT CLOSE"))


def write_stats(path: Path, stats: list[StageStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([s.as_dict() for s in stats], indent=2))
    os.replace(tmp, path)
