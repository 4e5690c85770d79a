"""The filter stage: mark eval-set overlaps and duplicates ``dropped`` in the ledger, with reasons.

Order (each step sees only what the previous ones kept):

1. ``eval_overlap_id``      Freesound/YouTube id in a fetched eval set (id_overlap.py)
2. ``duplicate_exact``      same decoded-PCM hash as a kept record (dedup.py)
3. ``eval_overlap_content`` audio matches a local eval clip (``eval_audio``: name -> folder)
4. ``duplicate_near``       audio matches another kept record (same fingerprint machinery)

Records already in shards are never dropped (they are published), but they are the kept copy
when a new record duplicates them, exactly (same PCM hash) or, with a fingerprint store, by
content.

Duplicate verdicts are a function of the set of records, not of the order they arrived in:
records an earlier run dropped as duplicates (and that were never sharded) are decided again
with the new ones, so a run that sees a better copy, or sees that a record's keeper was
itself dropped, ends where one run over the whole set would have. A record whose verdict is
unchanged is not rewritten; one that is now kept gets back the status it had before.

Nothing is deleted: a dropped record keeps its row with ``filter_reason``, ``filter_match``
(eval set, split, matched id, score, method) and, for duplicates, ``duplicate_of``. Records
eligible for filtering are those not yet sharded, failed, dropped or vanished. Audio for
content steps is ``flac_path`` (48 kHz mono FLAC); records without it skip those steps and
are counted as ``no_audio``.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import defaults
from ..defaults import LOOKUP_BUDGET
from ..ledger import Ledger, StageStats
from ..records import Record, Status, records_to_table
from ..shards.members import audio_exists, audio_in_shards, released_clip_intact
from . import evalsets as evalsets_mod
from .content_overlap import (ContentMatcher, FingerprintIndex, Match, best_per_query,
                              match_fields, warp_eval_matches)
from .dedup import (DEFAULT_SOURCE_PRIORITY, QUERY_CHUNK, FeatureCache, decide_near,
                    exact_duplicates, keep_order, near_duplicate_matches, near_features)
from .fpstore import FingerprintStore, band_features_file, fingerprint_file, frame_features_file
from .id_overlap import find_id_overlaps, primary_matches

log = logging.getLogger(__name__)
#: threads that fingerprint the clips under decision (decode and FFT in parallel)
FINGERPRINT_THREADS = 4

ELIGIBLE = (Status.NEW, Status.FETCHED, Status.TRANSCODED, Status.CAPTIONED)

EVAL_ID = "eval_overlap_id"
EVAL_CONTENT = "eval_overlap_content"
DUP_EXACT = "duplicate_exact"
DUP_NEAR = "duplicate_near"
CONTENT_METHOD = "landmark+aligned_band_correlation"
NEAR_METHOD = "landmark+aligned_band_correlation_100"
#: drops that depend on the other records (not on the eval sets): decided again every run
DUPLICATE_REASONS = (DUP_EXACT, DUP_NEAR)


@dataclass
class FilterConfig:
    evalsets_cache: str | None = None          # None: $LAION_AUDIO_EVALSETS_CACHE or default
    eval_ids: bool = True                      # False: --skip-eval-filter (said in the stats)
    eval_audio: dict[str, str] = field(default_factory=dict)
    roles: list[str] | None = None             # e.g. ["eval"]; None = every fetched split
    youtube_window: bool = False
    source_priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY
    content: bool = True                       # eval-audio matching when eval_audio is given
    near_duplicates: bool = True
    warp: bool = True                          # also catch sped-up/pitch-shifted/stretched copies
    min_votes: int = 6
    min_correlation: float = 0.7
    #: postings a lookup may touch (at least; long queries get 1 per 2,000 x their hashes):
    #: the speed/recall knob of large indexes (benchmarks/filters.py lookup --budgets)
    lookup_budget: int = LOOKUP_BUDGET
    audio_root: str | None = None              # relative flac_path values start here (work folder)
    fingerprint_dir: str | None = None         # a FingerprintStore: reuse across runs, and
    #                                            compare new records with sharded ones
    shard_root: str | None = None              # local shards (default audio_root/shards): a
    #                                            sharded clip without its FLAC is read there


@dataclass
class FilterReport:
    eligible: int = 0
    dropped: Counter = field(default_factory=Counter)                 # reason -> n
    by_source_evalset: Counter = field(default_factory=Counter)       # (source, eval_set) -> n
    by_source_duplicate: Counter = field(default_factory=Counter)     # (source, kind) -> n
    no_audio: int = 0
    #: sharded clips left out of the near-duplicate index: no stored fingerprint, and their
    #: released tar member unreadable or not the samples the transcode hashed
    published_unread: int = 0
    reconsidered: int = 0            # earlier duplicate drops decided again with the new records
    reinstated: int = 0              # ... of which are now kept (their keeper went, or they lead)
    eval_clips: dict[str, int] = field(default_factory=dict)
    eval_clips_unreadable: int = 0
    eval_clips_too_short: int = 0    # decoded, but no landmark to match on (e.g. a 0.1 s blip)
    seconds: float = 0.0
    #: the near-duplicate search's counters (queries, candidates, pairs checked, index/lookup/
    #: confirmation seconds): which part of the filter's time grows with the corpus
    near_duplicates: dict = field(default_factory=dict)

    def table(self) -> str:
        """The leak/duplicate table (LAION's ICASSP.md layout: source rows x eval-set columns)."""
        lines = []
        sets = sorted({e for _, e in self.by_source_evalset})
        sources = sorted({s for s, _ in self.by_source_evalset} | {s for s, _ in self.by_source_duplicate})
        kinds = [DUP_EXACT, DUP_NEAR]
        head = ["source"] + sets + ["total eval"] + kinds
        rows = []
        for s in sources:
            per = [self.by_source_evalset.get((s, e), 0) for e in sets]
            rows.append([s] + per + [sum(per)] + [self.by_source_duplicate.get((s, k), 0) for k in kinds])
        tot = ["total"] + [sum(r[i] for r in rows) for i in range(1, len(head))]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, tot)]
        fmt = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
        lines.append(fmt(head))
        lines += [fmt(r) for r in rows]
        lines.append(fmt(tot))
        lines.append(f"eligible {self.eligible}; dropped " + ", ".join(
            f"{k}={v}" for k, v in sorted(self.dropped.items())) + f"; no audio for content checks {self.no_audio}"
            + f"; sharded clips not compared (unreadable or not the clip hashed) {self.published_unread}"
            * bool(self.published_unread))
        if self.eval_clips or self.eval_clips_unreadable:
            lines.append(f"eval audio compared: {sum(self.eval_clips.values())} clips"
                         + f"; {self.eval_clips_unreadable} unreadable (see the warnings)" * bool(self.eval_clips_unreadable)
                         + f"; {self.eval_clips_too_short} too short to match" * bool(self.eval_clips_too_short))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"eligible": self.eligible, "dropped": dict(self.dropped),
                "by_source_evalset": [{"source": s, "eval_set": e, "n": n}
                                      for (s, e), n in sorted(self.by_source_evalset.items())],
                "by_source_duplicate": [{"source": s, "kind": k, "n": n}
                                        for (s, k), n in sorted(self.by_source_duplicate.items())],
                "no_audio": self.no_audio, "published_unread": self.published_unread,
                "reconsidered": self.reconsidered,
                "reinstated": self.reinstated, "eval_clips": self.eval_clips,
                "eval_clips_unreadable": self.eval_clips_unreadable,
                "eval_clips_too_short": self.eval_clips_too_short, "seconds": round(self.seconds, 2),
                "near_duplicates": self.near_duplicates}


def _bands_loader(paths: list[str]):
    """Band features of corpus clip ``i``, recomputed from its FLAC on demand (only candidates
    need them; keeping them for every clip would cost ~6 kB per second of audio)."""
    @functools.lru_cache(maxsize=4096)
    def load(i: int):
        try:
            return band_features_file(paths[i])
        except Exception:  # noqa: BLE001 - unreadable now: no confirmation, no match
            return None
    return load


def _near_loader(paths: list[str], shas: list[str], store: FingerprintStore | None):
    """Near-duplicate confirmation features of member ``i``: from the store (written by the
    workers with the fingerprint), else from its FLAC, then stored (None: unreadable)."""
    def load(i: int):
        if store is not None:
            got = store.get_near(shas[i])
            if got is not None:
                return got
        if not paths[i] or not released_clip_intact(paths[i], shas[i]):
            return None
        try:
            got = frame_features_file(paths[i], near_features)   # bounded read, any length
        except Exception:  # noqa: BLE001 - unreadable now: no confirmation, no match
            return None
        if store is not None and shas[i] and got is not None:
            store.put_near(shas[i], got)
        return got
    return load


def _status_before(row: dict) -> str:
    """The status a duplicate had before it was dropped (stored in its match since this
    version; older rows: inferred from what the record holds)."""
    match = row.get("filter_match") or {}
    if isinstance(match, str):
        import json
        try:
            match = json.loads(match) or {}
        except ValueError:
            match = {}
    before = match.get("status_before") if isinstance(match, dict) else None
    if before in ELIGIBLE:
        return before
    if row.get("texts"):
        return Status.CAPTIONED
    return Status.TRANSCODED if row.get("flac_path") else Status.FETCHED


def eval_audio_files(eval_audio: dict[str, str]) -> list[tuple[str, str, Path]]:
    """(eval_set, file name, path) for every audio file under each eval folder, sorted."""
    out = []
    for name, folder in sorted(eval_audio.items()):
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"--eval-audio {name}={folder}: not a folder")
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in defaults.LIBSNDFILE_EXTENSIONS:
                out.append((name, p.name, p))
    return out


def _split_lookup(items: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """(eval_set, file name or stem) -> split, from the parsed eval manifests (None: not
    loaded, ``--skip-eval-filter``)."""
    out = {}
    if items is None or items.empty:
        return out
    for es, item, split in zip(items["eval_set"], items["item_id"].astype(str), items["split"].astype(str)):
        out.setdefault((es, item), split)
        out.setdefault((es, Path(item).stem), split)
    return out


def _with_abs_paths(df: pd.DataFrame, config: FilterConfig) -> pd.DataFrame:
    """The build stores paths relative to its work folder; the work folder resolves them. A
    sharded clip whose FLAC the keep policy deleted is read from its tar (a member path)."""
    if config.audio_root:
        from ..workdir import WorkDir

        df["flac_path"] = df["flac_path"].fillna("").map(WorkDir(config.audio_root).abs)
    shard_root = config.shard_root or (str(Path(config.audio_root) / "shards") if config.audio_root else None)
    df["flac_path"] = [audio_in_shards(p, shard_root, sh or "", s, i) for p, sh, s, i in zip(
        df["flac_path"].fillna(""), df["shard"], df["source"], df["source_id"])]
    return df.drop(columns=["shard"])


def _new_index(config: FilterConfig) -> FingerprintIndex:
    """An index whose lookups keep to ``config.lookup_budget`` postings
    (:meth:`FingerprintIndex.for_budget`)."""
    return FingerprintIndex.for_budget(config.lookup_budget)


def _keys(df: pd.DataFrame) -> pd.Series:
    return df["source"].astype(str) + "\x00" + df["source_id"].astype(str)


def _changed_keys(changed: dict) -> set[str]:
    return {f"{s}\x00{i}" for s, i in changed}


def _mark(rec: Record, reason: str, match: dict, duplicate_of: str = "") -> Record:
    if reason in DUPLICATE_REASONS:
        match = {**match, "status_before": rec.status}
    rec.status = Status.DROPPED
    rec.filter_reason = reason
    rec.filter_match = match
    rec.duplicate_of = duplicate_of
    return rec


def _compact(fp):
    """``fp`` as the filter holds it for the whole run: anchor times as uint16 when they fit
    (clips under 524 s: 6 bytes a landmark instead of 8; the index and the lookups widen
    them), no band features."""
    if fp is not None and len(fp.times) and 0 <= int(fp.times.min()) and int(fp.times.max()) < 1 << 16:
        fp.times = fp.times.astype(np.uint16)
    return fp


def _fingerprints(store: FingerprintStore | None, frame: pd.DataFrame) -> list:
    """Fingerprints of ``frame``'s FLACs, from the store when there is one (None: unreadable).
    In threads: decode, resampling, FFT and the numba kernels release the GIL (1.6x on 2
    cores); the store's writes are atomic, and the list keeps ``frame``'s order."""
    if store is None:
        one = lambda item: fingerprint_file(item[1], keep_bands=False)
    else:
        one = lambda item: store.get_or_compute(item[0] or "", item[1], strength=False)
    items = list(zip(frame["audio_sha256"], frame["flac_path"]))
    if len(items) < 2:
        return [_compact(one(item)) for item in items]
    with ThreadPoolExecutor(min(FINGERPRINT_THREADS, os.cpu_count() or 1)) as pool:
        return [_compact(fp) for fp in pool.map(one, items)]


class _FilterRun:
    """One filter run's state, so each step reads as one method: the records under decision,
    the verdicts so far (``changed``), and the earlier duplicate verdicts being reconsidered."""

    COLUMNS = ["source", "source_id", "audio_sha256", "audio_duration", "flac_path", "shard"]

    def __init__(self, ledger: Ledger, config: FilterConfig):
        self.ledger, self.config = ledger, config
        self.report = FilterReport()
        self.table = ledger.select(status=list(ELIGIBLE))
        self.report.eligible = len(self.table)
        self.before: dict[tuple[str, str], tuple[str, str]] = {}   # key -> (reason, duplicate_of)
        self.changed: dict[tuple[str, str], Record] = {}
        self.near_checked: set[tuple[str, str]] = set()  # took part in this run's near-dup decision
        self._rows: dict[tuple[str, str], int] | None = None

    def record(self, key: tuple[str, str]) -> Record:
        if self._rows is None:
            self._rows = {(r["source"], r["source_id"]): i for i, r in enumerate(
                self.table.select(["source", "source_id"]).to_pylist())}
        return Record.from_row(self.table.slice(self._rows[key], 1).to_pylist()[0])

    def undecided(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``df`` no step of this run has dropped yet."""
        return df[~_keys(df).isin(_changed_keys(self.changed)).to_numpy()]

    def reconsider_duplicates(self) -> None:
        """Earlier duplicate drops join the eligible records with the status they had before,
        so duplicates are decided over the set, not in arrival order."""
        dropped = self.ledger.select(status=[Status.DROPPED])
        dropped = dropped.filter(pc.is_in(dropped.column("filter_reason"),
                                          value_set=pa.array(list(DUPLICATE_REASONS), pa.string())))
        if not len(dropped):
            return
        again = []
        for row in dropped.to_pylist():
            rec = Record.from_row(row)
            self.before[rec.key] = (rec.filter_reason, rec.duplicate_of)
            rec.status = _status_before(row)
            rec.filter_reason, rec.filter_match, rec.duplicate_of = "", {}, ""
            again.append(rec)
        self.table = pa.concat_tables([self.table, records_to_table(again).cast(self.table.schema)])
        self.report.reconsidered = len(again)

    def drop_id_overlaps(self, items: pd.DataFrame | None) -> None:
        """1. Freesound/YouTube ids found in the fetched eval sets."""
        if items is None or items.empty or not len(self.table):
            return
        matches = primary_matches(find_id_overlaps(self.table, items,
                                                   youtube_window=self.config.youtube_window))
        for m in matches.itertuples(index=False):
            key = (m.source, m.source_id)
            self.changed[key] = _mark(self.record(key), EVAL_ID, {
                "eval_set": m.eval_set, "split": m.split, "matched_id": m.item_id,
                "score": 1.0, "method": m.method, "n_matches": int(m.n_matches)})
            self.report.by_source_evalset[(m.source, m.eval_set)] += 1

    def drop_exact_duplicates(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """2. The same decoded-PCM hash as a published record, or as a record kept ahead of it.
        Returns the records still undecided before this step and the published ones (in keep
        order), which the content steps start from."""
        config, report = self.config, self.report
        df = _with_abs_paths(self.table.select(self.COLUMNS).to_pandas(), config)
        df = self.undecided(df)
        published = _with_abs_paths(
            self.ledger.select(status=[Status.SHARDED]).select(self.COLUMNS).to_pandas(), config)
        published = keep_order(published, config.source_priority).reset_index(drop=True)
        shas = published["audio_sha256"].fillna("")
        first_published = published[shas != ""].drop_duplicates("audio_sha256")
        published_by_sha = dict(zip(first_published["audio_sha256"],
                                    first_published["source"] + "/" + first_published["source_id"]))
        of_published = df["audio_sha256"].map(published_by_sha)
        for row in df[of_published.notna().to_numpy()].itertuples(index=False):
            key = (row.source, row.source_id)
            self.changed[key] = _mark(self.record(key), DUP_EXACT, {
                "method": "pcm_sha256", "score": 1.0, "audio_sha256": row.audio_sha256},
                published_by_sha[row.audio_sha256])
            report.by_source_duplicate[(row.source, DUP_EXACT)] += 1
        df = df[of_published.isna().to_numpy()]
        for d in exact_duplicates(df, config.source_priority).itertuples(index=False):
            key = (d.source, d.source_id)
            self.changed[key] = _mark(self.record(key), DUP_EXACT, {
                "method": "pcm_sha256", "score": 1.0, "audio_sha256": d.audio_sha256},
                d.duplicate_of)
            report.by_source_duplicate[(d.source, DUP_EXACT)] += 1
        return df, published

    def fingerprinted(self, df: pd.DataFrame, store: FingerprintStore | None
                      ) -> tuple[pd.DataFrame, list]:
        """The kept records in keep order with readable audio, and their fingerprints; the
        rest are counted as ``no_audio``."""
        kept = keep_order(self.undecided(df), self.config.source_priority).reset_index(drop=True)
        has_audio = kept["flac_path"].fillna("").map(audio_exists)
        self.report.no_audio = int((~has_audio).sum())
        kept = kept[has_audio].reset_index(drop=True)
        fps = _fingerprints(store, kept)
        ok = [i for i, f in enumerate(fps) if f is not None]
        self.report.no_audio += len(fps) - len(ok)
        return kept.iloc[ok].reset_index(drop=True), [fps[i] for i in ok]

    def drop_content_overlaps(self, kept: pd.DataFrame, fps: list,
                              items: pd.DataFrame | None) -> np.ndarray:
        """3. Audio that matches a local eval clip. Returns which of ``kept`` are still kept."""
        config, report = self.config, self.report
        alive = np.ones(len(kept), bool)
        if not (config.eval_audio and len(kept)):
            return alive
        split_of = _split_lookup(items)
        corpus_bands = _bands_loader(list(kept["flac_path"]))
        index = _new_index(config)
        eval_meta, eval_paths = [], []
        for name, fname, path in eval_audio_files(config.eval_audio):
            fp = fingerprint_file(str(path))
            if fp is None:
                report.eval_clips_unreadable += 1
                continue
            report.eval_clips_too_short += not len(fp.hashes)
            index.add(len(eval_meta), fp)
            eval_meta.append((name, fname, fp))
            eval_paths.append(str(path))
            report.eval_clips[name] = report.eval_clips.get(name, 0) + 1
        index.build()
        matcher = ContentMatcher(index, min_votes=config.min_votes,
                                 min_correlation=config.min_correlation)
        matches = []
        for c0 in range(0, len(fps), QUERY_CHUNK):     # bounded lookups, any corpus size
            part, _ = matcher.match(fps[c0:c0 + QUERY_CHUNK],
                                    ref_bands=lambda r: eval_meta[r][2].bands,
                                    query_bands=lambda q, c0=c0: corpus_bands(c0 + q))
            matches += [Match(c0 + m.query, m.ref, m.offset, m.votes, m.score,
                              m.overlap_seconds) for m in part]
        if config.warp:                                # issue 14: sped-up/pitched/stretched copies
            matches += warp_eval_matches(
                eval_paths, list(kept["flac_path"]), {m.query for m in matches},
                ref_bands=lambda r: eval_meta[r][2].bands, query_bands=corpus_bands)
        for qi, m in sorted(best_per_query(matches).items()):
            name, fname, _ = eval_meta[m.ref]
            row = kept.iloc[qi]
            key = (row["source"], row["source_id"])
            self.changed[key] = _mark(self.record(key), EVAL_CONTENT, {
                "eval_set": name, "split": split_of.get((name, fname), split_of.get(
                    (name, Path(fname).stem), "unknown")),
                "matched_id": fname, "score": round(m.score, 4), "method": CONTENT_METHOD,
                "votes": m.votes, "offset_seconds": round(m.offset * 0.008, 3),
                "overlap_seconds": round(m.overlap_seconds, 3), **match_fields(m)})
            report.by_source_evalset[key[0], name] += 1
            alive[qi] = False
        return alive

    def drop_near_duplicates(self, kept: pd.DataFrame, fps: list, alive: np.ndarray,
                             published: pd.DataFrame, store: FingerprintStore | None) -> None:
        """4. The same recording as a published or earlier-kept record. Published clips join
        the index (from the store: no decoding) ahead of the new ones, so a new copy of a
        sharded clip is the one dropped."""
        config = self.config
        pub = published.iloc[0:0]
        if config.near_duplicates and store is not None and len(published):
            usable = [bool(h) and (h in store or audio_exists(p))
                      for h, p in zip(published["audio_sha256"].fillna(""),
                                      published["flac_path"].fillna(""))]
            pub = published[usable].reset_index(drop=True)
        pub_fps = _fingerprints(store, pub)   # stored once, then read back on every later run
        if config.near_duplicates and store is not None:
            self.report.published_unread = len(published) - sum(f is not None for f in pub_fps)
        pub = pub[[f is not None for f in pub_fps]].reset_index(drop=True)
        pub_fps = [f for f in pub_fps if f is not None]
        n_pub = len(pub)
        if not (config.near_duplicates and alive.sum() + n_pub > 1 and alive.any()):
            return
        live = np.flatnonzero(alive)
        members = pd.concat([pub, kept.iloc[live]], ignore_index=True)
        self.near_checked.update(zip(members["source"], members["source_id"]))
        member_fps = pub_fps + [fps[i] for i in live]
        features = FeatureCache(_near_loader(list(members["flac_path"].fillna("")),
                                             list(members["audio_sha256"].fillna("")), store))
        near, counters = near_duplicate_matches(member_fps, features, first_query=n_pub,
                                                lookup_budget=config.lookup_budget,
                                                min_votes=config.min_votes)
        self.report.near_duplicates = {k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in counters.items()}
        names = (members["source"] + "/" + members["source_id"]).tolist()
        for g, m in sorted(decide_near(len(members), near, n_pub).items()):
            row = members.iloc[g]
            key = (row["source"], row["source_id"])
            self.changed[key] = _mark(self.record(key), DUP_NEAR, {
                "method": NEAR_METHOD, "score": round(m.score, 4), "votes": m.votes,
                "vote_fraction": round(m.vote_fraction, 4),
                "coverage": round(m.coverage, 3), "residual_db": round(m.residual_db, 2),
                "detail": round(m.detail, 3), "matched_id": names[m.a]}, names[m.a])
            self.report.by_source_duplicate[(key[0], DUP_NEAR)] += 1

    def write_verdicts(self, t0: float) -> StageStats:
        """Write what changed: a reconsidered duplicate whose verdict is unchanged is not
        rewritten; one that is now kept gets back the status it had before."""
        report = self.report
        write = dict(self.changed)
        n_dropped = len(self.changed)
        for key, (reason, of) in self.before.items():
            if key in self.changed:
                if (self.changed[key].filter_reason, self.changed[key].duplicate_of) == (reason, of):
                    del write[key]
            elif reason == DUP_NEAR and key not in self.near_checked:
                # not decided this run (its audio is gone, or near duplicates are off): it stays
                report.dropped[reason] += 1
                report.by_source_duplicate[(key[0], reason)] += 1
                n_dropped += 1
            else:
                write[key] = self.record(key)   # its status before the drop, filter fields cleared
                report.reinstated += 1
        for rec in self.changed.values():
            report.dropped[rec.filter_reason] += 1
        self.ledger.write(write.values(), tag="filter")
        report.seconds = time.time() - t0
        inputs = report.eligible + report.reconsidered
        return StageStats("filter", inputs=inputs, succeeded=inputs - n_dropped,
                          dropped=n_dropped, seconds=report.seconds,
                          failures=Counter({f"dropped:{k}": v for k, v in report.dropped.items()}),
                          extra={"report": report.as_dict()})


def filter_ledger(ledger: Ledger, config: FilterConfig | None = None) -> tuple[FilterReport, StageStats]:
    """Run all four filters over the ledger's eligible records and write the verdicts back."""
    config = config or FilterConfig()
    t0 = time.time()
    run = _FilterRun(ledger, config)
    if not run.report.eligible:   # nothing new since the last run (e.g. a rerun of a finished build)
        return run.report, StageStats("filter", extra={"report": run.report.as_dict()})
    run.reconsider_duplicates()
    items = evalsets_mod.load(config.evalsets_cache, roles=config.roles) if config.eval_ids else None
    run.drop_id_overlaps(items)
    undecided, published = run.drop_exact_duplicates()
    if config.content and (config.eval_audio or config.near_duplicates):
        store = FingerprintStore(config.fingerprint_dir) if config.fingerprint_dir else None
        if store is not None:
            store.remove_partial()            # the ledger lock says no other filter runs
        kept, fps = run.fingerprinted(undecided, store)
        alive = run.drop_content_overlaps(kept, fps, items)
        run.drop_near_duplicates(kept, fps, alive, published, store)
    return run.report, run.write_verdicts(t0)
