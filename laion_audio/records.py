"""The record: one audio-caption pair in the making, and its Parquet schema.

Every stage reads and writes rows of this shape. Crawlers fill the source fields, later
stages add audio facts, captions, filter verdicts and shard placement. A record is keyed by
``(source, source_id)``; nothing else identifies it.

Free-form dicts (``original_data``, ``caption_provenance``, ``filter_match``) are stored as
JSON strings so the Parquet schema stays fixed whatever a source hands us.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

#: Bump when a column is added/renamed; the ledger refuses to read a newer version.
SCHEMA_VERSION = 1

KEY = ("source", "source_id")


class Status:
    """Where a record stands. Stages move records forward; ``failed``/``dropped`` are final
    until a rerun with ``--retry-failed`` (failed) or a filter change (dropped)."""

    NEW = "new"                # crawled, nothing fetched yet
    FETCHED = "fetched"        # raw audio on local disk (``audio_path``)
    TRANSCODED = "transcoded"  # 48 kHz mono FLAC written (``flac_path``)
    CAPTIONED = "captioned"    # ``texts`` final
    SHARDED = "sharded"        # written into a tar (``shard``)
    FAILED = "failed"          # a stage failed: ``failure_stage``/``failure_code``/``failure_message``
    DROPPED = "dropped"        # a filter removed it: ``filter_reason``/``filter_match``
    VANISHED = "vanished"      # a refresh no longer finds it at the source

    ORDER = [NEW, FETCHED, TRANSCODED, CAPTIONED, SHARDED]

    @classmethod
    def reached(cls, status: str, stage_status: str) -> bool:
        """True when ``status`` is at or past ``stage_status`` on the happy path."""
        if status not in cls.ORDER or stage_status not in cls.ORDER:
            return False
        return cls.ORDER.index(status) >= cls.ORDER.index(stage_status)


class FailureCode:
    """Typed failure codes. A failure is ``(stage, code, message)``; codes are stable strings
    that reports group by, messages are for people."""

    # fetch / network
    HTTP_ERROR = "http_error"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"            # 401/403, anti-crawl answers
    TIMEOUT = "timeout"
    TRUNCATED = "truncated_download"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"        # removed/private videos, vanished items
    WRONG_CONTENT_TYPE = "wrong_content_type"  # e.g. an HTML error page where audio/JSON was due
    UNSAFE_PATH = "unsafe_path"        # archive member or name that would escape the target folder
    AUDIO_CHANGED = "audio_changed"    # decoded audio differs from a published manifest's sha256
    QUOTA_DEFERRED = "quota_deferred"  # an API's daily quota ran out; the record stays ``new``
    HOST_UNREACHABLE = "host_unreachable"  # circuit breaker open: the record is left pending
    CLIP_LOST = "clip_lost"            # a sharded clip gone from audio/ and its (damaged) tar: re-fetched
    # any stage
    NO_SPACE = "no_space"              # disk full (ENOSPC): the next run retries by itself
    # decode / transcode
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    UNDECODABLE = "undecodable"        # no decoder could read it
    TRUNCATED_AUDIO = "truncated_audio"
    CORRUPT_AUDIO = "corrupt_audio"    # lossless data that does not decode exactly (CRC, MD5, gaps)
    IMPLAUSIBLE_HEADER = "implausible_header"  # e.g. a 1 Hz WAV: would expand a KB to hours
    NONFINITE = "nonfinite_samples"    # NaN/inf in float input
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    LOW_SAMPLE_RATE = "low_sample_rate"
    SILENT = "silent"
    BAD_TRIM = "bad_trim_window"
    # captions / metadata
    NO_CAPTION = "no_caption"
    BAD_METADATA = "bad_metadata"
    INTERNAL = "internal_error"        # a bug: still recorded, never crashes the run


#: Failure codes a plain rerun retries without ``--retry-failed``: the record was fine, the
#: machine was not (a full disk). ``host_unreachable`` never becomes a failure at all: those
#: records stay pending (status ``new``) with the reason in their failure columns.
RETRIED_BY_ITSELF = frozenset({FailureCode.NO_SPACE})

#: Reasons a record is left pending (status ``new``, reason in its failure columns) instead of
#: failed: nothing is wrong with the record, and the next run takes it up again by itself.
LEFT_PENDING = frozenset({FailureCode.HOST_UNREACHABLE, FailureCode.QUOTA_DEFERRED, FailureCode.CLIP_LOST})


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is a full disk or quota: an ``OSError`` with
    ENOSPC/EDQUOT, or libsndfile's bare "System error." whose C ``errno`` was ENOSPC (libsndfile
    does not pass the errno on, so it is read from the calling thread, right after the call)."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
            return True
        if type(exc).__name__ == "LibsndfileError" and getattr(exc, "code", None) == 2:  # SFE_SYSTEM
            try:
                import soundfile

                return soundfile._ffi.errno in _NO_SPACE_ERRNOS
            except Exception:  # noqa: BLE001 - a soundfile without cffi errno: cannot tell
                return False
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class Failure(Exception):
    """Raised inside a stage for one record; the stage turns it into ledger columns."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class Record:
    # --- identity and source metadata (crawlers) ---
    source: str
    source_id: str
    url: str = ""                       # audio URL, or a local path for local/pack sources
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    license: str = ""
    author: str = ""
    duration: float | None = None       # seconds as the source states it
    original_data: dict[str, Any] = field(default_factory=dict)
    trim_start: float | None = None     # segment window (AudioSet) in seconds
    trim_end: float | None = None
    # --- fetch ---
    audio_path: str = ""                # raw audio on local disk ("" once the keep policy deleted it)
    fetched_bytes: int | None = None
    # --- transcode ---
    flac_path: str = ""
    audio_sha256: str = ""              # sha256 of the output PCM samples (not the file bytes)
    audio_duration: float | None = None # seconds of output audio
    input_sample_rate: int | None = None
    input_channels: int | None = None
    input_codec: str = ""
    input_subtype: str = ""
    output_subtype: str = ""            # PCM_16 or PCM_24 (bit-depth rule in audio.py)
    # --- captions ---
    texts: list[str] = field(default_factory=list)
    caption_provenance: dict[str, Any] = field(default_factory=dict)
    text_augment_t5: str | None = None
    # --- filters ---
    filter_reason: str = ""
    filter_match: dict[str, Any] = field(default_factory=dict)
    duplicate_of: str = ""
    # --- shards ---
    split: str = ""
    shard: str = ""                     # e.g. "bbc/train/3.tar"
    # --- state ---
    status: str = Status.NEW
    failure_stage: str = ""
    failure_code: str = ""
    failure_message: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.source_id)

    def fail(self, stage: str, code: str, message: str) -> "Record":
        """Mark this record failed at ``stage`` (message trimmed so a ledger row stays small)."""
        self.status = Status.FAILED
        self.failure_stage, self.failure_code, self.failure_message = stage, code, message[:500]
        return self

    def defer(self, stage: str, code: str, message: str) -> "Record":
        """Leave this record pending (``new``) with the reason noted (one of ``LEFT_PENDING``):
        the next run fetches it again by itself."""
        self.fail(stage, code, message)
        self.status = Status.NEW
        return self

    def succeed(self, status: str) -> "Record":
        """Move this record to ``status`` and clear any earlier failure (a retry that worked)."""
        self.status = status
        self.failure_stage = self.failure_code = self.failure_message = ""
        return self

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in LIST_FIELDS:
            row[name] = list(row[name])
        for name in JSON_FIELDS:
            row[name] = json.dumps(row[name], sort_keys=True, ensure_ascii=False, default=str)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Record":
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in row:
                continue
            value = row[f.name]
            if f.name in JSON_FIELDS:
                value = json.loads(value) if isinstance(value, str) and value else {}
            elif f.name in LIST_FIELDS:
                value = list(value) if value is not None else []
            elif value is None and f.name not in NULLABLE_FIELDS:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs[f.name] = value
        return cls(**kwargs)


JSON_FIELDS = ("original_data", "caption_provenance", "filter_match")
LIST_FIELDS = ("tags", "texts")
NULLABLE_FIELDS = ("duration", "trim_start", "trim_end", "fetched_bytes", "audio_duration",
                   "input_sample_rate", "input_channels", "text_augment_t5")

#: Never null in the ledger; every other column is null when empty ("", [], {}).
REQUIRED_FIELDS = ("source", "source_id", "status")

_ARROW_TYPES = {
    "duration": pa.float64(), "trim_start": pa.float64(), "trim_end": pa.float64(),
    "audio_duration": pa.float64(), "fetched_bytes": pa.int64(),
    "input_sample_rate": pa.int64(), "input_channels": pa.int64(),
    "tags": pa.list_(pa.string()), "texts": pa.list_(pa.string()),
}

#: The ledger's Arrow schema, in Record field order.
SCHEMA = pa.schema(
    [pa.field(f.name, _ARROW_TYPES.get(f.name, pa.string()),
              nullable=f.name not in REQUIRED_FIELDS)   # the ledger writes empty fields as null
     for f in dataclasses.fields(Record)],
    metadata={b"laion_audio_schema_version": str(SCHEMA_VERSION).encode()},
)
COLUMNS = tuple(SCHEMA.names)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Record))


def records_to_table(records: Iterable[Record]) -> pa.Table:
    """Column by column (no per-record dict): the crawl of a 2M-row CSV goes through here."""
    records = list(records)
    columns = {}
    for name in _FIELD_NAMES:
        values = [getattr(r, name) for r in records]
        if name in JSON_FIELDS:
            values = [json.dumps(v, sort_keys=True, ensure_ascii=False, default=str) for v in values]
        columns[name] = values
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def table_to_records(table: pa.Table) -> list[Record]:
    return [Record.from_row(row) for row in table.to_pylist()]


def sample_key(source: str, source_id: str) -> str:
    """A stable, filesystem- and WebDataset-safe key for a record (no dots, no slashes).

    Site ids and file names are untrusted, so they never become paths or tar member names
    directly; the readable id stays in the JSON next to the audio."""
    digest = hashlib.sha1(f"{source}\x00{source_id}".encode("utf-8")).hexdigest()[:16]
    safe_source = "".join(c if c.isalnum() else "-" for c in source)[:32]
    return f"{safe_source}-{digest}"
