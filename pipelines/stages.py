"""The stage table: the build as a declared list of stages, and the one runner of its worker stages.

Each entry names the stage function itself (an object, not a dotted string), the statuses it
reads and writes, how its records are grouped into tasks, and what a task needs. ``build`` runs
the table in order; ``transcode``, ``caption``, ``filter`` and ``shard`` run the same entries on
a ledger. Neighbouring per-record stages are fused into one worker task (fetch -> transcode ->
fingerprint, as img2dataset downloads, resizes and writes in one task), so a record's raw audio
is written, transcoded, hashed and deleted before the task ends.

The driver never holds the corpus: pending records are read from the ledger in chunks
(:func:`pending_chunks`), at most ``2 x workers`` tasks are in flight, and each finished task is
journaled on arrival.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from crawlers.crawl import CRAWL_FLUSH_EVERY, crawl_source
from crawlers.fetch import fetch_batch
from laion_audio.captions.worker import caption_batch
from laion_audio.filters.fpstore import fingerprint_batch
from laion_audio.filters.stage import ELIGIBLE, filter_ledger
from laion_audio.ledger import Ledger, StageStats
from laion_audio.records import LEFT_PENDING, RETRIED_BY_ITSELF, FailureCode, Record, Status
from laion_audio.shards import write_shards
from laion_audio.transcode import transcode_batch
from laion_audio.workdir import WorkDir

from .executor import Executor, file_size, sized_batches

log = logging.getLogger(__name__)

#: records the driver reads from the ledger at a time (its memory does not grow with the corpus)
PENDING_CHUNK = 2048
#: a transcode/fingerprint task holds up to this many input bytes (~1 s of decoding) ...
TRANSCODE_BATCH_BYTES = 32 << 20
#: ... and at most this many times --batch-size records
TRANSCODE_BATCH_RECORDS_PER_UNIT = 16
#: tasks of one source fetching at once when fetch runs alone (each with a few threads)
FETCH_TASKS_IN_FLIGHT = 4


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable                        # the stage function (worker: records -> records)
    reads: tuple[str, ...]              # statuses of the records it takes
    writes: tuple[str, ...]             # statuses it moves them to (else failed/dropped)
    batching: str                       # records (--batch-size) | input_bytes (of size_of) | ledger
    where: str = "workers"              # workers (Ray tasks) or driver (needs the whole set)
    per_record: bool = False            # records independent: fusable with per-record neighbours
    num_cpus: float = 1.0               # resources of one task
    part_of: str = ""                   # a step run whenever that selected stage runs
    needs_files: bool = False           # records get absolute paths in the task
    size_of: str = ""                   # input_bytes batching: the path field to measure
    min_batch: int = 1                  # records batching: at least this many per task
    doc: str = ""


#: the build, in order (`--stages` selects by name; `fingerprint` runs as part of `filter`)
STAGES: tuple[Stage, ...] = (
    Stage("crawl", crawl_source, reads=(), writes=(Status.NEW,), batching="pages",
          where="driver",
          doc=f"list a source, {CRAWL_FLUSH_EVERY:,} records per ledger write, checkpointed"),
    Stage("fetch", fetch_batch, reads=(Status.NEW,), writes=(Status.FETCHED,),
          batching="records", per_record=True, needs_files=True,
          doc="per source: its client, threads and per-host rate limit"),
    Stage("transcode", transcode_batch, reads=(Status.FETCHED,), writes=(Status.TRANSCODED,),
          batching="input_bytes", size_of="audio_path", per_record=True, needs_files=True,
          doc="raw -> 48 kHz mono FLAC + PCM sha256; raw deleted unless --keep-raw"),
    Stage("fingerprint", fingerprint_batch, reads=(Status.TRANSCODED,), writes=(),
          batching="input_bytes", size_of="flac_path", per_record=True, part_of="filter",
          needs_files=True,
          doc="fills the fingerprint store (keyed by PCM sha256) for the filter"),
    Stage("caption", caption_batch, reads=(Status.TRANSCODED,), writes=(Status.CAPTIONED,),
          batching="records", min_batch=64, doc="T5 or template; a model batch per task, cached"),
    Stage("filter", filter_ledger, reads=ELIGIBLE, writes=(Status.DROPPED,),
          batching="ledger", where="driver",
          doc="eval-set id and content overlap, exact and near duplicates"),
    Stage("shard", write_shards, reads=(Status.CAPTIONED, Status.SHARDED),
          writes=(Status.SHARDED,), batching="ledger", where="driver",
          doc="seeded split/order over the ready set, byte-identical tars"),
)
BY_NAME = {s.name: s for s in STAGES}


def selected(names: Iterable[str]) -> list[Stage]:
    """The table's entries for the chosen stage names, in table order (with their parts)."""
    names = set(names)
    return [s for s in STAGES if s.name in names or (s.part_of and s.part_of in names)]


def fuse(stages: list[Stage]) -> list[list[Stage]]:
    """Group neighbouring per-record worker stages into one task; others run alone."""
    groups: list[list[Stage]] = []
    for s in stages:
        if s.per_record and groups and groups[-1][-1].per_record:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


# ------------------------------------------------------------------------------ worker side
@dataclass
class Step:
    """One stage inside a task: the function, the statuses it takes and its arguments."""

    name: str
    fn: Callable
    reads: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)


def run_chain(records: list[Record], *, steps: list[Step]) -> list[Record]:
    """Worker: run fused stages one after another on a batch. Each step sees the records in
    a status it reads; a step that crashes fails its records (typed) and the batch goes on."""
    records = list(records)
    for step in steps:
        idx = [i for i, r in enumerate(records) if r.status in step.reads]
        if not idx:
            continue
        try:
            out = step.fn([records[i] for i in idx], **step.kwargs)
            if len(out) != len(idx):
                raise RuntimeError(f"{step.name} returned {len(out)} records for {len(idx)}")
        except Exception as exc:  # noqa: BLE001 - one bad batch must not end the run
            log.exception("batch of %d failed in %s", len(idx), step.name)
            out = [records[i].fail(step.name, FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                   for i in idx]
        for i, rec in zip(idx, out):
            records[i] = rec
    return records


# ------------------------------------------------------------------------------ driver side
def pending_chunks(ledger: Ledger, statuses: Iterable[str], sources: list[str] | None,
                   *, retry: dict[str, str] | None = None, retry_all: bool = True,
                   chunk: int | None = None) -> tuple[int, Iterator[list[Record]]]:
    """(count, chunks of Records) of ``sources`` in ``statuses``; with ``retry`` (failed stage
    -> status to retry from) failed records of those stages come back in that status: all of
    them with ``retry_all`` (``--retry-failed``), else only codes in ``RETRIED_BY_ITSELF``.

    The snapshot, taken before any write, is the keys of the pending rows (and the columns
    that choose them), not the rows: the driver goes on writing to the ledger while it reads,
    and reads each chunk's full rows by key (:meth:`Ledger.rows_of`) only when it gets there, so
    neither the pending rows nor their Records are held for the whole corpus."""
    statuses, chunk = list(statuses), chunk or PENDING_CHUNK
    cols = ["source", "source_id", "status", "failure_stage", "failure_code"]
    parts = list(ledger.scan(source=sources, status=statuses + ([Status.FAILED] if retry else []),
                             columns=cols))
    t = pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in cols})
    if retry:
        wanted = pc.is_in(t.column("status"), value_set=pa.array(statuses, pa.string()))
        retried = pc.and_(pc.equal(t.column("status"), Status.FAILED),
                          pc.is_in(t.column("failure_stage"),
                                   value_set=pa.array(list(retry), pa.string())))
        if not retry_all:   # without --retry-failed: only failures the machine caused (full disk)
            retried = pc.and_(retried, pc.is_in(t.column("failure_code"), value_set=pa.array(
                sorted(RETRIED_BY_ITSELF), pa.string())))
        t = t.filter(pc.or_(wanted, retried))
    todo = t.select(["source", "source_id"])

    def chunks() -> Iterator[list[Record]]:
        for off in range(0, todo.num_rows, chunk):
            part = todo.slice(off, chunk)
            rows = ledger.rows_of(part.column("source").to_pylist(), part.column("source_id").to_pylist())
            recs = [Record.from_row(r) for r in rows.to_pylist()]
            for r in recs:
                if r.status == Status.FAILED:
                    r.succeed(retry[r.failure_stage])
            yield recs

    return todo.num_rows, chunks()


def already_done(ledger: Ledger, sources: list[str] | None, stage_status: str) -> int:
    """Records of ``sources`` at or past ``stage_status`` (shown as 'already done')."""
    reached = Status.ORDER[Status.ORDER.index(stage_status):]
    return ledger.count(source=sources, status=reached)


def _batches(chunks: Iterator[list[Record]], first: Stage, *, batch_size: int, workers: int,
             work: WorkDir) -> Iterator[list[Record]]:
    """Tasks of the first fused stage's batching rule, chunk by chunk."""
    for recs in chunks:
        if first.needs_files:
            recs = [work.resolve(r) for r in recs]
        if first.batching == "input_bytes":
            yield from sized_batches(recs, file_size(lambda r: getattr(r, first.size_of)),
                                     max_count=TRANSCODE_BATCH_RECORDS_PER_UNIT * batch_size,
                                     target_bytes=TRANSCODE_BATCH_BYTES, min_batches=4 * workers)
        else:
            size = max(batch_size, first.min_batch)
            for i in range(0, len(recs), size):
                yield recs[i:i + size]


def run_worker_stages(group: list[Stage], steps: list[Step], executor: Executor, ledger: Ledger,
                      work: WorkDir, *, sources: list[str] | None, batch_size: int,
                      retry_failed: bool, stats: dict[str, StageStats], num_cpus: float = 1.0,
                      statuses: Iterable[str] | None = None) -> None:
    """Run fused worker stages over the ledger's pending records; every finished task is
    journaled at once. ``stats`` (stage name -> StageStats) gets each record's outcome at
    each stage it entered. ``statuses`` overrides what the first stage reads (the caption
    command's ``--status``)."""
    moving = [s for s in group if s.writes]          # stages that move a record's status
    reads = list(statuses) if statuses is not None else \
        sorted({st for s in moving for st in s.reads})
    retry = {s.name: s.reads[0] for s in moving}
    total, chunks = pending_chunks(ledger, reads, sources, retry=retry, retry_all=retry_failed)
    tag = "_".join(steps_names(steps))
    by_name = {s.name: s for s in moving}

    before: dict[int, list[str]] = {}     # statuses as sent (stages may edit records in place)

    def noted(batches: Iterator[list[Record]]) -> Iterator[list[Record]]:
        for batch in batches:
            before[id(batch)] = [r.status for r in batch]
            yield batch

    def on_result(inputs: list[Record], outputs: list[Record]) -> None:
        if any(s.needs_files for s in group):
            outputs = [work.relativize(r) for r in outputs]
        ledger.write(outputs, tag=tag)
        for status, after in zip(before.pop(id(inputs)), outputs):
            _attribute(moving, by_name, stats, status, after,
                       first_reads=reads if statuses is not None else None)

    start = time.perf_counter()
    if total:
        batches = noted(_batches(chunks, group[0], batch_size=batch_size,
                                 workers=executor.workers, work=work))
        executor.map_batches(run_chain, batches, kwargs={"steps": steps}, on_result=on_result,
                             total=total, desc=tag, num_cpus=num_cpus)
    for s in moving:     # fused stages share one clock: each reports the task's time
        stats[s.name].seconds += time.perf_counter() - start
        if len(moving) > 1:
            stats[s.name].extra["fused"] = tag


def steps_names(steps: list[Step]) -> list[str]:
    return [s.name for s in steps]


def _attribute(moving: list[Stage], by_name: dict, stats: dict[str, StageStats], status: str,
               after: Record, first_reads=None) -> None:
    """Count one record at each fused stage it entered: ok until the stage it failed at."""
    failed_at = None
    left_pending = after.status == Status.NEW and after.failure_code in LEFT_PENDING
    if after.status in (Status.FAILED, Status.DROPPED) or left_pending:
        # a failure (or a record left pending by the circuit breaker) is counted, typed, at
        # the stage it happened in; the stages after it never saw the record
        failed_at = after.failure_stage if after.failure_stage in by_name else ""
    for i, stage in enumerate(moving):
        entered = status in stage.reads or (i == 0 and first_reads is not None and status in first_reads)
        if not entered:
            continue
        st = stats[stage.name]
        if failed_at is not None and failed_at in ("", stage.name):
            st.add(after, after)          # the failure, typed, counted here
            return
        st.inputs += 1
        st.succeeded += 1
        status = stage.writes[0]
