"""The transcode stage over record batches: raw audio -> ``OUT/<source>/<key>.flac``.

Plain functions, no Ray: ``pipelines/`` calls :func:`transcode_batch` from its tasks, tests and
the benchmark call it directly. A record never raises out of here: a typed
:class:`~laion_audio.records.Failure` becomes ``failure_code``/``failure_message`` through
:func:`laion_audio.ledger.fail`, anything unexpected becomes ``internal_error`` with the
exception text. Rerunning a record rewrites its FLAC atomically with identical bytes.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable

from .archives import utf8_name
from .audio import TranscodeOptions, transcode_file
from .ledger import fail
from .records import Failure, FailureCode, Record, Status, sample_key

STAGE = "transcode"

__all__ = ["STAGE", "TranscodeOptions", "flac_path_for", "transcode_record", "transcode_batch"]


def flac_path_for(record: Record, out_dir: str | os.PathLike) -> Path:
    """``out_dir/<source>/<sample_key>.flac``; refuses a source name that is not one folder."""
    source = record.source
    if (not source or source in (".", "..") or "/" in source or "\\" in source
            or "\x00" in source):
        raise Failure(FailureCode.UNSAFE_PATH, f"source name {source!r} is not a safe folder name")
    return Path(out_dir) / source / f"{sample_key(record.source, record.source_id)}.flac"


def transcode_record(record: Record, out_dir: str | os.PathLike,
                     options: TranscodeOptions | None = None) -> Record:
    """Transcode one record's ``audio_path``; returns a new Record (the input is not mutated)."""
    out = dataclasses.replace(record, tags=list(record.tags), texts=list(record.texts))
    try:
        if not out.audio_path:
            raise Failure(FailureCode.MISSING_FILE, "record has no audio_path (not fetched?)")
        result = transcode_file(out.audio_path, flac_path_for(out, out_dir), options,
                                start=out.trim_start, end=out.trim_end)
    except Failure as failure:   # messages may quote a file name that is not UTF-8
        return fail(out, STAGE, failure.code, utf8_name(failure.message))
    except Exception as exc:  # noqa: BLE001 - a bug must be recorded, never crash the run
        return fail(out, STAGE, FailureCode.INTERNAL, utf8_name(f"{type(exc).__name__}: {exc}"))
    out.flac_path = result.flac_path
    out.audio_sha256 = result.sha256
    out.audio_duration = result.duration
    out.input_sample_rate = result.input_sample_rate
    out.input_channels = result.input_channels
    out.input_codec = result.input_codec
    out.input_subtype = result.input_subtype
    out.output_subtype = result.output_subtype
    out.status = Status.TRANSCODED
    out.failure_stage = out.failure_code = out.failure_message = ""
    return out


def transcode_batch(records: Iterable[Record], out_dir: str | os.PathLike,
                    options: TranscodeOptions | None = None) -> list[Record]:
    """Transcode a batch in order; one output record per input record."""
    options = options or TranscodeOptions()
    return [transcode_record(r, out_dir, options) for r in records]
