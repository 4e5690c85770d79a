"""Duplicates inside the corpus: exact (same decoded PCM) and near (the same recording).

**Near duplicate** means the same recording, not two sounds that share a fragment or a
character. Two clips are near duplicates when, at one alignment (found by landmark votes,
:mod:`content_overlap`):

* the aligned part covers at least :data:`NEAR_MIN_COVERAGE` (80%) of the shorter clip - a
  re-encode, a gain change or a trim that keeps >= 80% of a clip qualifies; a shared 0.5 s
  fragment of two 3 s clips does not;
* over that whole part, the envelopes of 100 log bands (:data:`NEAR_BANDS` geometric edges
  rounded to FFT bins) correlate at
  >= :data:`NEAR_MIN_CORRELATION` (0.8) after each band's and each frame's mean is removed
  (finer bands than the eval-overlap check's 48: two tonal sounds whose partials fall in
  the same coarse band are told apart);
* and the landmark votes at that alignment are >= :data:`NEAR_MIN_VOTE_FRACTION` (10%) of
  the shorter clip's landmarks, or the correlation is >= :data:`NEAR_STRONG_CORRELATION`
  (0.93) (noise-like audio keeps its envelope through a lossy codec but not its peaks);
* and the two are the same *signal*, not two similar sounds (:func:`residual_checks`): after
  one gain, their band energies differ by at most :data:`NEAR_MAX_RESIDUAL_DB` (3 dB RMS;
  an MP3 copy differs by <= 2.7) and their frame-to-frame changes (onsets, flicker,
  modulation) correlate at >= :data:`NEAR_MIN_DETAIL` (0.4; copies >= 0.47). Two FM tones
  or harmonic stacks on one pitch path pass the envelope correlation (which removes each
  band's mean, so timbre does not count) but not these.

No chaining: a record is dropped only as the duplicate of a record it matched *directly*
and that is kept (:func:`decide_near`); A~B and B~C with A and C unrelated never drop C
through B.

Keep rule (one copy survives, the others get ``duplicate_of`` = kept "source/source_id"):

1. source priority: :data:`DEFAULT_SOURCE_PRIORITY` (earlier wins; sources not listed come
   after, alphabetically). Sources with human-written captions and clear licences first, label-
   derived (AudioSet) last, because a duplicate's kept copy carries the caption into training;
2. longer ``audio_duration`` (a full upload beats its excerpt);
3. ``(source, source_id)`` ascending, so the choice never depends on input order.

Records already in shards come first (they are published and stay). Every decision is a
function of the set of records: members are put in this canonical order before indexing,
so the index, the lookups and the greedy keep pass see the same thing however the records
arrived (one run, two runs, any order).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..defaults import LOOKUP_BUDGET

DEFAULT_SOURCE_PRIORITY = ("freesound", "bbc", "soundbible", "epidemic", "audiostock",
                           "free_to_use_sounds", "sonniss", "we_sound_effects", "paramount",
                           "local", "audioset")


def priority_rank(sources: pd.Series, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.Series:
    order = {s: i for i, s in enumerate(priority)}
    return sources.map(lambda s: order.get(s, len(order))).astype("int64")


def keep_order(df: pd.DataFrame, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.DataFrame:
    """``df`` (source, source_id, audio_duration, ...) sorted best-to-keep first."""
    out = df.assign(_rank=priority_rank(df["source"], priority),
                    _dur=-pd.to_numeric(df["audio_duration"], errors="coerce").fillna(0.0))
    out = out.sort_values(["_rank", "_dur", "source", "source_id"], kind="stable")
    return out.drop(columns=["_rank", "_dur"])


def exact_duplicates(df: pd.DataFrame, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.DataFrame:
    """Rows sharing ``audio_sha256`` (decoded PCM), all but the kept one per hash.

    Returns source, source_id, duplicate_of, audio_sha256 for every dropped row (vectorised:
    one sort and one groupby over the whole table)."""
    cols = ["source", "source_id", "duplicate_of", "audio_sha256"]
    have = df[df["audio_sha256"].fillna("") != ""]
    if have.empty:
        return pd.DataFrame(columns=cols)
    ordered = keep_order(have, priority)
    first = ordered.groupby("audio_sha256", sort=False).head(1)
    keeper = (first["source"] + "/" + first["source_id"]).set_axis(first["audio_sha256"])
    dropped = ordered[~ordered.index.isin(first.index)].copy()
    dropped["duplicate_of"] = dropped["audio_sha256"].map(keeper)
    return dropped[cols].reset_index(drop=True)


NEAR_MIN_COVERAGE = 0.8
NEAR_MIN_CORRELATION = 0.8
NEAR_STRONG_CORRELATION = 0.93
NEAR_MIN_VOTE_FRACTION = 0.1
NEAR_MAX_RESIDUAL_DB = 3.0
NEAR_MIN_DETAIL = 0.4
#: cells this far under a clip's loudest cell in the overlap are floored (as in the
#: envelope correlation): near-silence and codec-removed detail carry no identity
NEAR_RANGE_DB = 30.0
#: in the residual, a cell within NEAR_PRESENT_DB of either clip's loudest cell is compared
#: down to NEAR_RESIDUAL_RANGE_DB under each clip's loudest (the other cells at the 30 dB
#: floors): content one clip has and the other lacks then counts as the level it has, not as
#: its height over the other's floor (a noise layer 22-30 dB down in only one of two low
#: sweeps, clips 811/3125 of generator v2, counted ~1 dB: residual 2.98, now 4.31). Codec
#: copies keep what is within 24 dB (MP3 128k: <= 2.76 with this, 2.69 without; 36 dB
#: everywhere took MP3 copies to 3.31, 25 dB to 2.83)
NEAR_PRESENT_DB = 24.0
NEAR_RESIDUAL_RANGE_DB = 45.0
#: a reference is nominated for a query when it shares this share of the shorter clip's
#: landmarks at one offset (copies share >= 6.9%: a trim whose frames fall between the
#: original's; MP3 >= 15%): chance nominations between similar sounds, which grow with the
#: corpus, halve against the eval check's 2%
NEAR_MIN_NOMINATION = 0.04
#: correlation a pair must reach at one of its voted offsets before the +-2 frame search
#: (true copies of the recall set: >= 0.51 at their voted offsets, before the search)
NEAR_SCREEN_CORRELATION = 0.4
#: voted offsets of a pair that are checked (+-2 feature frames each), best-voted first: a
#: copy's alignment is its best-voted offset; every offset is a full correlation
NEAR_OFFSETS = 3
NEAR_BANDS = 128
#: queries looked up per index call: the vote kernel's arrays and the candidate list stay
#: bounded whatever the corpus size (~20 MB of lookup arrays for 500 clips of ~500
#: landmarks; at 2,000 they were ~70 MB, and a 1,000-clip corpus never filled a chunk)
QUERY_CHUNK = 500
#: references nominated per query: a popular sound has many copies in a corpus, and the
#: kept one must not be crowded out of the list by the others (the eval check's 5 is too few)
NEAR_TOP = 16


def near_features(samples: np.ndarray, sr: int) -> np.ndarray:
    """Log energies of :data:`NEAR_BANDS` bands (62 Hz-7 kHz, 16 ms frames), float16: the
    near-duplicate confirmation features (same STFT as the fingerprint)."""
    from . import fingerprint as fp

    return near_features_spectrogram(fp._log_spectrogram(fp.to_mono_16k(samples, sr)))


def near_features_spectrogram(S: np.ndarray) -> np.ndarray:
    """:func:`near_features` from the clip's log spectrogram (computed once with its
    fingerprint in the build's workers, :func:`fpstore.fingerprint_and_near_file`)."""
    from . import fingerprint as fp

    power = np.power(10.0, S[:, fp.F_MIN:fp.F_MAX] / 10.0, dtype=np.float32)
    cums = np.concatenate([np.zeros((len(power), 1), np.float32), np.cumsum(power, axis=1)], axis=1)
    e = _NEAR_EDGES - fp.F_MIN
    e = cums[:, e[1:]] - cums[:, e[:-1]]
    n = (len(e) // fp.BAND_DECIMATE) * fp.BAND_DECIMATE
    if n:
        e = e[:n].reshape(-1, fp.BAND_DECIMATE, e.shape[1]).mean(axis=1)
    return (10.0 * np.log10(e + 1e-10)).astype(np.float16)


def _near_edges() -> np.ndarray:
    from .fingerprint import F_MAX, F_MIN
    return np.unique(np.round(np.geomspace(F_MIN, F_MAX, NEAR_BANDS + 1)).astype(int))


_NEAR_EDGES = _near_edges()


#: the near-duplicate feature cache's budget: fixed, so the filter's memory does not grow
#: with the corpus (~200 clips of 1.75 s as float32). A miss is one read from the
#: fingerprint store (~0.05 ms), not a decode: the budget only saves those reads.
FEATURE_CACHE_BYTES = 8 << 20


class FeatureCache:
    """``load(i)`` memoised up to ``max_bytes`` (least recently used out), held as float32
    (the correlation kernels' type: converting once per load, not twice per pair, was 9%
    of the matching time at 8k clips)."""

    def __init__(self, load: Callable[[int], "np.ndarray | None"],
                 max_bytes: int = FEATURE_CACHE_BYTES):
        self.load, self.max_bytes = load, max_bytes
        self._d: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self.bytes = 0
        self.loads = 0

    def __call__(self, i: int) -> "np.ndarray | None":
        if i in self._d:
            self._d.move_to_end(i)
            return self._d[i]
        v = self.load(i)
        if v is not None:
            v = np.ascontiguousarray(v, np.float32)
        self.loads += 1
        self._d[i] = v
        self.bytes += 0 if v is None else v.nbytes
        while self.bytes > self.max_bytes and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self.bytes -= 0 if old is None else old.nbytes
        return v


@dataclass(frozen=True)
class NearMatch:
    """A confirmed pair ``a < b`` (member positions): ``offset`` = b frame - a frame (8 ms)."""

    a: int
    b: int
    offset: int
    votes: int
    vote_fraction: float
    score: float
    coverage: float
    residual_db: float = 0.0
    detail: float = 1.0


def residual_checks(fa: np.ndarray, fb: np.ndarray, d: int) -> tuple[float, float]:
    """(residual dB, detail correlation) of features ``fa``/``fb`` aligned at feature offset
    ``d`` (frame ``i`` of a against ``i + d`` of b), each floored :data:`NEAR_RANGE_DB` under
    its loudest cell. Residual: RMS over cells loud in either clip of their dB difference less
    its median (one gain), cells within :data:`NEAR_PRESENT_DB` of the top in either clip
    compared with floors :data:`NEAR_RESIDUAL_RANGE_DB` deep. Detail: correlation of the frame-to-frame differences, each
    frame's mean removed (a loudness contour shared by any two sounds cancels)."""
    i0, i1 = max(0, -d), min(len(fa), len(fb) - d)
    x = np.asarray(fa[i0:i1], np.float32)
    y = np.asarray(fb[i0 + d:i1 + d], np.float32)
    if len(x) < 2:
        return float("inf"), -1.0
    mx, my = x.max(), y.max()
    fx, fy = mx - NEAR_RANGE_DB, my - NEAR_RANGE_DB
    loud = (x > fx) | (y > fy)
    # a cell clearly present in either clip is compared down to a deeper floor: content that
    # one clip has and the other lacks differs by what it is, not by its height over a floor
    strong = (x > mx - NEAR_PRESENT_DB) | (y > my - NEAR_PRESENT_DB)
    deep = np.maximum(x, mx - NEAR_RESIDUAL_RANGE_DB) - np.maximum(y, my - NEAR_RESIDUAL_RANGE_DB)
    x, y = np.maximum(x, fx), np.maximum(y, fy)
    diff = np.where(strong, deep, x - y)[loud]
    residual = float(np.sqrt(np.mean((diff - np.median(diff)) ** 2))) if len(diff) else float("inf")
    dx, dy = np.diff(x, axis=0), np.diff(y, axis=0)
    dx -= dx.mean(axis=1, keepdims=True)
    dy -= dy.mean(axis=1, keepdims=True)
    den = float(np.sqrt(np.sum(dx * dx, dtype=np.float64) * np.sum(dy * dy, dtype=np.float64)))
    detail = float(np.sum(dx * dy, dtype=np.float64) / den) if den > 0 else -1.0
    return residual, detail


def confirm_pair(fa: np.ndarray, fb: np.ndarray, offsets: Sequence[int], votes: int,
                 hashes_a: int, hashes_b: int) -> NearMatch | None:
    """The near-duplicate rule (module docstring) for one candidate pair (a, b) with band
    features ``fa``/``fb`` and voted offsets (b frame - a frame, 8 ms); positions unset."""
    from .fingerprint import BAND_DECIMATE, correlation_at

    shorter = min(len(fa), len(fb))
    need = max(12, math.ceil(NEAR_MIN_COVERAGE * shorter))
    covers = lambda d: min(len(fa), len(fb) - d) - max(0, -d) >= need
    # only alignments whose overlap can cover enough of the shorter clip; the voted
    # offsets themselves first: a pair that does not come near the threshold there is not
    # searched +-2 frames (most candidates are chance; 5x less work for them)
    voted = [d for d in sorted({round(o / BAND_DECIMATE) for o in offsets}) if covers(d)]
    if not voted or correlation_at(fa, fb, voted, min_overlap=need)[0] < NEAR_SCREEN_CORRELATION:
        return None
    near = [d for d in sorted({v + s for v in voted for s in range(-2, 3)}) if covers(d)]
    score, n, d = correlation_at(fa, fb, near, min_overlap=need)
    fraction = votes / max(1, min(hashes_a, hashes_b))
    if d is None or score < NEAR_MIN_CORRELATION:
        return None
    if fraction < NEAR_MIN_VOTE_FRACTION and score < NEAR_STRONG_CORRELATION:
        return None
    # the same signal lines up to the frame: the alignment with the least residual within
    # +-2 feature frames of the best-correlated one (looped or steady sounds correlate
    # nearly as well a few frames off, where a copy's residual is already several dB)
    residual, detail, d = min(residual_checks(fa, fb, x) + (x,) for x in range(d - 2, d + 3)
                              if covers(x))
    if residual > NEAR_MAX_RESIDUAL_DB or detail < NEAR_MIN_DETAIL:
        return None
    return NearMatch(-1, -1, d * BAND_DECIMATE, votes, fraction, score, n / shorter,
                     residual, detail)


def near_duplicate_matches(fps: Sequence, features: Callable[[int], "np.ndarray | None"], *,
                           first_query: int = 0, lookup_budget: int = LOOKUP_BUDGET,
                           min_votes: int = 6, chunk: int = QUERY_CHUNK) -> tuple[list[NearMatch], dict]:
    """Confirmed near-duplicate pairs among ``fps`` (members in canonical keep order; those
    before ``first_query`` are references only: published clips, checked when they were new).

    One index over every member; queries are looked up ``chunk`` at a time, so memory and
    cost per record do not grow with the corpus beyond the lookup's posting budget. Each
    unordered pair is confirmed once, with the offsets both directions voted for in the
    chunk where it first appears. Returns the matches and counters (candidates, pairs
    checked, feature loads)."""
    from .content_overlap import FingerprintIndex

    t0 = time.perf_counter()
    index = FingerprintIndex.for_budget(lookup_budget)
    for j, fp in enumerate(fps):
        index.add(j, fp)
    index.build()
    frames = np.array([fp.n_frames for fp in fps], np.int64)
    hashes = np.array([len(fp) for fp in fps], np.int64)
    seen: set[tuple[int, int]] = set()
    out: list[NearMatch] = []
    stats = {"candidates": 0, "pairs_checked": 0, "pairs_prefiltered": 0,
             "index_s": time.perf_counter() - t0, "lookup_s": 0.0, "confirm_s": 0.0,
             "queries": max(0, len(fps) - first_query)}
    for s in range(first_query, len(fps), chunk):
        e = min(len(fps), s + chunk)
        t0 = time.perf_counter()
        cands = index.candidates(fps[s:e], min_votes=min_votes, min_fraction=NEAR_MIN_NOMINATION,
                                 top=NEAR_TOP, offsets=8, exclude_self=list(range(s, e)))
        stats["lookup_s"] += time.perf_counter() - t0
        stats["candidates"] += len(cands)
        pairs: dict[tuple[int, int], dict[int, int]] = {}     # pair -> offset -> votes
        for c in cands:
            q, r = s + c.query, c.ref
            a, b, off = (q, r, c.offset) if q < r else (r, q, -c.offset)
            if (a, b) in seen:
                continue
            # geometric prefilter: the alignment must be able to cover the shorter clip
            shorter = min(frames[a], frames[b])
            overlap = min(frames[a], frames[b] - off) - max(0, -off)
            if overlap < NEAR_MIN_COVERAGE * shorter - 8:
                stats["pairs_prefiltered"] += 1
                continue
            entry = pairs.setdefault((a, b), {})
            entry[off] = max(entry.get(off, 0), c.votes)
        t0 = time.perf_counter()
        for (a, b) in sorted(pairs):
            voted = pairs[(a, b)]
            seen.add((a, b))
            stats["pairs_checked"] += 1
            fa, fb = features(a), features(b)
            if fa is None or fb is None:
                continue
            best = sorted(voted, key=lambda o: (-voted[o], o))[:NEAR_OFFSETS]
            m = confirm_pair(fa, fb, best, max(voted.values()), hashes[a], hashes[b])
            if m is not None:
                out.append(NearMatch(a, b, m.offset, m.votes, m.vote_fraction, m.score, m.coverage,
                                     m.residual_db, m.detail))
        stats["confirm_s"] += time.perf_counter() - t0
    out.sort(key=lambda m: (m.a, m.b))
    return out, stats


def decide_near(n: int, matches: Sequence[NearMatch], n_published: int = 0) -> dict[int, NearMatch]:
    """Dropped member -> the match with the kept member it duplicates.

    Members are in canonical keep order (published first). One pass in that order: a member
    is dropped when it matched an earlier member that is kept; otherwise it is kept. Its
    ``duplicate_of`` is then a clip it matched directly (the best-scoring kept one, ties to
    the earlier), never one reached through a chain, and the result depends only on the
    set of members and matches, not on the order they arrived in."""
    earlier: dict[int, list[NearMatch]] = {}
    for m in matches:
        earlier.setdefault(m.b, []).append(m)        # a < b: a comes first
    kept = np.ones(n, bool)
    dropped: dict[int, NearMatch] = {}
    for i in sorted(earlier):
        if i < n_published:
            continue                                  # published: stays
        live = [m for m in earlier[i] if kept[m.a]]
        if live:
            best = min(live, key=lambda m: (-m.score, m.a))
            kept[i] = False
            dropped[i] = best
    return dropped
