"""The fetch stage: put each record's raw audio on local disk through its source's ``fetch``."""
from __future__ import annotations

import os
from pathlib import Path

from laion_audio.records import Record

from . import get_source

_SOURCES: dict = {}


def _source(name: str, options: dict, run: str = ""):
    key = (name, repr(sorted(options.items())))
    cached = _SOURCES.get(key)
    if cached is None or cached[0] != run:
        # one instance per worker process and fetch stage: sessions, rate limits and circuit
        # breakers persist across batches, but a new stage (a rerun in the same process, e.g.
        # --inline from Python) starts with closed breakers
        _SOURCES[key] = (run, get_source(name)(**options))
    return _SOURCES[key][1]


def fetch_batch(records: list[Record], *, source_name: str, source_options: dict,
                dest_dir: str, threads: int = 4, run: str = "") -> list[Record]:
    """Fetch a batch with the source's own (threaded, typed-failure) ``fetch_many``; ``run``
    names the fetch stage (the source instance is reused within it)."""
    source = _source(source_name, source_options, run)
    dest = Path(dest_dir) / "".join(c if c.isalnum() or c in "-_" else "_" for c in source_name)
    dest.mkdir(parents=True, exist_ok=True)
    out = source.fetch_many(records, dest, workers=threads)
    for rec in out:
        if rec.audio_path and rec.fetched_bytes is None and os.path.exists(rec.audio_path):
            rec.fetched_bytes = os.path.getsize(rec.audio_path)
    return out
