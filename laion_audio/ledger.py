"""The ledger: a Parquet manifest keyed by ``(source, source_id)``; resume state and audit trail.

Layout (``W/ledger`` holds nothing but Parquet, so pandas, DuckDB and polars can read the folder)::

    W/ledger/ledger.parquet           compacted rows, sorted by key (deterministic bytes)
    W/ledger.journal/00000001-transcode.parquet   batches written since the last compaction
    W/ledger.journal/LOCK             held by the one process that writes this ledger

Stages never edit rows in place. The driver appends each finished batch as a journal file
(written under a temporary name, then renamed), so a kill -9 loses at most the batch in flight
and a rerun sees every batch that finished. "Last row per key wins" over the base and the
journal in order; :meth:`Ledger.compact` folds the journal into the base. Rows carry no
timestamps, so an interrupted-and-resumed run compacts to the same bytes as an uninterrupted one.

Cost: the writer keeps an index in memory (per key: status, a hash of the source fields, and
where its current row lives), so upsert, mark and write are O(batch) whatever the ledger's
size. Every journal file is sorted by key; once ``FOLD_FANIN`` files of one size class pile up
they are merged into one (a log-structured merge), so a row is rewritten O(log n) times and the
journal holds O(log n) files. Reads, folds and compaction are streaming k-way merges of the
sorted files, a row group at a time: memory stays bounded, no row becomes a Python object.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic
from .records import (JSON_FIELDS, KEY, FailureCode, REQUIRED_FIELDS, SCHEMA, SCHEMA_VERSION, Record, Status,
                      records_to_table)

#: Fields a crawler owns. A re-crawl that changes any of these marks the record "changed".
SOURCE_FIELDS = ("url", "title", "description", "tags", "license", "author", "duration",
                 "original_data", "trim_start", "trim_end")

#: Rows per Parquet row group in every file the ledger writes (fixed: compaction output bytes
#: depend only on the rows) and rows per chunk when reading.
ROW_GROUP = 4096
#: A journal file's size class is log_FOLD_FANIN(rows / FOLD_UNIT); FOLD_FANIN files of one
#: class at the end of the journal are merged into one file of the next class.
FOLD_FANIN = 8
FOLD_UNIT = 512
#: journal files are rewritten a few times before compaction: fast codec there, zstd in the base
JOURNAL_COMPRESSION = "lz4"
_SEP = "\x00"


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


def journal_dir(root: str | os.PathLike) -> Path:
    """Where a ledger folder's journal and lock live: beside it, so that a Parquet reader
    pointed at the folder sees only the compacted rows (DuckDB and polars read every
    ``*.parquet`` below a folder, hidden or not)."""
    root = Path(root)
    return root.with_name(root.name + ".journal")


def _joined_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("source"), table.column("source_id"), _SEP)


def _check_version(schema: pa.Schema, path: Path) -> None:
    meta = schema.metadata or {}
    version = int(meta.get(b"laion_audio_schema_version", b"0"))
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{path} was written by a newer laion-audio (schema v{version}, "
                          f"this one reads up to v{SCHEMA_VERSION}); upgrade laion-audio")


def _conform(table: pa.Table) -> pa.Table:
    """Bring an older-version table to the current schema (missing columns become null)."""
    if table.column_names == list(SCHEMA.names):
        return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(table.columns, SCHEMA)],
                                    schema=SCHEMA)  # Parquet names list items "element"
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _conform_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    """``table`` as ``columns`` of the current schema (missing ones null)."""
    cols = []
    for name in columns:
        f = SCHEMA.field(name)
        cols.append(table.column(name).cast(f.type) if name in table.column_names
                    else pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=pa.schema([SCHEMA.field(c) for c in columns]))


def _nulls_for_empty(table: pa.Table) -> pa.Table:
    """Empty optional fields ("", [], "{}") become null, as pandas/DuckDB/polars users expect."""
    cols = []
    for f, col in zip(table.schema, table.columns):
        if f.name not in REQUIRED_FIELDS:
            if pa.types.is_string(f.type):
                empty = pc.equal(col, "{}") if f.name in JSON_FIELDS else pc.equal(col, "")
                if f.name in JSON_FIELDS:
                    empty = pc.or_(empty, pc.equal(col, ""))
                col = pc.if_else(empty, pa.scalar(None, f.type), col)
            elif pa.types.is_list(f.type):
                col = pc.if_else(pc.equal(pc.list_value_length(col), 0), pa.scalar(None, f.type), col)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=table.schema)


def _strictly_increasing(keys: pa.Array) -> bool:
    if len(keys) < 2:
        return True
    return pc.all(pc.greater(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py()


def _source_hashes(table: pa.Table) -> list[int]:
    """A hash of each row's source fields ("" and null alike), to tell a changed re-crawled
    record from an unchanged one without reading its old row. In memory only."""
    parts = []
    for name in SOURCE_FIELDS:
        col = table.column(name)
        if pa.types.is_list(col.type):
            col = pc.binary_join(col, "\x1e")
        elif not pa.types.is_string(col.type):
            col = pc.cast(col, pa.string())
        if name == "original_data":
            col = pc.if_else(pc.equal(col, "{}"), "", col)
        parts.append(pc.fill_null(col, ""))
    joined = pc.binary_join_element_wise(*parts, "\x1f")
    return [hash(s) for s in joined.to_pylist()]


class _Writer:
    """Writes sorted chunks as row groups of exactly ROW_GROUP rows (deterministic layout)."""

    def __init__(self, path: Path, compression: str = "zstd"):
        self.path = path
        self.writer = pq.ParquetWriter(path, SCHEMA, compression=compression)
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if not len(table):
            return
        self.pending.append(table)
        self.buffered += len(table)
        if self.buffered >= ROW_GROUP:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        t = pa.concat_tables(self.pending)
        n_full = len(t) // ROW_GROUP * ROW_GROUP
        cut = len(t) if final else n_full
        for i in range(0, cut, ROW_GROUP):
            self.writer.write_table(t.slice(i, min(ROW_GROUP, cut - i)), row_group_size=ROW_GROUP)
        rest = t.slice(cut)
        self.pending = [rest] if len(rest) else []
        self.buffered = len(rest)

    def close(self) -> None:
        self._flush(final=True)
        self.writer.close()


@dataclass
class _Run:
    """One sorted Parquet file of the ledger: the base or a journal file."""

    path: Path
    rows: int
    sorted: bool = True
    _file: pq.ParquetFile | None = None
    _starts: list[int] | None = None

    def file(self) -> pq.ParquetFile:
        if self._file is None:
            self._file = pq.ParquetFile(self.path)
            md = self._file.metadata
            starts, total = [], 0
            for i in range(md.num_row_groups):
                starts.append(total)
                total += md.row_group(i).num_rows
            self._starts = starts
        return self._file

    def group_of(self, row: int) -> tuple[int, int]:
        self.file()
        g = int(np.searchsorted(self._starts, row, side="right")) - 1
        return g, row - self._starts[g]


class Ledger:
    """One writer at a time (a lock file); any number of readers (``lock=False``)."""

    def __init__(self, root: str | os.PathLike, *, lock: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal_dir = journal_dir(self.root)
        self.base_path = self.root / "ledger.parquet"
        self._lock_fd = None
        if lock:
            self.journal_dir.mkdir(exist_ok=True)
            self._lock_fd = self._take_lock(self.journal_dir / "LOCK")
            try:
                self._migrate()
            except BaseException:
                self.close()
                raise
            for stale in self.journal_dir.glob(".*.tmp-*"):   # left by a killed writer
                stale.unlink(missing_ok=True)
        self._group_cache: OrderedDict = OrderedDict()
        for attempt in range(5):
            try:
                self._load()
                break
            except FileNotFoundError:   # a reader raced the writer folding its journal: list again
                if lock or attempt == 4:
                    raise

    def _take_lock(self, path: Path) -> int:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(f"another laion-audio process is writing {self.root}") from None
        return fd

    def _migrate(self) -> None:
        """Ledgers written before the journal moved out of the folder: their ``LOCK`` (held by
        an old writer? then refuse) and ``journal/`` move beside the folder."""
        old_lock = self.root / "LOCK"
        if old_lock.exists():
            fd = self._take_lock(old_lock)
            old_lock.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        old = self.root / "journal"
        if old.is_dir():
            for p in sorted(old.iterdir()):
                if p.name.endswith(".parquet") and not p.name.startswith("."):
                    atomic.publish(p, self.journal_dir / p.name)
                else:
                    p.unlink(missing_ok=True)
            old.rmdir()
        for stale in self.root.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ index
    def _journal_files(self) -> list[Path]:
        files = []
        for d in (self.root / "journal", self.journal_dir):   # the first: a legacy reader's view
            if d.is_dir():
                files += sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))
        return files

    def _load(self) -> None:
        self._keys: dict[str, int] = {}
        self._status_names: list[str] = []
        self._source_names: list[str] = []
        cap = 1024
        self._status = np.zeros(cap, np.int8)
        self._source = np.zeros(cap, np.int16)
        self._run = np.full(cap, -1, np.int32)
        self._row = np.zeros(cap, np.int64)
        self._hash = np.zeros(cap, np.int64)
        self._runs: dict[int, _Run] = {}
        self._alive_masks: dict[int, np.ndarray] = {}   # run id -> rows still current
        self._order: list[int] = []          # run ids, oldest first
        self._next_run = 0
        self._hashes_known = True
        self._seq = 0
        paths = ([self.base_path] if self.base_path.exists() else []) + self._journal_files()
        for path in paths:
            f = pq.ParquetFile(path)
            _check_version(f.schema_arrow, path)
            self._add_run(path, f.metadata.num_rows)
            if path.parent == self.journal_dir:
                self._seq = max(self._seq, int(path.name.split("-", 1)[0]))
        self._indexed = not paths

    def _ensure_index(self) -> None:
        """Build the key index (key and status columns of every file) on first need: a reader
        of a compacted ledger that only scans it never pays for it."""
        if self._indexed:
            return
        for run_id in list(self._order):
            run = self._runs[run_id]
            offset, last = 0, None
            for batch in run.file().iter_batches(batch_size=65536, columns=["source", "source_id", "status"]):
                t = pa.Table.from_batches([batch])
                keys = _joined_keys(t)
                if len(t) and (not _strictly_increasing(keys)
                               or (last is not None and keys[0].as_py() <= last)):
                    run.sorted = False   # written by an older laion-audio
                last = keys[-1].as_py() if len(t) else last
                self._index(t, run_id, offset)
                offset += len(t)
            if run.rows:
                self._hashes_known = False
        self._indexed = True

    def _add_run(self, path: Path, rows: int) -> int:
        run_id = self._next_run
        self._next_run += 1
        self._runs[run_id] = _Run(path, rows)
        self._alive_masks[run_id] = np.zeros(rows, bool)
        self._order.append(run_id)
        return run_id

    def _code(self, names: list[str], value: str) -> int:
        try:
            return names.index(value)
        except ValueError:
            names.append(value)
            return len(names) - 1

    def _slots(self, keys: list[str], *, create: bool) -> np.ndarray:
        """Index positions of ``keys`` (-1 for unknown ones unless ``create``)."""
        out = np.empty(len(keys), np.int64)
        index = self._keys
        for i, k in enumerate(keys):
            s = index.get(k)
            if s is None:
                if not create:
                    out[i] = -1
                    continue
                s = index[k] = len(index)
            out[i] = s
        n = len(index)
        if n > len(self._status):
            cap = max(n, 2 * len(self._status))
            for name in ("_status", "_source", "_run", "_row", "_hash"):
                old = getattr(self, name)
                new = np.full(cap, -1 if name == "_run" else 0, old.dtype)
                new[:len(old)] = old
                setattr(self, name, new)
        return out

    def _codes(self, names: list[str], column) -> np.ndarray:
        enc = pc.dictionary_encode(column).combine_chunks()
        lookup = np.array([self._code(names, v) for v in enc.dictionary.to_pylist()] or [0])
        return lookup[enc.indices.to_numpy(zero_copy_only=False)]

    def _index(self, t: pa.Table, run_id: int, offset: int, hashes: list[int] | None = None) -> np.ndarray:
        """Point the index at ``t``'s rows, which sit at ``offset...`` of run ``run_id``; the
        rows they replace are marked dead in their runs."""
        slots = self._slots(_joined_keys(t).to_pylist(), create=True)
        prev = self._run[slots]
        for r in np.unique(prev[prev >= 0]):
            self._alive_masks[int(r)][self._row[slots[prev == r]]] = False
        self._status[slots] = self._codes(self._status_names, t.column("status"))
        self._source[slots] = self._codes(self._source_names, t.column("source"))
        self._run[slots] = run_id
        self._row[slots] = np.arange(offset, offset + len(t), dtype=np.int64)
        self._alive_masks[run_id][offset:offset + len(t)] = True
        if hashes is not None:
            self._hash[slots] = hashes
        return slots

    def _ensure_hashes(self) -> None:
        """Hash the source fields of every current row (once, on the first re-crawl)."""
        self._ensure_index()
        if self._hashes_known:
            return
        for chunk in self._merge(self._order, columns=("source", "source_id") + SOURCE_FIELDS):
            slots = self._slots(_joined_keys(chunk).to_pylist(), create=False)
            self._hash[slots] = _source_hashes(chunk)
        self._hashes_known = True

    # ------------------------------------------------------------------ reading
    def _alive(self, run_id: int) -> np.ndarray:
        if not self._indexed:
            if self._order == [run_id] and self._runs[run_id].path == self.base_path:
                return np.ones(self._runs[run_id].rows, bool)   # a compacted ledger: all current
            self._ensure_index()
        return self._alive_masks[run_id]

    def _merge(self, run_ids: list[int], columns: Iterable[str] | None = None,
               chunk_rows: int = ROW_GROUP) -> Iterator[pa.Table]:
        """The current rows held by ``run_ids``, in key order, as tables of about
        ``chunk_rows`` rows: a k-way merge of the sorted runs, a row group of each in memory."""
        cols = list(columns) if columns is not None else None
        read_cols = None if cols is None else list(dict.fromkeys(list(KEY) + cols))
        cursors = []
        for run_id in run_ids:
            run = self._runs[run_id]
            if run.rows:
                cursors.append(self._cursor(run, self._alive(run_id), read_cols, chunk_rows))
        buffers: list[list] = [[None, None, c] for c in cursors]   # table, keys, iterator
        while True:
            live = []
            for b in buffers:
                while b[0] is None or not len(b[0]):
                    nxt = next(b[2], None)
                    if nxt is None:
                        b[0] = None
                        break
                    b[0], b[1] = nxt, _joined_keys(nxt)
                if b[0] is not None:
                    live.append(b)
            buffers = live
            if not buffers:
                return
            hi = min(b[1][-1].as_py() for b in buffers)
            parts = []
            for b in buffers:
                n = pc.sum(pc.less_equal(b[1], hi)).as_py() or 0
                if n:
                    parts.append(b[0].slice(0, n))
                    b[0], b[1] = b[0].slice(n), b[1].slice(n)
            out = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if len(parts) > 1:
                out = out.take(pc.sort_indices(_joined_keys(out)))
            yield out if cols is None else out.select(cols)

    def _cursor(self, run: _Run, alive: np.ndarray, columns, chunk_rows) -> Iterator[pa.Table]:
        f = run.file()
        _check_version(f.schema_arrow, run.path)
        wanted = None if columns is None else list(columns)
        fix = _conform if wanted is None else (lambda t: _conform_columns(t, wanted))
        if columns is not None:   # an older file may lack a column: read what it has
            columns = [c for c in columns if c in f.schema_arrow.names]
        if not run.sorted:   # a small legacy journal file: sort it in memory
            t = f.read(columns=columns).filter(pa.array(alive))
            t = t.take(pc.sort_indices(_joined_keys(t)))
            for i in range(0, len(t), chunk_rows):
                yield fix(t.slice(i, chunk_rows))
            return
        offset = 0
        for g in range(f.metadata.num_row_groups):   # a row group at a time: flat memory
            n = f.metadata.row_group(g).num_rows
            mask = alive[offset:offset + n]
            offset += n
            if not mask.any():
                continue
            group = f.read_row_group(g, columns=columns, use_threads=False)
            if not mask.all():
                group = group.filter(pa.array(mask))
            for i in range(0, len(group), chunk_rows):
                yield fix(group.slice(i, chunk_rows))

    def scan(self, *, status: str | Iterable[str] | None = None,
             source: str | Iterable[str] | None = None, columns: Iterable[str] | None = None,
             chunk_rows: int = ROW_GROUP) -> Iterator[pa.Table]:
        """The current rows (optionally only some statuses/sources/columns) in key order, as
        Arrow tables of about ``chunk_rows`` rows; memory bounded whatever the ledger's size."""
        cols = list(columns) if columns is not None else None
        need = None if cols is None else list(dict.fromkeys(cols + ["status", "source"]))
        wanted = {}
        for col, want in (("status", status), ("source", source)):
            if want is not None:
                wanted[col] = pa.array([want] if isinstance(want, str) else list(want), pa.string())
        if "status" in wanted and self._indexed and not self._any_status(wanted["status"].to_pylist()):
            return
        for t in self._merge(self._order, columns=need, chunk_rows=chunk_rows):
            mask = None
            for col, values in wanted.items():
                m = pc.is_in(t.column(col), value_set=values)
                mask = m if mask is None else pc.and_(mask, m)
            if mask is not None:
                t = t.filter(mask)
            if len(t):
                yield t if cols is None else t.select(cols)

    def _any_status(self, statuses: list[str]) -> bool:
        codes = [self._status_names.index(s) for s in statuses if s in self._status_names]
        return bool(codes) and bool(np.isin(self._status[:len(self._keys)], codes).any())

    def iter_records(self, *, status: str | Iterable[str] | None = None,
                     source: str | Iterable[str] | None = None,
                     chunk: int = 4096) -> Iterator[list[Record]]:
        """Pending work in chunks of at most ``chunk`` records (key order)."""
        for t in self.scan(status=status, source=source, chunk_rows=chunk):
            for i in range(0, len(t), chunk):
                yield [Record.from_row(r) for r in t.slice(i, chunk).to_pylist()]

    def table(self) -> pa.Table:
        """All current rows (last write per key wins), sorted by key. O(n) memory: prefer
        :meth:`scan` for large ledgers."""
        return self.select()

    def __len__(self) -> int:
        self._ensure_index()
        return len(self._keys)

    def count(self, *, status: str | Iterable[str] | None = None,
              source: str | Iterable[str] | None = None) -> int:
        """How many current rows match, from the index (no file read)."""
        self._ensure_index()
        n = len(self._keys)
        mask = np.ones(n, bool)
        for names, arr, want in ((self._status_names, self._status, status),
                                 (self._source_names, self._source, source)):
            if want is None:
                continue
            values = [want] if isinstance(want, str) else list(want)
            codes = [names.index(v) for v in values if v in names]
            mask &= np.isin(arr[:n], codes)
        return int(mask.sum())

    def records(self, *, status: str | Iterable[str] | None = None,
                source: str | Iterable[str] | None = None) -> list[Record]:
        return [rec for chunk in self.iter_records(status=status, source=source) for rec in chunk]

    def select(self, *, status: str | Iterable[str] | None = None,
               source: str | Iterable[str] | None = None) -> pa.Table:
        parts = list(self.scan(status=status, source=source))
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table()

    def _rows_at(self, slots: np.ndarray) -> pa.Table:
        """The current rows of index positions ``slots`` (in that order), read by location."""
        self._ensure_index()
        pieces, order = [], []
        runs, rows = self._run[slots], self._row[slots]
        for run_id in np.unique(runs):
            run = self._runs[int(run_id)]
            where = np.nonzero(runs == run_id)[0]
            groups: dict[int, list] = {}
            for i in where:
                g, r = run.group_of(int(rows[i]))
                groups.setdefault(g, []).append((i, r))
            for g, items in groups.items():
                t = self._row_group(int(run_id), g)
                pieces.append(t.take(pa.array([r for _, r in items], pa.int64())))
                order.extend(i for i, _ in items)
        if not pieces:
            return SCHEMA.empty_table()
        t = pa.concat_tables(pieces)
        return t.take(pa.array(np.argsort(np.array(order)), pa.int64()))

    def rows_of(self, sources: list[str], source_ids: list[str]) -> pa.Table:
        """The current rows of these keys, in that order, read by location (the row groups
        they sit in, not the whole ledger): a driver snapshots the keys of its pending work and
        reads full rows a chunk at a time, while it goes on writing."""
        self._ensure_index()        # a compacted ledger that was only scanned has none yet
        slots = self._slots([f"{s}{_SEP}{i}" for s, i in zip(sources, source_ids)], create=False)
        if len(slots) and slots.min() < 0:
            missing = [(s, i) for s, i, x in zip(sources, source_ids, slots) if x < 0][:3]
            raise LedgerError(f"not in the ledger: {missing}")
        return self._rows_at(slots)

    def _row_group(self, run_id: int, g: int) -> pa.Table:
        key = (run_id, g)
        if key in self._group_cache:
            self._group_cache.move_to_end(key)
            return self._group_cache[key]
        run = self._runs[run_id]
        t = _conform(run.file().read_row_group(g))
        self._group_cache[key] = t
        while len(self._group_cache) > 8:
            self._group_cache.popitem(last=False)
        return t

    def get(self, source: str, source_id: str) -> Record | None:
        self._ensure_index()
        s = self._keys.get(f"{source}{_SEP}{source_id}")
        if s is None:
            return None
        return Record.from_row(self._rows_at(np.array([s])).to_pylist()[0])

    def iter_batches(self, records: list[Record], batch_size: int) -> Iterator[list[Record]]:
        for i in range(0, len(records), batch_size):
            yield records[i:i + batch_size]

    def status_counts(self, source: str | Iterable[str] | None = None) -> dict[str, int]:
        self._ensure_index()
        n = len(self._keys)
        status = self._status[:n]
        if source is not None:
            values = [source] if isinstance(source, str) else list(source)
            codes = [self._source_names.index(v) for v in values if v in self._source_names]
            status = status[np.isin(self._source[:n], codes)]
        counts = np.bincount(status, minlength=len(self._status_names)) if len(status) else []
        return {self._status_names[i]: int(c) for i, c in enumerate(counts) if c}

    def failure_counts(self) -> dict[str, int]:
        out: Counter = Counter()
        for t in self.scan(status=Status.FAILED, columns=["failure_stage", "failure_code"]):
            pairs = zip(t.column("failure_stage").to_pylist(), t.column("failure_code").to_pylist())
            out.update(f"{s}:{c}" for s, c in pairs)
        return dict(out)

    # ------------------------------------------------------------------ writing
    def write(self, records: Iterable[Record], tag: str = "update") -> int:
        """Append full rows to the journal (one atomic file). Returns the number written."""
        records = list(records)
        if not records:
            return 0
        return self.write_table(records_to_table(records), tag=tag)

    def write_table(self, table: pa.Table, tag: str = "update") -> int:
        """:meth:`write` for rows already in Arrow form (the ledger schema)."""
        self._ensure_index()
        if self._lock_fd is None:
            raise LedgerError(f"{self.root} was opened read-only (lock=False)")
        if not len(table):
            return 0
        keys = _joined_keys(table)
        if len(pc.unique(keys)) != len(table):
            counts = pc.value_counts(keys).to_pylist()
            dup = [tuple(c["values"].split(_SEP, 1)) for c in counts if c["counts"] > 1][:3]
            raise LedgerError(f"duplicate keys in one ledger write: {dup}")
        table = _nulls_for_empty(_conform(table)).take(pc.sort_indices(keys))
        self._seq += 1
        safe_tag = "".join(c if c.isalnum() else "_" for c in tag)[:40]
        path = self.journal_dir / f"{self._seq:08d}-{safe_tag}.parquet"
        tmp = self.journal_dir / f".{path.name}.tmp-{os.getpid()}"
        w = _Writer(tmp, compression=JOURNAL_COMPRESSION)
        w.add(table)
        w.close()
        atomic.publish(tmp, path)
        run_id = self._add_run(path, len(table))
        self._index(table, run_id, 0, _source_hashes(table) if self._hashes_known else None)
        self._fold()
        return len(table)

    def _fold(self) -> None:
        """Merge the newest journal files while FOLD_FANIN of them share a size class."""
        def size_class(rows: int) -> int:
            c = 0
            while rows >= FOLD_UNIT * FOLD_FANIN ** (c + 1):
                c += 1
            return c

        while True:
            journal = [r for r in self._order if self._runs[r].path.parent == self.journal_dir]
            if len(journal) < FOLD_FANIN:
                return
            tail = journal[-FOLD_FANIN:]
            classes = {size_class(self._runs[r].rows) for r in tail}
            if len(classes) != 1:
                return
            last = self._runs[tail[-1]].path
            target = self.journal_dir / f"{last.name.split('-', 1)[0]}-~fold.parquet"
            self._rewrite(tail, target)

    def _rewrite(self, run_ids: list[int], target: Path) -> None:
        """Merge ``run_ids`` (the newest runs, or all of them) into ``target``; index updated."""
        tmp = self.journal_dir / f".{target.name}.tmp-{os.getpid()}"
        w = _Writer(tmp, compression="zstd" if target == self.base_path else JOURNAL_COMPRESSION)
        new_id = self._next_run
        located = []
        for chunk in self._merge(run_ids):
            w.add(chunk)
            located.append((self._slots(_joined_keys(chunk).to_pylist(), create=False), w.rows))
            w.rows += len(chunk)
        w.close()
        atomic.publish(tmp, target)
        first = self._order.index(run_ids[0]) if run_ids else len(self._order)   # empty ledger
        self._order = self._order[:first] + [new_id] + [r for r in self._order[first:] if r not in run_ids]
        self._next_run += 1
        self._runs[new_id] = _Run(target, w.rows)
        self._alive_masks[new_id] = np.ones(w.rows, bool)
        for slots, offset in located:
            self._run[slots] = new_id
            self._row[slots] = np.arange(offset, offset + len(slots), dtype=np.int64)
        for r in run_ids:
            old = self._runs.pop(r)
            self._alive_masks.pop(r)
            if old.path != target:
                old.path.unlink(missing_ok=True)
        self._group_cache.clear()

    def upsert(self, records: Iterable[Record], tag: str = "crawl") -> UpsertResult:
        """Add new records; for known keys update the source fields when they changed.

        A change of ``url`` or of the trim window means the audio must be fetched again (status
        back to ``new``); a metadata-only change keeps the audio and sends the record back to
        captioning. Vanished records that reappear are revived. O(batch): the index says which
        keys exist and whether their source fields changed; only changed rows are read.
        """
        self._ensure_index()
        result = UpsertResult()
        batch: dict[tuple[str, str], Record] = {}
        for rec in records:   # same id listed twice by a source (Epidemic categories): first wins
            batch.setdefault(rec.key, rec)
        if not batch:
            return result
        recs = list(batch.values())
        table = records_to_table(recs)
        slots = self._slots(_joined_keys(table).to_pylist(), create=False)
        existing = np.nonzero(slots >= 0)[0]
        added = np.nonzero(slots < 0)[0]
        result.added = [recs[i].key for i in added]
        out: list[Record] = []
        if len(existing):
            self._ensure_hashes()
            new_hash = np.array(_source_hashes(table.take(pa.array(existing))), np.int64)
            old_slots = slots[existing]
            vanished = (self._status[old_slots] == self._code(self._status_names, Status.VANISHED))
            differs = (self._hash[old_slots] != new_hash) | vanished
            result.unchanged = int((~differs).sum())
            todo = existing[differs]
            old_rows = self._rows_at(slots[todo]).to_pylist() if len(todo) else []
            for i, old in zip(todo, old_rows):
                rec = recs[i]
                new_row = table.slice(int(i), 1).to_pylist()[0]
                diff = [f for f in SOURCE_FIELDS if _norm(new_row[f]) != _norm(old[f])]
                revived = old["status"] == Status.VANISHED
                merged = Record.from_row(old)
                for f in SOURCE_FIELDS:
                    setattr(merged, f, getattr(rec, f))
                merged.texts = rec.texts
                merged.caption_provenance = rec.caption_provenance
                audio_changed = revived or any(f in ("url", "trim_start", "trim_end") for f in diff)
                if audio_changed:
                    merged.succeed(Status.NEW)      # fetched again; an old failure no longer holds
                    merged.audio_path = merged.flac_path = merged.audio_sha256 = ""
                    result.audio_changed.append(rec.key)
                elif Status.reached(merged.status, Status.TRANSCODED):
                    merged.status = Status.TRANSCODED  # captions are rebuilt, audio kept
                out.append(merged)
                result.changed.append(rec.key)
        parts = [table.take(pa.array(added, pa.int64()))] if len(added) else []
        if out:
            parts.append(records_to_table(out))
        if parts:
            self.write_table(pa.concat_tables(parts) if len(parts) > 1 else parts[0], tag=tag)
        return result

    def mark_vanished(self, source: str, present_ids: Iterable[str]) -> list[str]:
        """Mark records of ``source`` that a full re-crawl did not list (kept, not deleted)."""
        self._ensure_index()
        present = set(present_ids)
        if source not in self._source_names:
            return []
        src = self._source_names.index(source)
        vanished = self._code(self._status_names, Status.VANISHED)
        prefix = source + _SEP
        gone = [(k[len(prefix):], s) for k, s in self._keys.items()
                if self._source[s] == src and self._status[s] != vanished
                and k.startswith(prefix) and k[len(prefix):] not in present]
        gone.sort()
        if not gone:
            return []
        rows = self._rows_at(np.array([s for _, s in gone], np.int64))
        rows = rows.set_column(rows.schema.get_field_index("status"), "status",
                               pa.array([Status.VANISHED] * len(rows), pa.string()))
        self.write_table(rows, tag=f"vanished_{source}")
        return [sid for sid, _ in gone]

    def compact(self) -> None:
        """Fold the journal into ``ledger.parquet`` (atomic; safe to interrupt and redo).
        A streaming merge: memory stays a few row groups whatever the ledger's size."""
        journal = [r for r in self._order if self._runs[r].path != self.base_path]
        if not journal and (self.base_path.exists() or self._lock_fd is None):
            return
        if self._lock_fd is None:
            raise LedgerError(f"{self.root} was opened read-only (lock=False)")
        self._ensure_index()
        self._rewrite(list(self._order), self.base_path)


@contextmanager
def writing(root: str | os.PathLike) -> Iterator[Ledger]:
    """Open a ledger for writing and compact it on the way out (also after an error or
    Ctrl-C), so ``pd.read_parquet(root)``/DuckDB/polars see every row the command wrote.
    Every command that writes a ledger opens it through here."""
    ledger = Ledger(root)
    try:
        yield ledger
    finally:
        try:
            ledger.compact()
        finally:
            ledger.close()


def sidecar(root: str | os.PathLike, name: str) -> Path:
    """Where a file that belongs with a ledger but is not Parquet goes (caption cache, filter
    report): beside the ledger folder, never inside it (polars refuses a folder that mixes
    file types). A file left inside by an older laion-audio is moved out."""
    root = Path(root)
    path = root.parent / name
    legacy = root / name
    if legacy.exists() and not path.exists():
        atomic.publish(legacy, path)
    return path


def _norm(value):
    """Source-field values compared as the hash compares them ("" and null alike)."""
    if value is None or value == [] or value == "{}":
        return ""
    return value


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
    pending: int = 0                                   # left untouched for the next run
    unreachable: Counter = field(default_factory=Counter)   # host -> records left pending
    dropped: int = 0                                   # dropped by a filter (not failed)

    def add(self, before: Record, after: Record) -> None:
        self.inputs += 1
        if after.status == Status.NEW and after.failure_code == FailureCode.HOST_UNREACHABLE:
            self.pending += 1        # left for the next run (circuit breaker), not failed
            parts = urlsplit(after.url)
            self.unreachable[f"{parts.scheme}://{parts.netloc}".lower()] += 1
        elif after.status == Status.NEW and after.failure_code == FailureCode.QUOTA_DEFERRED:
            self.pending += 1        # an API's daily quota ran out: the next run goes on
            self.extra["deferred_quota"] = self.extra.get("deferred_quota", 0) + 1
        elif after.status == Status.NEW and after.failure_code == FailureCode.CLIP_LOST:
            self.pending += 1        # a damaged tar lost the clip: the next run fetches it again
            self.extra["clips_lost_requeued"] = self.extra.get("clips_lost_requeued", 0) + 1
        elif after.status == Status.FAILED:
            self.failed += 1
            self.failures[after.failure_code] += 1
        elif after.status == Status.DROPPED:
            self.dropped += 1
            self.failures[f"dropped:{after.filter_reason}"] += 1
        else:
            self.succeeded += 1

    @property
    def closes(self) -> bool:
        return self.inputs == self.succeeded + self.failed + self.dropped + self.pending

    def as_dict(self) -> dict:
        return {"stage": self.stage, "inputs": self.inputs, "succeeded": self.succeeded,
                "failed": self.failed, "dropped": self.dropped,
                "skipped_already_done": self.skipped,
                "failures": dict(self.failures), "seconds": round(self.seconds, 3),
                "pending": self.pending, "unreachable_hosts": dict(self.unreachable),
                "accounting_closes": self.closes, **self.extra}

    def line(self) -> str:
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        dropped = f" + {self.dropped} dropped" if self.dropped else ""
        pending = f" + {self.pending} pending" if self.pending else ""
        return (f"{self.stage}: {self.inputs} in = {self.succeeded} ok + {self.failed} failed"
                f"{dropped}{pending} ({fails}); {self.skipped} already done; {self.seconds:.1f}s"
                + ("" if self.closes else "  ACCOUNTING DOES NOT CLOSE"))


def write_stats(path: Path, stats: list[StageStats], public=None) -> None:
    """Per-stage accounting as JSON; ``public`` rewrites local paths (``WorkDir.public``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps([s.as_dict() for s in stats], indent=2)
    atomic.write_text(path, public(text) if public else text)
