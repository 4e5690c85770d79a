"""The build pipeline: crawl -> fetch -> transcode -> caption -> filter -> shard.

Every stage reads the ledger, works on the records it has not finished yet and journals each
finished batch, so the same command resumes an interrupted run and a finished run is a no-op.
Work folder layout (``--out``)::

    ledger/                 the Parquet ledger (resume state + audit trail)
    crawl/<source>.json     crawl checkpoints (paging state)
    raw/<source>/           fetched audio as the site served it
    audio/<source>/         48 kHz mono FLAC
    shards/<dataset>/<split>/N.tar + sizes.json + index.json   (unless --shards-to elsewhere)
    stats/build.json        per-stage accounting of the last run

Paths inside ``--out`` are stored relative to it, so a work folder can be moved or copied.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laion_audio.ledger import Ledger, StageStats, write_stats
from laion_audio.records import Record, Status

from .executor import Executor, file_size, run_stage, sized_batches

log = logging.getLogger(__name__)

CRAWL_FLUSH_EVERY = 500
DEFAULT_HOST_RATE = 2.0   # requests/s per host, as laion_audio.http's default


@dataclass
class BuildConfig:
    out: Path
    sources: dict[str, dict[str, Any]]          # source name -> constructor options
    shards_to: str | None = None                # local path or fsspec URL; default out/shards
    seed: int = 1234
    test_fraction: float = 0.1
    samples_per_shard: int = 512
    shard_bytes: int | None = None
    workers: int = max(1, os.cpu_count() or 1)
    ray_address: str | None = None
    inline: bool = False
    batch_size: int = 16
    transcode: dict[str, Any] = field(default_factory=dict)   # TranscodeOptions fields
    retry_failed: bool = False
    caption_model: str | None = None            # T5 keyword-to-caption folder; None = template
    caption_input_format: str | None = None
    caption_min_duration: float = 2.0           # LAION: no T5 caption below 2 s
    audioset_captions: str | None = None        # audioset-captions Parquet joined at caption
    evalsets_cache: str | None = None           # fetched eval manifests (laion-audio evalsets fetch)
    eval_audio: dict[str, str] = field(default_factory=dict)   # eval set -> local audio folder
    stages: tuple[str, ...] = ("crawl", "fetch", "transcode", "caption", "filter", "shard")

    @property
    def shard_root(self) -> str:
        return self.shards_to or str(self.out / "shards")


class WorkDir:
    """Paths of a build's work folder; ledger paths are stored relative to it."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        for sub in ("crawl", "raw", "audio", "stats"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def rel(self, path: str) -> str:
        if not path:
            return path
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def abs(self, path: str) -> str:
        if not path:
            return path
        return str(path) if os.path.isabs(path) else str(self.root / path)

    def with_abs_paths(self, rec: Record) -> Record:
        rec = copy.copy(rec)
        rec.audio_path, rec.flac_path = self.abs(rec.audio_path), self.abs(rec.flac_path)
        return rec

    def with_rel_paths(self, rec: Record) -> Record:
        rec.audio_path, rec.flac_path = self.rel(rec.audio_path), self.rel(rec.flac_path)
        return rec


# ---------------------------------------------------------------------------------- stages
def crawl(cfg: BuildConfig, work: WorkDir, ledger: Ledger, name: str, options: dict,
          *, refresh: bool = False) -> StageStats:
    """List a source into the ledger, checkpointing its paging state as it goes.

    A build crawls once (a finished crawl is skipped on rerun). A refresh crawls again from
    the start, and when that crawl completes, marks ids it no longer lists as vanished; the
    ids it has seen are appended to ``crawl/<source>.seen`` so an interrupted refresh resumes
    without forgetting them.
    """
    from crawlers import get_source

    stats = StageStats(f"crawl:{name}")
    start = time.perf_counter()
    dataset = options.get("dataset_name") or name
    state_path = work.root / "crawl" / f"{name}.json"
    seen_path = work.root / "crawl" / f"{name}.seen"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("complete"):
        if not refresh:
            stats.skipped = len(ledger.select(source=dataset))
            stats.seconds = time.perf_counter() - start
            return stats
        state = {}
    if refresh and not state.get("refresh"):
        state = {"refresh": True}
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
        pending.clear()
        _write_json(state_path, state)

    for rec in source.crawl(state):
        pending.append(rec)
        if len(pending) >= CRAWL_FLUSH_EVERY:
            flush()
    flush()
    if refresh:
        seen = {json.loads(line) for line in seen_path.read_text(encoding="utf-8").splitlines() if line}
        stats.extra["vanished"] = len(ledger.mark_vanished(dataset, seen))
    state["complete"] = True
    _write_json(state_path, state)
    stats.seconds = time.perf_counter() - start
    return stats


def _pending(ledger: Ledger, status: str, sources: list[str], retry_failed: bool,
             failed_stage: str) -> list[Record]:
    records = ledger.records(status=status, source=sources)
    if retry_failed:
        for r in ledger.records(status=Status.FAILED, source=sources):
            if r.failure_stage == failed_stage:
                r.failure_stage = r.failure_code = r.failure_message = ""
                r.status = status
                records.append(r)
    return records


def _already_done(ledger: Ledger, datasets: list[str], stage_status: str) -> int:
    """Records of ``datasets`` already at or past ``stage_status`` (shown as 'already done')."""
    statuses = ledger.select(source=datasets).column("status").to_pylist()
    return sum(1 for st in statuses if Status.reached(st, stage_status))


def dataset_names(cfg: BuildConfig) -> dict[str, str]:
    """source module name -> the ``source`` value its records carry (the shard folder)."""
    out = {}
    for name, options in cfg.sources.items():
        out[name] = options.get("dataset_name") or name
    return out


#: tasks of one source fetching at once (each with a few threads); the source's per-host rate
#: limit is split between them, so Ray does not multiply the load a site sees
FETCH_TASKS_IN_FLIGHT = 4


def fetch(cfg: BuildConfig, work: WorkDir, ledger: Ledger, executor: Executor) -> list[StageStats]:
    from laion_audio.http import remove_partial_downloads

    stats = []
    for name, options in cfg.sources.items():
        dataset = dataset_names(cfg)[name]
        dest = work.root / "raw"
        remove_partial_downloads(dest / name)   # left by a killed run; no fetch is running now
        todo = _pending(ledger, Status.NEW, [dataset], cfg.retry_failed, "fetch")
        options = dict(options)
        tasks = min(FETCH_TASKS_IN_FLIGHT, 2 * cfg.workers)
        rate = options.get("rate")
        options["rate"] = float(DEFAULT_HOST_RATE if rate is None else rate) / tasks  # 0 = no limit
        s = run_stage(executor, ledger, f"fetch:{name}", "crawlers.fetch:fetch_batch", todo,
                      kwargs=dict(source_name=name, source_options=options, dest_dir=str(dest)),
                      batch_size=cfg.batch_size, num_cpus=cfg.workers / tasks,
                      transform=work.with_rel_paths)
        s.skipped = _already_done(ledger, [dataset], Status.FETCHED) - s.succeeded
        stats.append(s)
    return stats


#: a transcode task holds up to this many input bytes (~1 s of decoding) ...
TRANSCODE_BATCH_BYTES = 32 << 20
#: ... and at most this many times --batch-size records
TRANSCODE_BATCH_RECORDS_PER_UNIT = 16


def transcode(cfg: BuildConfig, work: WorkDir, ledger: Ledger, executor: Executor) -> StageStats:
    datasets = list(dataset_names(cfg).values())
    todo = [work.with_abs_paths(r) for r in
            _pending(ledger, Status.FETCHED, datasets, cfg.retry_failed, "transcode")]
    # batches by input bytes: hundreds of short effects per task, a few long tracks per task
    batches = sized_batches(todo, file_size(lambda r: r.audio_path),
                            max_count=TRANSCODE_BATCH_RECORDS_PER_UNIT * cfg.batch_size,
                            target_bytes=TRANSCODE_BATCH_BYTES, min_batches=4 * cfg.workers)
    s = run_stage(executor, ledger, "transcode", "laion_audio.transcode:transcode_batch", todo,
                  kwargs=dict(out_dir=str(work.root / "audio"), options=_transcode_options(cfg)),
                  batch_size=cfg.batch_size, transform=work.with_rel_paths, batches=batches)
    s.skipped = _already_done(ledger, datasets, Status.TRANSCODED) - s.succeeded
    return s


def _transcode_options(cfg: BuildConfig):
    from laion_audio.transcode import TranscodeOptions

    return TranscodeOptions(**cfg.transcode)


def caption(cfg: BuildConfig, work: WorkDir, ledger: Ledger, executor: Executor) -> StageStats:
    datasets = list(dataset_names(cfg).values())
    todo = _pending(ledger, Status.TRANSCODED, datasets, cfg.retry_failed, "caption")
    kwargs = dict(model=cfg.caption_model, input_format=cfg.caption_input_format,
                  min_duration=cfg.caption_min_duration,
                  cache_path=str(work.root / "caption_cache.sqlite") if cfg.caption_model else None,
                  audioset_captions=cfg.audioset_captions)
    # a model generates many captions per call: bigger batches, the cache dedups keyword sets
    s = run_stage(executor, ledger, "caption", "pipelines.build:caption_batch", todo,
                  kwargs=kwargs, batch_size=max(cfg.batch_size, 64))
    s.skipped = _already_done(ledger, datasets, Status.CAPTIONED) - s.succeeded
    return s


_CAPTIONERS: dict = {}


def caption_batch(records: list[Record], *, model: str | None = None,
                  input_format: str | None = None, min_duration: float = 2.0,
                  cache_path: str | None = None, audioset_captions: str | None = None) -> list[Record]:
    """The caption stage in a worker: the T5 model is loaded once per process (like an actor)
    and shares the persistent cache; without a model, the paper's template."""
    from laion_audio.captions.cache import CaptionCache
    from laion_audio.captions.k2c import Captioner
    from laion_audio.captions.stage import CaptionOptions, caption_batch as caption_stage

    captioner = cache = None
    if model:
        key = (model, input_format)
        if key not in _CAPTIONERS:
            _CAPTIONERS[key] = Captioner.load(model, input_format=input_format)
        captioner = _CAPTIONERS[key]
        cache = CaptionCache(cache_path) if cache_path else None
    table = None
    if audioset_captions:
        from laion_audio.captions.stage import AudioSetCaptionTable

        if audioset_captions not in _CAPTIONERS:
            _CAPTIONERS[audioset_captions] = AudioSetCaptionTable(audioset_captions)
        table = _CAPTIONERS[audioset_captions]
    try:
        return caption_stage(records, captioner, CaptionOptions(min_duration=min_duration or None,
                                                                audioset_captions=table),
                             cache=cache)
    finally:
        if cache is not None:
            cache.close()


def filter_stage(cfg: BuildConfig, work: WorkDir, ledger: Ledger, executor: Executor) -> StageStats:
    """Eval-set overlaps and duplicates are marked dropped (with reasons) before sharding.
    The workers first fill the fingerprint store (only audio it does not hold yet); the
    matching itself runs in this process over the stored fingerprints."""
    from laion_audio.filters.fpstore import FingerprintStore
    from laion_audio.filters.stage import ELIGIBLE, FilterConfig, filter_ledger

    store_dir = str(work.root / "fingerprints")
    store = FingerprintStore(store_dir)
    store.remove_partial()                    # left by a killed run; no worker is running yet
    todo = [work.with_abs_paths(r)
            for r in ledger.records(status=list(ELIGIBLE) + [Status.SHARDED])
            if r.flac_path and r.audio_sha256 and r.audio_sha256 not in store]
    if todo:     # fingerprinting costs what decoding does: tasks sized like transcode's
        batches = sized_batches(todo, file_size(lambda r: r.flac_path),
                                max_count=TRANSCODE_BATCH_RECORDS_PER_UNIT * cfg.batch_size,
                                target_bytes=TRANSCODE_BATCH_BYTES, min_batches=4 * cfg.workers)
        executor.map_batches("laion_audio.filters.fpstore:fingerprint_batch", batches,
                             kwargs={"store_dir": store_dir},
                             on_result=lambda inputs, outputs: None, total=len(todo),
                             desc="fingerprint")
    report, stats = filter_ledger(ledger, FilterConfig(evalsets_cache=cfg.evalsets_cache,
                                                       eval_audio=dict(cfg.eval_audio),
                                                       audio_root=str(work.root),
                                                       fingerprint_dir=store_dir))
    stats.extra["table"] = report.table()
    return stats


def shard(cfg: BuildConfig, work: WorkDir, ledger: Ledger) -> StageStats:
    from laion_audio.shards import write_shards

    stats = StageStats("shard")
    start = time.perf_counter()
    datasets = list(dataset_names(cfg).values())
    ready = ledger.records(status=[Status.CAPTIONED, Status.SHARDED], source=datasets)
    absolute = [work.with_abs_paths(r) for r in ready]
    written, report = write_shards(absolute, cfg.shard_root, seed=cfg.seed,
                                   test_fraction=cfg.test_fraction,
                                   samples_per_shard=cfg.samples_per_shard,
                                   shard_bytes=cfg.shard_bytes, workers=min(cfg.workers, 8))
    ledger.write([work.with_rel_paths(r) for r in written], tag="shard")
    for rec in written:
        stats.add(rec, rec)
    stats.extra["report"] = report
    stats.seconds = time.perf_counter() - start
    return stats


# ---------------------------------------------------------------------------------- driver
def run_build(cfg: BuildConfig, *, refresh: bool = False) -> dict:
    """Run the chosen stages; returns the summary (also written to ``stats/build.json``)."""
    work = WorkDir(cfg.out)
    all_stats: list[StageStats] = []
    with Ledger(work.root / "ledger") as ledger:
        if "crawl" in cfg.stages:
            for name, options in cfg.sources.items():
                all_stats.append(crawl(cfg, work, ledger, name, options, refresh=refresh))
            ledger.compact()
        executor = Executor(workers=cfg.workers, ray_address=cfg.ray_address, inline=cfg.inline)
        needs_workers = any(s in cfg.stages for s in ("fetch", "transcode", "caption", "filter"))
        if needs_workers:
            executor.start()
        try:
            if "fetch" in cfg.stages:
                all_stats.extend(fetch(cfg, work, ledger, executor))
                ledger.compact()
            if "transcode" in cfg.stages:
                all_stats.append(transcode(cfg, work, ledger, executor))
                ledger.compact()
            if "caption" in cfg.stages:
                all_stats.append(caption(cfg, work, ledger, executor))
                ledger.compact()
            if "filter" in cfg.stages:
                all_stats.append(filter_stage(cfg, work, ledger, executor))
                ledger.compact()
        finally:
            executor.stop()
        if "shard" in cfg.stages:
            all_stats.append(shard(cfg, work, ledger))
            ledger.compact()
        summary = summarize(ledger, all_stats, cfg)
    write_stats(work.root / "stats" / "build.json", all_stats)
    _write_json(work.root / "stats" / "summary.json", summary)
    return summary


def summarize(ledger: Ledger, stats: list[StageStats], cfg: BuildConfig) -> dict:
    table = ledger.table()
    rows = table.select(["source", "status", "split", "audio_duration", "failure_stage",
                         "failure_code"]).to_pylist()
    per_source: dict[str, dict] = {}
    for row in rows:
        s = per_source.setdefault(row["source"], {"records": 0, "audio_ok": 0, "sharded": 0,
                                                  "failed": 0, "dropped": 0, "vanished": 0,
                                                  "hours": 0.0, "train": 0, "test": 0})
        s["records"] += 1
        if Status.reached(row["status"], Status.TRANSCODED):
            s["audio_ok"] += 1
            s["hours"] += (row["audio_duration"] or 0.0) / 3600
        if row["status"] == Status.VANISHED:
            s["vanished"] += 1
        if row["status"] == Status.SHARDED:
            s["sharded"] += 1
            if row["split"] in ("train", "test"):
                s[row["split"]] += 1
        elif row["status"] == Status.FAILED:
            s["failed"] += 1
        elif row["status"] == Status.DROPPED:
            s["dropped"] += 1
    for s in per_source.values():
        s["hours"] = round(s["hours"], 4)
    return {"out": str(cfg.out), "shards": cfg.shard_root, "records": len(rows),
            "by_status": ledger.status_counts(), "failures": ledger.failure_counts(),
            "sources": per_source, "stages": [s.as_dict() for s in stats],
            "accounting_closes": all(s.closes for s in stats)}


def print_summary(summary: dict, stats_lines: bool = True) -> None:
    print(f"\nlaion-audio build: {summary['records']} records in {summary['out']}")
    for st in summary["stages"]:
        s = StageStats(st["stage"], st["inputs"], st["succeeded"], st["failed"],
                       st["skipped_already_done"], seconds=st["seconds"])
        s.failures.update(st["failures"])
        print("  " + s.line())
        if st.get("table") and st["failed"]:
            print("    " + st["table"].replace("\n", "\n    "))
    print(f"  {'dataset':<24}{'records':>9}{'audio ok':>9}{'sharded':>9}{'train':>7}{'test':>6}"
          f"{'failed':>8}{'dropped':>9}{'vanished':>9}{'hours':>9}")
    for name, s in sorted(summary["sources"].items()):
        print(f"  {name:<24}{s['records']:>9}{s['audio_ok']:>9}{s['sharded']:>9}{s['train']:>7}"
              f"{s['test']:>6}{s['failed']:>8}{s['dropped']:>9}{s['vanished']:>9}{s['hours']:>9.3f}")
    if summary["failures"]:
        print("  failures: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["failures"].items())))
    if any(st["stage"] == "shard" for st in summary["stages"]):
        print(f"  shards: {summary['shards']}")
    print("  accounting closes at every stage" if summary["accounting_closes"]
          else "  WARNING: accounting does not close; see stats/build.json")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
