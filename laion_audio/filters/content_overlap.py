"""Content matching: an inverted index of landmark hashes, offset voting, then the aligned check.

The index is three numpy arrays sorted by hash (hash, clip, anchor time) plus a table of
bucket starts indexed by hash value, so finding a query hash's postings is two gathers. Votes
over (clip, time offset) pairs are counted by one numba kernel, :func:`_vote_peaks`, linear in
postings (dense prefilter counters, then a hash table; no sort), for a batch of queries at
once. A reference that shares at least ``min_votes`` hashes at one offset (+-1 frame) is a
*candidate*; :class:`ContentMatcher` confirms it with
:func:`fingerprint.aligned_correlation` on band envelopes, the only thing that decides.

Over-full buckets (a hash that half the corpus contains, e.g. a steady hum) carry no
evidence and cost the most; buckets above ``max_bucket`` postings are skipped at query time,
and a query whose hashes would touch more than ``max(postings_per_hash * n_hashes,
min_budget)`` postings keeps only its rarest hashes (an adaptive stop-list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numba
import numpy as np

from .fingerprint import Fingerprint, aligned_correlation



@dataclass
class Candidate:
    query: int                 # position of the query in the batch
    ref: int                   # reference position in the index
    offset: int                # reference frame - query frame (8 ms frames)
    votes: int


@dataclass
class Match:
    query: int
    ref: int
    offset: int
    votes: int
    score: float               # aligned envelope correlation
    overlap_seconds: float


class FingerprintIndex:
    """Append fingerprints, then :meth:`build`; refs are numbered in insertion order."""

    def __init__(self, max_bucket: int = 5000, postings_per_hash: int = 12, min_budget: int = 25_000):
        self.max_bucket = max_bucket
        self.postings_per_hash = postings_per_hash
        self.min_budget = min_budget     # below this many postings a query is never thinned
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_hashes: list[int] = []
        self.keys: list[Hashable] = []
        self._built = False

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Hashable, fp: Fingerprint) -> int:
        ref = len(self.keys)
        self.keys.append(key)
        self.n_hashes.append(len(fp))
        if len(fp):
            self._parts.append((fp.hashes, np.full(len(fp), ref, np.int32), fp.times))
        self._built = False
        return ref

    def add_raw(self, hashes: np.ndarray, refs: np.ndarray, times: np.ndarray,
                keys: Sequence[Hashable], n_hashes: Sequence[int]) -> None:
        """Bulk insert (benchmarks, reloading a saved index): refs are offsets into ``keys``."""
        base = len(self.keys)
        self.keys.extend(keys)
        self.n_hashes.extend(n_hashes)
        self._parts.append((hashes.astype(np.uint32), (refs + base).astype(np.int32),
                            times.astype(np.int32)))
        self._built = False

    def build(self) -> "FingerprintIndex":
        if self._parts:
            h = np.concatenate([p[0] for p in self._parts] + [getattr(self, "hash", np.zeros(0, np.uint32))])
            r = np.concatenate([p[1] for p in self._parts] + [getattr(self, "ref", np.zeros(0, np.int32))])
            t = np.concatenate([p[2] for p in self._parts] + [getattr(self, "time", np.zeros(0, np.int32))])
            order = np.argsort(h, kind="stable")
            self.hash, self.ref, self.time = h[order], r[order], t[order]
            self._parts = []
        elif not hasattr(self, "hash"):
            self.hash = np.zeros(0, np.uint32)
            self.ref = np.zeros(0, np.int32)
            self.time = np.zeros(0, np.int32)
        self._n_hashes_arr = np.asarray(self.n_hashes, np.int64)
        # bucket starts indexed by hash value: a lookup is two gathers instead of two binary
        # searches over the whole index (only for small hashes; landmarks are 22 bits)
        self._bucket_start = None
        if len(self.hash) and int(self.hash[-1]) < 1 << 24:
            self._bucket_start = np.concatenate(
                [[0], np.cumsum(np.bincount(self.hash, minlength=int(self.hash[-1]) + 1))])
        self._built = True
        return self

    @property
    def nbytes(self) -> int:
        return self.hash.nbytes + self.ref.nbytes + self.time.nbytes

    def _buckets(self, qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first posting, posting count) of each query hash: a direct table when hashes are
        small integers (landmarks are 22 bits), else a binary search."""
        if self._bucket_start is not None:
            top = len(self._bucket_start) - 1
            q = qh.astype(np.int64)
            lo = self._bucket_start[np.minimum(q, top)]
            return lo, self._bucket_start[np.minimum(q + 1, top)] - lo
        lo = np.searchsorted(self.hash, qh, side="left")
        return lo, np.searchsorted(self.hash, qh, side="right") - lo

    def candidates(self, queries: Sequence[Fingerprint], *, min_votes: int = 6,
                   min_fraction: float = 0.02, top: int = 5, offsets: int = 4,
                   exclude_self: Sequence[int] | None = None) -> list[Candidate]:
        """Offset-voted candidates for a batch of query fingerprints.

        ``min_fraction`` scales the vote threshold with the shorter clip's hash count (the
        hashes the query kept under its budget), so a long noisy query does not nominate by
        chance. ``exclude_self[i]`` is a ref to skip for query ``i`` (the query itself when the
        index holds the corpus).
        """
        if not self._built:
            self.build()
        if not len(queries) or not len(self.hash):
            return []
        qn = np.array([len(q) for q in queries], np.int64)
        qh = np.concatenate([q.hashes for q in queries]).astype(np.uint32, copy=False)
        qt = np.concatenate([q.times for q in queries]).astype(np.int64)
        qi = np.repeat(np.arange(len(queries), dtype=np.int64), qn)
        lo, cnt = self._buckets(qh)
        cnt[cnt > self.max_bucket] = 0
        # per-query posting budget: every hash carries the same evidence for the true
        # reference, but popular ones cost the most, so keep the rarest hashes whose postings
        # fit in max(postings_per_hash * n_hashes, min_budget) (an adaptive stop-list)
        budget = np.maximum(self.postings_per_hash * qn, self.min_budget)
        keep = _keep_rarest(cnt, qn, budget)
        qn = np.bincount(qi[keep], minlength=len(queries)).astype(np.int64)
        lo, cnt, qt, qi = lo[keep], cnt[keep], qt[keep], qi[keep]
        if not int(cnt.sum()):
            return []
        ex = np.full(len(queries), -1, np.int64) if exclude_self is None else \
            np.asarray(exclude_self, np.int64)
        uq, ur, uo, votes = _vote_peaks(lo, cnt, qt, qi, qn, ex, self.ref, self.time,
                                        self._n_hashes_arr, len(self.keys),
                                        float(min_votes), float(min_fraction))
        if not len(uq):
            return []
        # per (query, ref): its best ``offsets`` offsets (looped material votes for several
        # offsets a period apart; the check picks the right one); per query: its ``top`` refs
        order = np.lexsort((uo, -votes, ur, uq))
        uq, ur, uo, votes = uq[order], ur[order], uo[order], votes[order]
        pair = np.concatenate([[0], np.cumsum((uq[1:] != uq[:-1]) | (ur[1:] != ur[:-1]))])
        pair_start = np.searchsorted(pair, pair, side="left")
        keep = (np.arange(len(pair)) - pair_start) < offsets
        first = (np.arange(len(pair)) - pair_start) == 0
        # rank refs inside each query by their best vote
        fq, fr, fv = uq[first], ur[first], votes[first]
        o2 = np.lexsort((fr, -fv, fq))
        rank = np.empty(len(fq), np.int64)
        fq_sorted = fq[o2]
        rank[o2] = np.arange(len(fq)) - np.searchsorted(fq_sorted, fq_sorted, side="left")
        keep &= rank[pair] < top
        return [Candidate(int(a), int(b), int(c), int(d))
                for a, b, c, d in zip(uq[keep], ur[keep], uo[keep], votes[keep])]


_EMPTY = np.int64(-1)
_BIN_SHIFT = 5           # prefilter offset bins of 32 frames (a peak's evidence spans +-3)
_FOLD = 8                # ... folded modulo 8 per ref, so the counter is dense and small
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _keep_rarest(cnt, qn, budget):
    """Per query (hashes grouped by query, ``qn`` each): keep its rarest hashes, ties in
    order, while their postings fit in ``budget[q]``."""
    keep = np.zeros(len(cnt), np.bool_)
    k0 = 0
    for q in range(len(qn)):
        k1 = k0 + qn[q]
        order = np.argsort(cnt[k0:k1], kind="mergesort")
        used = 0
        for i in order:
            used += cnt[k0 + i]
            if used > budget[q]:
                break
            keep[k0 + i] = True
        k0 = k1
    return keep


@numba.njit(cache=True, nogil=True)
def _slot(keys, key, mask):
    """Open-addressing slot of ``key`` (its own, or the empty one where it would go)."""
    h = (np.uint64(key) * _HASH_MUL) >> np.uint64(32)
    i = np.int64(h & np.uint64(mask))
    while keys[i] != _EMPTY and keys[i] != key:
        i = (i + 1) & mask
    return i


@numba.njit(cache=True, nogil=True)
def _count_at(keys, vals, key, mask):
    i = _slot(keys, key, mask)
    return vals[i] if keys[i] == key else 0


@numba.njit(cache=True, nogil=True)
def _vote_peaks(lo, cnt, qt, qi, qn, ex, ref, time, n_hashes, n_refs, min_votes, min_fraction):
    """(query, ref, offset, votes) of every offset peak that passes the vote threshold.

    Query hashes arrive grouped by query; query hash ``k`` hits postings
    ``lo[k] : lo[k] + cnt[k]``. Per query:
    (1) hits are counted per (ref, 32-frame offset bin, folded modulo 8) in a dense counter.
        A peak at offset ``o`` with votes ``>= need`` (``need = max(min_votes,
        ceil(min_fraction * min(query hashes, ref hashes)))``) has all its votes, and its
        neighbours' counts, within ``o +-3``, i.e. in the bins of its postings +-1; so a posting
        whose three bins (folding only adds) hold fewer than ``need`` hits cannot count for,
        or next to, any kept peak and is dropped. Noise refs mostly go here, cheaply.
    (2) the survivors are counted per exact (ref, offset) in an open-addressing hash table;
    (3) an offset's votes are its count plus its +-1 neighbours' (one-frame tolerance), and it
        is kept when it reaches ``need`` and is a local maximum along the offset axis (ties go
        to the lower offset: strictly above the offset below, at least the offset above; an
        offset with no hits of its own is no neighbour). Linear in postings, no sort.
    """
    max_load = 0
    k0 = 0
    while k0 < len(cnt):
        k1, load = k0, 0
        while k1 < len(cnt) and qi[k1] == qi[k0]:
            load += cnt[k1]
            k1 += 1
        max_load = max(max_load, load)
        k0 = k1
    size = 16
    while size < 2 * max_load:
        size *= 2
    mask = size - 1
    keys = np.full(size, _EMPTY, np.int64)
    vals = np.zeros(size, np.int32)
    used = np.empty(max_load, np.int64)
    bins = np.empty(max_load, np.int64)      # each posting's prefilter counter, pass 1 -> 2, 3
    # saturating uint8 counters: the table stays in L2 (800 kB at 100k refs). The prefilter
    # only rejects below min(need, 255); the exact count in step (2) decides the rest
    per_bin = np.zeros(n_refs * _FOLD, np.uint8)
    cap = 1024
    out_q = np.empty(cap, np.int64)
    out_r = np.empty(cap, np.int64)
    out_o = np.empty(cap, np.int64)
    out_v = np.empty(cap, np.int64)
    n_out = 0
    k0 = 0
    while k0 < len(cnt):
        q = qi[k0]
        k1 = k0
        while k1 < len(cnt) and qi[k1] == q:
            k1 += 1
        n_post = 0
        for k in range(k0, k1):
            for p in range(lo[k], lo[k] + cnt[k]):
                off = np.int64(time[p]) - qt[k]
                j = np.int64(ref[p]) * _FOLD + ((off >> _BIN_SHIFT) & (_FOLD - 1))
                bins[n_post] = j
                n_post += 1
                if per_bin[j] < 255:
                    per_bin[j] += 1
        n_used = 0
        n_post = 0
        for k in range(k0, k1):
            for p in range(lo[k], lo[k] + cnt[k]):
                j = bins[n_post]
                n_post += 1
                base = j & ~np.int64(_FOLD - 1)
                b = j & (_FOLD - 1)
                near = (np.int64(per_bin[base + ((b - 1) & (_FOLD - 1))])
                        + np.int64(per_bin[j])
                        + np.int64(per_bin[base + ((b + 1) & (_FOLD - 1))]))
                if near < min_votes:
                    continue
                r = base // _FOLD
                if r == ex[q]:
                    continue
                need = max(min_votes, np.ceil(min_fraction * min(qn[q], n_hashes[r])))
                if near < min(need, 255):
                    continue
                off = np.int64(time[p]) - qt[k]
                key = (np.int64(r) << 32) | (off + (1 << 31))
                i = _slot(keys, key, mask)
                if keys[i] != key:
                    keys[i] = key
                    used[n_used] = i
                    n_used += 1
                vals[i] += 1
        for u in range(n_used):
            i = used[u]
            key = keys[i]
            r = key >> 32
            c_lo = _count_at(keys, vals, key - 1, mask)
            c_hi = _count_at(keys, vals, key + 1, mask)
            v = vals[i] + c_lo + c_hi
            need = max(min_votes, np.ceil(min_fraction * min(qn[q], n_hashes[r])))
            if v < need:
                continue
            if c_lo > 0 and v <= c_lo + vals[i] + _count_at(keys, vals, key - 2, mask):
                continue
            if c_hi > 0 and v < c_hi + vals[i] + _count_at(keys, vals, key + 2, mask):
                continue
            if n_out == cap:
                cap *= 2
                out_q = np.concatenate((out_q, np.empty(cap - n_out, np.int64)))
                out_r = np.concatenate((out_r, np.empty(cap - n_out, np.int64)))
                out_o = np.concatenate((out_o, np.empty(cap - n_out, np.int64)))
                out_v = np.concatenate((out_v, np.empty(cap - n_out, np.int64)))
            out_q[n_out] = q
            out_r[n_out] = r
            out_o[n_out] = (key & 0xFFFFFFFF) - (1 << 31)
            out_v[n_out] = v
            n_out += 1
        for u in range(n_used):
            keys[used[u]] = _EMPTY
            vals[used[u]] = 0
        for i in range(n_post):
            per_bin[bins[i]] = 0
        k0 = k1
    return out_q[:n_out], out_r[:n_out], out_o[:n_out], out_v[:n_out]


BandsLookup = Callable[[int], "np.ndarray | None"]


class ContentMatcher:
    """Index + confirmation. ``ref_bands(ref)`` and ``query_bands(i)`` give band features for
    the second check (kept in memory, or recomputed from audio by the caller)."""

    def __init__(self, index: FingerprintIndex, *, min_votes: int = 6, min_fraction: float = 0.02,
                 min_correlation: float = 0.7, min_overlap_seconds: float = 0.2, top: int = 5,
                 offsets: int = 8, dense_span: int = 256):
        self.index = index
        self.dense_span = dense_span
        self.min_votes = min_votes
        self.min_fraction = min_fraction
        self.min_correlation = min_correlation
        self.min_overlap_seconds = min_overlap_seconds
        self.top = top
        self.offsets = offsets

    def _confirm(self, qb: np.ndarray, rb: np.ndarray, offsets: list[int],
                 votes: int) -> tuple[float, int, int]:
        """Best aligned correlation over a pair's voted offsets: (score, overlap, offset).

        Each voted offset is checked +-2 feature frames. Repetitive sounds (a buzz, a loop, a
        sustained chord) vote for a comb of offsets one period apart, and the true one need
        not be among the best-voted; so when none confirms, the pair's best offset has at
        least ``4 * min_votes`` votes (a comb, not a chance hit) and the voted offsets span at
        most ``dense_span`` frames, the whole span is searched feature frame by feature frame
        (a fallback: it costs ~10x the first pass, and true copies rarely need it)."""
        from .fingerprint import BAND_DECIMATE, correlation_at

        near = sorted({round(o / BAND_DECIMATE) + s for o in offsets for s in range(-2, 3)})
        score, n, d = correlation_at(qb, rb, near)
        lo, hi = min(offsets), max(offsets)
        if (score < self.min_correlation and 0 < hi - lo <= self.dense_span
                and votes >= 4 * self.min_votes):
            checked = set(near)
            dense = [x for x in range(lo // BAND_DECIMATE - 3, hi // BAND_DECIMATE + 4)
                     if x not in checked]
            s2, n2, d2 = correlation_at(qb, rb, dense)
            if s2 > score:
                score, n, d = s2, n2, d2
        return score, n, (offsets[0] if d is None else d * BAND_DECIMATE)

    def match(self, queries: Sequence[Fingerprint], ref_bands: BandsLookup,
              query_bands: BandsLookup | None = None,
              exclude_self: Sequence[int] | None = None) -> tuple[list[Match], int]:
        """Confirmed matches (best per query first) and the number of candidates checked."""
        from .fingerprint import BAND_DECIMATE, FRAME_SECONDS

        cands = self.index.candidates(queries, min_votes=self.min_votes,
                                      min_fraction=self.min_fraction, top=self.top,
                                      offsets=self.offsets, exclude_self=exclude_self)
        by_pair: dict[tuple[int, int], list[Candidate]] = {}
        for c in cands:
            by_pair.setdefault((c.query, c.ref), []).append(c)
        best: dict[tuple[int, int], Match] = {}
        for (q, r), group in by_pair.items():
            qb = queries[q].bands if query_bands is None else query_bands(q)
            rb = ref_bands(r)
            if qb is None or rb is None:
                continue
            score, n, offset = self._confirm(qb, rb, [c.offset for c in group],
                                             max(c.votes for c in group))
            overlap = n * BAND_DECIMATE * FRAME_SECONDS
            if score >= self.min_correlation and overlap >= self.min_overlap_seconds:
                votes = max(c.votes for c in group)
                best[(q, r)] = Match(q, r, offset, votes, score, overlap)
        out = list(best.values())
        out.sort(key=lambda m: (m.query, -m.score, m.ref))
        return out, len(cands)


def best_per_query(matches: Iterable[Match]) -> dict[int, Match]:
    best: dict[int, Match] = {}
    for m in matches:
        if m.query not in best or m.score > best[m.query].score:
            best[m.query] = m
    return best


# --------------------------------------------------------------------------- warp path (issue 14)
@dataclass
class WarpMatch(Match):
    time_factor: float = 1.0       # reference duration / query duration
    semitones: float = 0.0         # reference pitch - query pitch


class WarpIndex:
    """Inverted index of warp-invariant triplet hashes (:func:`fingerprint.warp_hashes`) of the
    reference side, with each triplet's anchor frame, time span and anchor pitch, so a hit
    also says by how much the query is warped. Searched by :class:`WarpMatcher`."""

    def __init__(self, max_bucket: int = 2000):
        self.max_bucket = max_bucket
        self.keys: list[Hashable] = []
        self.n_triplets: list[int] = []
        self._parts: list[tuple[np.ndarray, ...]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Hashable, wp) -> int:
        from .fingerprint import warp_hashes

        ref = len(self.keys)
        self.keys.append(key)
        self.n_triplets.append(len(wp))
        if len(wp):
            i, k = wp.tri[:, 0], wp.tri[:, 2]
            self._parts.append((warp_hashes(wp), np.full(len(wp), ref, np.int32), wp.t[i].astype(np.int32),
                                (wp.t[k] - wp.t[i]).astype(np.int16), wp.lf[i].astype(np.float32),
                                wp.grid.astype(bool)))
        return ref

    def build(self) -> "WarpIndex":
        cols = [np.concatenate([p[c] for p in self._parts]) if self._parts else np.zeros(0)
                for c in range(6)]
        order = np.argsort(cols[0], kind="stable")
        self.hash, self.ref, self.t1, self.span, self.lf1, self.grid = (c[order] for c in cols)
        self._n_triplets = np.asarray(self.n_triplets, np.int64)
        return self

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.hash, self.ref, self.t1, self.span, self.lf1, self.grid))


#: the searched warp: time factors exp(+-WARP_LOG_RANGE) in steps of WARP_LOG_STEP (0.4 %)
WARP_LOG_RANGE = 0.095
WARP_LOG_STEP = 0.004


#: offset tolerance of the warp vote (frames): phase-vocoder edits move peaks by up to a
#: vocoder hop (~11 ms at 48 kHz/512), more than the exact path's +-1 frame
WARP_OFFSET_TOL = 2


def _best_offset(tq, tr, s):
    """(votes, offset) of the best offset of ``tr - s * tq`` counting neighbours within
    +-WARP_OFFSET_TOL frames."""
    off = np.round(tr - s * tq).astype(np.int64)
    u, c = np.unique(off, return_counts=True)
    if not len(u):
        return 0, 0, off
    top = len(u) - 1
    cum = c.copy()
    for d in [d for d in range(-WARP_OFFSET_TOL, WARP_OFFSET_TOL + 1) if d]:
        pos = np.minimum(np.searchsorted(u, u + d), top)
        cum += np.where(u[pos] == u + d, c[pos], 0)
    k = int(np.argmax(cum))
    return int(cum[k]), int(u[k]), off


def _hough(tq: np.ndarray, tr: np.ndarray, log_s: np.ndarray) -> tuple[int, float, int, np.ndarray]:
    """Best (votes, time factor, offset, inlier mask) of hits ``tr ~ s * tq + offset``: a
    coarse grid of time factors (a hit votes only near its own span ratio ``log_s``, +-4 %),
    then a fine one (0.05 %) around the best, where a long clip's offsets line up."""
    best = (0, 0.0, 0)
    for g in np.arange(-WARP_LOG_RANGE, WARP_LOG_RANGE + 1e-9, WARP_LOG_STEP):
        near = np.abs(log_s - g) <= 0.04
        if near.sum() <= best[0]:
            continue
        v, o, _ = _best_offset(tq[near], tr[near], np.exp(g))
        if v > best[0]:
            best = (v, g, o)
    if not best[0]:
        return 0, 1.0, 0, np.zeros(len(tq), bool)
    g0 = best[1]
    near = np.abs(log_s - g0) <= 0.04 + WARP_LOG_STEP
    fine = (0, g0, best[2], None)
    for g in np.arange(g0 - WARP_LOG_STEP, g0 + WARP_LOG_STEP + 1e-9, WARP_LOG_STEP / 8):
        v, o, off = _best_offset(tq[near], tr[near], np.exp(g))
        if v > fine[0]:
            fine = (v, g, o, off)
    v, g, o, off = fine
    mask = np.zeros(len(tq), bool)
    mask[np.flatnonzero(near)[np.abs(off - o) <= WARP_OFFSET_TOL]] = True
    return v, float(np.exp(g)), o, mask


class WarpMatcher:
    """The warp pass: triplet-hash candidates, a Hough vote over (time factor, offset), then
    the aligned correlation of the query's band features *warped to the estimated factor and
    pitch* against the reference, at the same threshold as the exact path."""

    def __init__(self, index: WarpIndex, *, min_votes: int = 8, min_fraction: float = 0.02,
                 min_correlation: float = 0.7, min_overlap_seconds: float = 0.2, top: int = 5):
        self.index = index
        self.min_votes = min_votes
        self.min_fraction = min_fraction
        self.min_correlation = min_correlation
        self.min_overlap_seconds = min_overlap_seconds
        self.top = top

    def candidates(self, wp) -> list[tuple[int, int, float, float, int]]:
        """(ref, votes, time factor, semitones, offset in 8 ms frames) of one query's best refs."""
        from .fingerprint import warp_query_hashes

        ix = self.index
        if not len(wp) or not len(ix.hash):
            return []
        qh, qt = warp_query_hashes(wp)
        lo = np.searchsorted(ix.hash, qh, side="left")
        cnt = np.searchsorted(ix.hash, qh, side="right") - lo
        cnt[cnt > ix.max_bucket] = 0
        if not cnt.sum():
            return []
        post = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
        qtri = np.repeat(qt, cnt)
        i, k = wp.tri[qtri, 0], wp.tri[qtri, 2]
        tq = wp.t[i].astype(np.float64)
        span_q = (wp.t[k] - wp.t[i]).astype(np.float64)
        log_s = np.log(ix.span[post] / span_q)
        semis = ix.lf1[post].astype(np.float64) - wp.lf[i]
        ok = (np.abs(log_s) <= WARP_LOG_RANGE + 0.04) & (np.abs(semis) <= 1.5)
        grid = wp.grid[qtri] | ix.grid[post]
        post, tq, log_s, semis, grid = post[ok], tq[ok], log_s[ok], semis[ok], grid[ok]
        refs = ix.ref[post]
        counts = np.bincount(refs, minlength=len(ix.keys))
        need_all = np.maximum(self.min_votes, np.ceil(self.min_fraction * np.minimum(len(wp), ix._n_triplets)))
        cand_refs = np.flatnonzero(counts >= need_all)
        cand_refs = cand_refs[np.argsort(-counts[cand_refs], kind="stable")][: 3 * self.top]
        out = []
        for r in cand_refs:
            sel = refs == r
            # two hypotheses, both checked by the confirmation: the time factor from hits
            # whose peaks all stretch with the audio (when there are enough), and from all
            # hits (a sustained tone's grid picks do not stretch, so they vote near factor 1,
            # which is the best estimate a tonal sound allows)
            free = sel & ~grid
            for use in ([free, sel] if free.sum() >= need_all[r] else [sel]):
                votes, s, off, mask = _hough(tq[use], ix.t1[post[use]].astype(np.float64), log_s[use])
                if votes < need_all[r]:
                    continue
                sm = semis[use][mask]
                med = float(np.median(sm))
                votes = int(np.sum(np.abs(sm - med) <= 0.6))
                if votes >= need_all[r] and not any(
                        c[0] == r and abs(c[2] - s) < 2e-3 and c[4] == off for c in out):
                    out.append((int(r), votes, s, med, off))
        out.sort(key=lambda c: -c[1])
        return out[: 2 * self.top]

    def match(self, queries: Sequence, query_bands: BandsLookup, ref_bands: BandsLookup
              ) -> tuple[list[WarpMatch], int]:
        """Confirmed warped matches (``queries`` are :class:`fingerprint.WarpPrint`) and the
        number of candidates checked."""
        from .fingerprint import BAND_DECIMATE, FRAME_SECONDS, correlation_at, warp_bands

        out, n_cands = [], 0
        for q, wp in enumerate(queries):
            cands = self.candidates(wp)
            if not cands:
                continue
            qb = query_bands(q)
            if qb is None:
                continue
            n_cands += len(cands)
            for r, votes, s, semis, off in cands:
                rb = ref_bands(r)
                if rb is None:
                    continue
                wb = warp_bands(qb, s, semis)
                base = int(round(off / BAND_DECIMATE))
                score, n, d = correlation_at(wb, rb, range(base - 2, base + 3))
                overlap = n * BAND_DECIMATE * FRAME_SECONDS
                if score >= self.min_correlation and overlap >= self.min_overlap_seconds:
                    out.append(WarpMatch(q, r, (base if d is None else d) * BAND_DECIMATE, votes,
                                         score, overlap, time_factor=s, semitones=semis))
        out.sort(key=lambda m: (m.query, -m.score, m.ref))
        return out, n_cands
