"""The fetch stage: put each record's raw audio on local disk through its source's ``fetch``."""
from __future__ import annotations

import os
from pathlib import Path

from laion_audio.ledger import fail
from laion_audio.records import Failure, FailureCode, Record, Status

from . import get_source

_SOURCES: dict = {}


def _source(name: str, options: dict):
    key = (name, repr(sorted(options.items())))
    if key not in _SOURCES:  # one instance per worker process: sessions and rate limits persist
        _SOURCES[key] = get_source(name)(**options)
    return _SOURCES[key]


def fetch_batch(records: list[Record], *, source_name: str, source_options: dict,
                dest_dir: str, stage_name: str = "fetch") -> list[Record]:
    source = _source(source_name, source_options)
    dest = Path(dest_dir) / "".join(c if c.isalnum() or c in "-_" else "_" for c in source_name)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for rec in records:
        try:
            path = Path(source.fetch(rec, dest))
            rec.audio_path = str(path)
            rec.fetched_bytes = os.path.getsize(path)
            rec.status = Status.FETCHED
            rec.failure_stage = rec.failure_code = rec.failure_message = ""
        except Failure as exc:
            fail(rec, stage_name, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a crawler bug is one record's failure
            fail(rec, stage_name, FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        out.append(rec)
    return out
