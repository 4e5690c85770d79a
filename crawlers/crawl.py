"""The crawl stage: list a source into the ledger, checkpointing its paging state as it goes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from laion_audio.http import redact
from laion_audio.ledger import Ledger, StageStats
from laion_audio.records import Failure, FailureCode, Record
from laion_audio.workdir import WorkDir

from . import get_source

#: records per ledger write (and per crawl checkpoint)
CRAWL_FLUSH_EVERY = 5000   # records per crawl journal file (a kill -9 re-lists at most this many)
#: a crawl listing fewer than this fraction of the last complete crawl is not trusted
CRAWL_SHRINK_ALARM = 0.5
#: failures that end a crawl early but leave it resumable (a listing page that kept failing)
CRAWL_RETRYABLE = frozenset({FailureCode.HTTP_ERROR, FailureCode.TIMEOUT, FailureCode.TRUNCATED,
                             FailureCode.WRONG_CONTENT_TYPE, FailureCode.HOST_UNREACHABLE,
                             FailureCode.BAD_METADATA, FailureCode.NO_SPACE})


def crawl_source(ledger: Ledger, work: WorkDir, name: str, options: dict, *,
                 refresh: bool = False) -> StageStats:
    """Crawl source ``name`` into ``ledger``.

    A build crawls once (a finished crawl is skipped on rerun). A refresh crawls again from
    the start, and when that crawl completes, marks ids it no longer lists as vanished; the
    ids it has seen are appended to ``crawl/<source>.seen`` so an interrupted refresh resumes
    without forgetting them.
    """
    stats = StageStats(f"crawl:{name}")
    start = time.perf_counter()
    dataset = options.get("dataset_name") or name
    state_path, seen_path = work.crawl_state(name), work.crawl_seen(name)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("complete"):
        if not refresh:
            stats.skipped = ledger.count(source=get_source(name).dataset_names(options))
            stats.seconds = time.perf_counter() - start
            return stats
        state = {"previous_complete": state.get("listed")}
    if refresh and not state.get("refresh"):
        state = {"refresh": True, "previous_complete": state.get("previous_complete")}
        seen_path.write_text("")
    source = get_source(name)(**options)
    pending: list[Record] = []

    def flush() -> None:
        result = ledger.upsert(pending, tag=f"crawl_{name}")
        if refresh:
            with seen_path.open("a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r.source_id) + "\n" for r in pending)
        for rec in pending:   # a crawler may list an item it could not use as a failed record
            stats.add(rec, rec)
        for k, v in result.summary().items():
            stats.extra[k] = stats.extra.get(k, 0) + v
        state["listed"] = int(state.get("listed") or 0) + len(pending)
        pending.clear()
        write_json(state_path, state)

    try:
        for rec in source.crawl(state):
            pending.append(rec)
            if len(pending) >= CRAWL_FLUSH_EVERY:
                flush()
    except Failure as e:
        if e.code not in CRAWL_RETRYABLE:
            raise
        # a listing page that kept failing: what was listed is kept, the paging state points
        # at the failed page, and the crawl stays incomplete (the next run resumes there)
        flush()
        stats.extra["incomplete"] = redact(f"{e.code}: {e.message}")[:300]
        stats.seconds = time.perf_counter() - start
        return stats
    flush()
    listed, previous = int(state.get("listed") or 0), state.get("previous_complete")
    if listed == 0 or (previous and listed < CRAWL_SHRINK_ALARM * previous):
        # an empty or shrunken catalogue is far likelier a broken listing than a real one:
        # never marked complete (the next run crawls again) and no id is marked vanished
        stats.extra["suspect"] = (f"listed {listed} items" + (f", the last complete crawl "
                                  f"listed {previous}" if previous else "") +
                                  "; not marked complete" + ("; nothing marked vanished"
                                                             if refresh else ""))
        write_json(state_path, {"previous_complete": previous} if previous else {})
        stats.seconds = time.perf_counter() - start
        return stats
    if refresh:
        seen = {json.loads(line) for line in seen_path.read_text(encoding="utf-8").splitlines() if line}
        stats.extra["vanished"] = len(ledger.mark_vanished(dataset, seen))
    state["complete"] = True
    write_json(state_path, state)
    stats.seconds = time.perf_counter() - start
    return stats


def write_json(path: Path, data: Any, public=None) -> None:
    """Checkpoints and stats: sorted keys, written atomically (a kill leaves the old file);
    ``public`` rewrites local paths (``WorkDir.public``) in what is published."""
    from laion_audio import atomic

    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    atomic.write_text(path, public(text) if public else text)
