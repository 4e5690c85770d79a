"""The transcode stage over record batches: raw audio -> ``OUT/<source>/<key>.flac``.

Plain functions, no Ray: ``pipelines/`` calls :func:`transcode_batch` from its tasks, tests and
the benchmark call it directly. A record never raises out of here: a typed
:class:`~laion_audio.records.Failure` becomes ``failure_code``/``failure_message`` through
:meth:`Record.fail`, anything unexpected becomes ``internal_error`` with the
exception text. Rerunning a record rewrites its FLAC atomically with identical bytes.

A record that carries ``filter_match["expected_audio_sha256"]`` (built from a published
manifest) is checked here: other decoded audio fails it with ``audio_changed``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable

from ..archives import utf8_name
from .audio import TranscodeOptions, transcode_file
from ..records import Failure, FailureCode, Record, Status, is_out_of_space, sample_key

STAGE = "transcode"

__all__ = ["STAGE", "TranscodeOptions", "flac_path_for", "transcode_record", "transcode_batch",
           "release_raw"]


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
        return out.fail(STAGE, failure.code, utf8_name(failure.message))
    except Exception as exc:  # noqa: BLE001 - a bug must be recorded, never crash the run
        if is_out_of_space(exc):   # the machine's fault, not the record's: retried next run
            return out.fail(STAGE, FailureCode.NO_SPACE, f"disk full writing the FLAC: {exc}")
        return out.fail(STAGE, FailureCode.INTERNAL, utf8_name(f"{type(exc).__name__}: {exc}"))
    out.flac_path = result.flac_path
    out.audio_sha256 = result.sha256
    expected = (out.filter_match or {}).get("expected_audio_sha256")
    if expected and expected != result.sha256:
        # a rebuild from a published manifest: this URL now serves other audio; it is kept
        # (for inspection) but never sharded as the published sample
        out.audio_duration = result.duration
        return out.fail(STAGE, FailureCode.AUDIO_CHANGED,
                    f"decoded audio sha256 {result.sha256[:16]}... differs from the manifest's "
                    f"{expected[:16]}...")
    out.audio_duration = result.duration
    out.input_sample_rate = result.input_sample_rate
    out.input_channels = result.input_channels
    out.input_codec = result.input_codec
    out.input_subtype = result.input_subtype
    out.output_subtype = result.output_subtype
    return out.succeed(Status.TRANSCODED)


def transcode_batch(records: Iterable[Record], out_dir: str | os.PathLike,
                    options: TranscodeOptions | None = None, *,
                    raw_dir: str | os.PathLike | None = None) -> list[Record]:
    """Transcode a batch in order; one output record per input record. With ``raw_dir`` (the
    default keep policy of a build), a raw download inside that folder is deleted as soon as
    its FLAC is written and hashed, so raw audio does not outlive the task that used it."""
    options = options or TranscodeOptions()
    out = [transcode_record(r, out_dir, options) for r in records]
    if raw_dir is not None:
        for rec in out:
            release_raw(rec, raw_dir)
    return out


def release_raw(record: Record, raw_dir: str | os.PathLike) -> None:
    """Delete a transcoded record's raw file when it lies inside ``raw_dir`` (never a user's
    own file: local sources point at their input) and forget its path."""
    if record.status != Status.TRANSCODED or not record.audio_sha256 or not record.audio_path:
        return
    raw = Path(record.audio_path).resolve()
    if raw.is_relative_to(Path(raw_dir).resolve()) and Path(record.flac_path).is_file():
        raw.unlink(missing_ok=True)
        record.audio_path = ""
