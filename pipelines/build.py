"""The build: runs the stage table (:mod:`pipelines.stages`) over a work folder.

Every stage reads the ledger, works on the records it has not finished yet and journals each
finished batch, so the same command resumes an interrupted run and a finished run is a no-op.
fetch -> transcode -> fingerprint run fused in one task per batch; crawl, filter and shard
need the whole set and run in this process. The work folder layout and its path convention
belong to :class:`laion_audio.workdir.WorkDir`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laion_audio import defaults
from crawlers.crawl import write_json
from laion_audio.ledger import Ledger, StageStats, write_stats, writing
from laion_audio.records import FailureCode, Status, is_out_of_space
from laion_audio.report import print_summary, summarize  # noqa: F401 - re-exported for callers
from laion_audio.workdir import WorkDir

from .executor import Executor, file_size, sized_batches
from .stages import (BY_NAME, FETCH_TASKS_IN_FLIGHT, TRANSCODE_BATCH_BYTES,
                     TRANSCODE_BATCH_RECORDS_PER_UNIT, Stage, Step, already_done, fuse,
                     pending_chunks, run_worker_stages, selected)

DEFAULT_HOST_RATE = 2.0   # requests/s per host, as laion_audio.http's default


@dataclass
class BuildConfig:
    out: Path
    sources: dict[str, dict[str, Any]]          # source name -> constructor options
    shards_to: str | None = None                # local path or fsspec URL; default out/shards
    seed: int = defaults.SEED
    test_fraction: float = defaults.TEST_FRACTION
    samples_per_shard: int | None = None        # None: 512, no count cap with shard_bytes
    shard_bytes: int | None = None
    workers: int = max(1, os.cpu_count() or 1)
    ray_address: str | None = None
    inline: bool = False
    batch_size: int = 16
    transcode: dict[str, Any] = field(default_factory=dict)   # TranscodeOptions fields
    retry_failed: bool = False
    keep_raw: bool = False                      # keep raw downloads after their FLAC is written
    keep_audio: bool = False                    # keep audio/ FLACs after their tar is published
    caption_model: str | None = None            # T5 keyword-to-caption folder; None = template
    caption_input_format: str | None = None
    caption_min_duration: float = 2.0           # LAION: no T5 caption below 2 s
    audioset_captions: str | None = None        # audioset-captions Parquet joined at caption
    evalsets_cache: str | None = None           # fetched eval manifests (laion-audio evalsets fetch)
    eval_audio: dict[str, str] = field(default_factory=dict)   # eval set -> local audio folder
    skip_eval_filter: bool = False              # --skip-eval-filter: no eval-set id matching
    eval_filter: str = ""                       # what the eval filter used, for stats and report
    stages: tuple[str, ...] = ("crawl", "fetch", "transcode", "caption", "filter", "shard")

    @property
    def shard_root(self) -> str:
        return self.shards_to or str(self.out / "shards")


def source_datasets(cfg: BuildConfig, name: str | None = None) -> list[str]:
    """The ``source`` values the records of one source (or all) carry, i.e. their shard folders:
    a source may list several (a published manifest holds records of many sites)."""
    from crawlers import get_source

    out: dict[str, None] = {}
    for n, options in cfg.sources.items():
        if name is None or n == name:
            try:
                names = get_source(n).dataset_names(options)
            except KeyError:      # a source not registered here (a test's own): its one name
                names = [options.get("dataset_name") or n]
            out.update(dict.fromkeys(names))
    return list(out)


# ---------------------------------------------------------------------------- worker stages
def _step(stage: Stage, cfg: BuildConfig, work: WorkDir, **extra) -> Step:
    """The arguments each worker stage gets from a build's configuration."""
    if stage.name == "fetch":
        kwargs = dict(dest_dir=str(work.raw), **extra)
    elif stage.name == "transcode":
        from laion_audio.transcode import TranscodeOptions

        kwargs = dict(out_dir=str(work.audio), options=TranscodeOptions(**cfg.transcode),
                      raw_dir=None if cfg.keep_raw else str(work.raw))
    elif stage.name == "fingerprint":
        kwargs = dict(store_dir=str(work.fingerprints))
    elif stage.name == "caption":
        kwargs = dict(model=cfg.caption_model, input_format=cfg.caption_input_format,
                      min_duration=cfg.caption_min_duration,
                      cache_path=str(work.caption_cache) if cfg.caption_model else None,
                      audioset_captions=cfg.audioset_captions)
    else:
        raise ValueError(f"{stage.name} is not a worker stage")
    return Step(stage.name, stage.fn, stage.reads, kwargs)


def worker_group(group: list[Stage], cfg: BuildConfig, work: WorkDir, ledger: Ledger,
                 executor: Executor) -> list[StageStats]:
    """Run one group of fused worker stages; per source when it fetches (the source's client
    and rate limit), else over all sources at once."""
    from laion_audio.http import remove_partial_downloads

    names = [s.name for s in group if s.writes]
    if not names:     # a status-neutral step alone (fingerprint): the filter fills its store
        return []
    shared = {n: StageStats(n) for n in names if n != "fetch"}
    out: list[StageStats] = []
    if "fetch" in names:
        fused = len(names) > 1
        for name, options in cfg.sources.items():
            remove_partial_downloads(work.raw / name)   # left by a killed run; none is running
            # the site's per-host rate is split between the tasks that may fetch at once, so Ray
            # does not multiply the load it sees; fused with transcode a task needs a whole CPU
            tasks = cfg.workers if fused else min(FETCH_TASKS_IN_FLIGHT, 2 * cfg.workers)
            num_cpus = 1.0 if fused else cfg.workers / tasks
            options = dict(options)
            rate = options.get("rate")
            options["rate"] = float(DEFAULT_HOST_RATE if rate is None else rate) / tasks  # 0 = no limit
            options["fetch_tasks"] = 1 if cfg.inline else tasks   # tasks sharing a per-key API quota
            if cfg.retry_failed:
                for dataset in source_datasets(cfg, name):
                    _refetch_cut_files(ledger, work, dataset)
            # each fetch run gets fresh source instances (closed circuit breakers), even in one process
            run = f"{os.getpid()}-{time.time_ns()}"
            steps = [_step(s, cfg, work, source_name=name, source_options=options, run=run)
                     if s.name == "fetch" else _step(s, cfg, work) for s in group]
            stats = dict(shared, fetch=StageStats(f"fetch:{name}"))
            run_worker_stages(group, steps, executor, ledger, work, sources=source_datasets(cfg, name),
                              batch_size=cfg.batch_size, retry_failed=cfg.retry_failed,
                              stats=stats, num_cpus=num_cpus)
            stats["fetch"].skipped = (already_done(ledger, source_datasets(cfg, name), Status.FETCHED)
                                      - stats["fetch"].succeeded)
            out.append(stats["fetch"])
    else:
        run_worker_stages(group, [_step(s, cfg, work) for s in group], executor, ledger, work,
                          sources=source_datasets(cfg), batch_size=cfg.batch_size,
                          retry_failed=cfg.retry_failed, stats=shared)
    for name, st in shared.items():
        reached = BY_NAME[name].writes[0]
        st.skipped = already_done(ledger, source_datasets(cfg), reached) - st.succeeded
        out.append(st)
    return out


#: transcode failures that a cut-off download causes: on --retry-failed the raw file is
#: fetched again instead of transcoding the same cut file again
REFETCH_ON_RETRY = frozenset({FailureCode.BAD_TRIM, FailureCode.TRUNCATED_AUDIO,
                              FailureCode.TRUNCATED, FailureCode.UNDECODABLE})


def _refetch_cut_files(ledger: Ledger, work: WorkDir, dataset: str) -> int:
    """Send downloaded records that failed transcode for a cut-off file back to fetch (only
    files this build downloaded into ``raw/``; a pack's extracted file is left alone)."""
    again = []
    for r in ledger.records(status=Status.FAILED, source=[dataset]):
        if r.failure_stage != "transcode" or r.failure_code not in REFETCH_ON_RETRY:
            continue
        path = Path(work.abs(r.audio_path)) if r.audio_path else None
        if path is None or not path.resolve().is_relative_to(work.raw.resolve()):
            continue
        path.unlink(missing_ok=True)
        r.audio_path, r.fetched_bytes = "", None
        again.append(r.succeed(Status.NEW))
    ledger.write(again, tag="refetch")
    return len(again)


# ---------------------------------------------------------------------------- driver stages
def fill_fingerprints(ledger: Ledger, work: WorkDir, executor: Executor, batch_size: int,
                      shard_root: str | None = None) -> None:
    """The fingerprint stage for audio the fused tasks did not fingerprint (earlier runs,
    `--stages` without fetch/transcode): only what the store lacks, in byte-sized tasks; a
    sharded clip whose FLAC was released is read from its tar."""
    from laion_audio.filters.fpstore import FingerprintStore
    from laion_audio.filters.stage import ELIGIBLE
    from laion_audio.shards.members import audio_in_shards

    def resolved(r):
        r = work.resolve(r)
        r.flac_path = audio_in_shards(r.flac_path, shard_root, r.shard, r.source, r.source_id)
        return r

    store = FingerprintStore(str(work.fingerprints))
    store.remove_partial()                    # left by a killed run; no worker is running now
    fp = BY_NAME["fingerprint"]
    total, chunks = pending_chunks(ledger, list(ELIGIBLE) + [Status.SHARDED], None)

    def batches():
        for recs in chunks:
            todo = [resolved(r) for r in recs
                    if r.flac_path and r.audio_sha256
                    and not (r.audio_sha256 in store and store.has_near(r.audio_sha256))]
            yield from sized_batches(todo, file_size(lambda r: r.flac_path),
                                     max_count=TRANSCODE_BATCH_RECORDS_PER_UNIT * batch_size,
                                     target_bytes=TRANSCODE_BATCH_BYTES,
                                     min_batches=4 * executor.workers)

    if total:
        executor.map_batches(fp.fn, batches(), kwargs={"store_dir": str(work.fingerprints)},
                             on_result=lambda inputs, outputs: None, total=total,
                             desc="fingerprint")


def filter_stage(cfg: BuildConfig, work: WorkDir, ledger: Ledger, executor: Executor) -> StageStats:
    """Eval-set overlaps and duplicates are marked dropped (with reasons) before sharding; the
    matching runs in this process over the stored fingerprints."""
    from laion_audio.filters.stage import FilterConfig

    released = work.released_root()        # released clips are read where they were published
    fill_fingerprints(ledger, work, executor, cfg.batch_size, released)
    report, stats = BY_NAME["filter"].fn(ledger, FilterConfig(
        evalsets_cache=cfg.evalsets_cache, eval_ids=not cfg.skip_eval_filter,
        eval_audio=dict(cfg.eval_audio), audio_root=str(work.root),
        fingerprint_dir=str(work.fingerprints), shard_root=released))
    stats.extra["table"] = report.table()
    stats.extra["eval_filter"] = cfg.eval_filter
    return stats


def release_sharded_audio(records: list, work: WorkDir, shard_root: str) -> int:
    """The keep policy for FLACs: once a record is journaled ``sharded``, its ``audio/`` FLAC
    is deleted when its published local tar holds the member with the same byte count (the
    writer hashed and fsynced those bytes; its receipt vouches for the tar). Every later reader
    takes the clip from the tar (:mod:`laion_audio.shards.members`); the ledger keeps the FLAC's
    path, so a rerun with ``--keep-audio`` or after a restore changes nothing. Remote shard roots
    keep their FLACs (reading members back would mean downloads). Returns files deleted. The
    build calls it for each tar as soon as that tar is published (``shard_ledger``), and once
    more at the end for the tars a rerun kept.

    Records are visited tar by tar: each tar's member list is then read once. In the writer's
    order (shuffled across tars) the member-list cache (64 tars) thrashed once a build had more
    tars than that: 6.7 ms instead of 1.1 ms of CPU per record at 40,000 clips (docs/scale.md)."""
    from laion_audio.shards.members import flac_member, locate

    if "://" in shard_root:
        return 0
    deleted = 0
    for rec in sorted(records, key=lambda r: r.shard or ""):
        if rec.status != Status.SHARDED or not work.inside(rec.flac_path, work.audio):
            continue
        path = work.abs(rec.flac_path)
        try:
            size = os.path.getsize(path)
        except OSError:
            continue                    # already released
        where = locate(f"{shard_root}/{rec.shard}", flac_member(rec.source, rec.source_id))
        if where is not None and where[1] == size:
            if not deleted:
                work.note_released(shard_root)   # before the first delete: readers find them
            os.unlink(path)
            deleted += 1
    return deleted


def restore_released_audio(ledger: Ledger, work: WorkDir, shard_root: str) -> tuple[int, int]:
    """Before shards are written to another root than the one the keep policy released FLACs
    into (``shard --shards-to s3://...`` after a local build, a new ``--shards-to``), copy those
    FLACs back into ``audio/`` from their tars, each checked against the samples the transcode
    stage hashed: the new root's plan then reads ordinary files, and the old shards may go.
    A clip its tar no longer holds intact is left for the shard stage to requeue. Returns
    (restored, lost)."""
    from laion_audio.shards.members import extract, flac_member, locate
    from laion_audio.transcode.audio import pcm_sha256_of_file

    released = work.released_root()
    if not released or not os.path.isdir(released) or (
            "://" not in shard_root and os.path.realpath(released) == os.path.realpath(shard_root)):
        return 0, 0
    restored = lost = 0
    for chunk in ledger.iter_records(status=[Status.SHARDED]):
        for rec in sorted(chunk, key=lambda r: r.shard or ""):     # tar by tar, as the release
            path = work.abs(rec.flac_path)
            if not rec.shard or not work.inside(rec.flac_path, work.audio) or os.path.isfile(path):
                continue
            tar, member = f"{released}/{rec.shard}", flac_member(rec.source, rec.source_id)
            try:
                if locate(tar, member) is None:
                    raise FileNotFoundError(member)
                extract(tar, member, path)
                with open(path, "rb") as f:
                    intact = not rec.audio_sha256 or pcm_sha256_of_file(f) == rec.audio_sha256
            except Exception:           # a cut or damaged tar: libsndfile's generic errors too
                intact = False
            if intact:
                restored += 1
            else:
                lost += 1
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
    if not lost:
        work.forget_released()
    return restored, lost


def shard_ledger(ledger: Ledger, work: WorkDir, shard_root: str, *, statuses, sources=None,
                 require_text: bool = False, release_audio: bool = False,
                 **options) -> tuple[list, dict, int, StageStats]:
    """The shard stage over a ledger's ready records: paths resolved by the work folder,
    split/shard written back in the ledger's own path form; with ``release_audio`` the keep
    policy then deletes FLACs now in published tars. Returns (records, report, records left
    out for want of a caption, stats)."""
    stats = StageStats("shard")
    start = time.perf_counter()
    restored, lost = restore_released_audio(ledger, work, shard_root)
    if restored or lost:
        stats.extra["flac_restored"] = restored
    # one Record per ready record, paths made absolute in place (no second copy of the set);
    # what each had before, to journal only the records this run changes
    ready, stored, before = [], [], []
    for chunk in ledger.iter_records(status=list(statuses), source=sources):
        for r in chunk:
            if require_text and not any(t.strip() for t in r.texts):
                continue
            stored.append((r.audio_path, r.flac_path))
            before.append((r.status, r.split, r.shard))
            r.audio_path, r.flac_path = work.abs(r.audio_path), work.abs(r.flac_path)
            ready.append(r)
    waiting = ledger.count(status=list(statuses), source=sources) - len(ready) if require_text else 0
    from laion_audio.shards import ShardError

    released = 0

    def publish(positions: list[int]) -> None:
        """A tar and its receipt are out: journal its records, then release their FLACs (so
        ``audio/`` shrinks as ``shards/`` grows, instead of both holding the corpus at the end
        of the stage). Journaled first: a clip is deleted only once the ledger names its tar."""
        nonlocal released
        recs = []
        for i in positions:
            rec = ready[i]
            if rec.status != Status.SHARDED or (rec.status, rec.split, rec.shard) != before[i]:
                before[i] = (rec.status, rec.split, rec.shard)   # not journaled again below
                recs.append(dataclasses.replace(rec, audio_path=stored[i][0],
                                                flac_path=stored[i][1]))
        ledger.write(recs, tag="shard")
        released += release_sharded_audio(
            [dataclasses.replace(ready[i], flac_path=stored[i][1]) for i in positions],
            work, shard_root)

    if release_audio and "://" not in shard_root:
        options["on_published"] = publish
    try:
        written, report = BY_NAME["shard"].fn(ready, shard_root, **options)
    except (OSError, ShardError) as e:
        if isinstance(e, ShardError):   # an input changed or a published tar is damaged
            stats.extra["shard_error"] = str(e)
        elif is_out_of_space(e):
            stats.extra["no_space"] = f"disk full while writing shards: {e.strerror or e}"
        else:
            raise
        # the records of tars not yet published stay captioned and the next run shards them
        # (with the same plan: those of published tars are journaled sharded, and kept)
        if released:
            stats.extra["flac_released"] = released
        stats.seconds = time.perf_counter() - start
        return [], {}, waiting, stats
    del ready
    for (audio, flac), rec in zip(stored, written):
        rec.audio_path, rec.flac_path = audio, flac     # the ledger keeps its own path form
    del stored
    ledger.write([rec for rec, was in zip(written, before)
                  if rec.status != Status.SHARDED or (rec.status, rec.split, rec.shard) != was],
                 tag="shard")
    for rec in written:
        stats.add(rec, rec)
    if release_audio:     # the tars this run kept as they were: their FLACs, if still here
        stats.extra["flac_released"] = released + release_sharded_audio(written, work, shard_root)
    stats.extra["report"] = report
    stats.seconds = time.perf_counter() - start
    return written, report, waiting, stats


# ---------------------------------------------------------------------------------- driver
def _peak_rss_mb() -> float | None:
    """This process's peak RSS so far (Linux VmHWM), noted after each stage: the stage that
    raises it is the one whose memory grows (benchmarks/driver_memory.py compares sizes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_build(cfg: BuildConfig, *, refresh: bool = False) -> dict:
    """Run the chosen stages of the table; returns the summary (also in ``stats/summary.json``)."""
    work = WorkDir(cfg.out, create=True)
    all_stats: list[StageStats] = []
    groups = fuse(selected(cfg.stages))
    with writing(work.ledger) as ledger:   # compacted on the way out, even after an error
        work.remove_partial_files()        # this run holds the lock: no other writer is running
        executor = Executor(workers=cfg.workers, ray_address=cfg.ray_address, inline=cfg.inline)
        if any(g[0].where == "workers" or g[0].name == "filter" for g in groups):
            executor.start()
        try:
            for group in groups:
                first = group[0]
                n_before = len(all_stats)
                cpu_before, sys_before = time.process_time(), os.times().system
                if first.name == "crawl":
                    for name, options in cfg.sources.items():
                        all_stats.append(first.fn(ledger, work, name, options, refresh=refresh))
                elif first.name == "filter":
                    all_stats.append(filter_stage(cfg, work, ledger, executor))
                elif first.name == "shard":
                    executor.stop()     # shards are written by threads here; free the workers
                    datasets = source_datasets(cfg)
                    *_, stats = shard_ledger(
                        ledger, work, cfg.shard_root, statuses=first.reads, sources=datasets,
                        seed=cfg.seed, test_fraction=cfg.test_fraction,
                        samples_per_shard=cfg.samples_per_shard, shard_bytes=cfg.shard_bytes,
                        workers=min(cfg.workers, 8), release_audio=not cfg.keep_audio)
                    all_stats.append(stats)
                else:
                    all_stats.extend(worker_group(group, cfg, work, ledger, executor))
                ledger.compact()
                peak, cpu = _peak_rss_mb(), round(time.process_time() - cpu_before, 3)
                cpu_system = round(os.times().system - sys_before, 3)
                for st in all_stats[n_before:]:
                    st.extra["driver_peak_rss_mb_so_far"] = peak
                    # CPU of this process over the stage group (all the work with --inline):
                    # steadier than wall seconds on a shared machine
                    st.extra["driver_cpu_seconds"] = cpu
                    # of which in the kernel (reads that miss the page cache, writes, fsyncs):
                    # what grows when a corpus outgrows the machine's cache (docs/scale.md)
                    st.extra["driver_cpu_system_seconds"] = cpu_system
        finally:
            executor.stop()
        summary = summarize(ledger, all_stats, cfg, work)
    public = functools.partial(work.public, shard_root=cfg.shard_root)
    write_stats(work.stats / "build.json", all_stats, public)
    write_json(work.stats / "summary.json", summary, public)
    write_json(work.stats / "rot.json", summary["rot"], public)
    return summary
