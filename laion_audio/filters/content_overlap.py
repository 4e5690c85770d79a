"""Content matching: an inverted index of landmark hashes, offset voting, then the aligned check.

The index is two int32 arrays grouped by hash (clip, anchor time), placed by a counting sort,
plus a table of bucket starts indexed by hash value, so finding a query hash's postings is two
gathers. Votes over (clip, time offset) pairs are counted by one numba kernel,
:func:`_vote_peaks`, linear in postings (dense prefilter counters, then the survivors grouped
by clip and counted in a dense offset histogram; no hash table, no sort), for a batch of
queries at once. A reference that shares at least ``min_votes`` hashes at one offset (+-1
frame) is a *candidate*; :class:`ContentMatcher` confirms it with
:func:`fingerprint.aligned_correlation` on band envelopes, the only thing that decides.

Over-full buckets (a hash that half the corpus contains, e.g. a steady hum) carry no
evidence and cost the most; buckets above ``max_bucket`` postings are skipped at query time,
and a query whose hashes would touch more than ``max(postings_per_hash * n_hashes,
min_budget)`` postings keeps only its rarest hashes (an adaptive stop-list).

Popular buckets are made selective instead of dropped (``popular``, :func:`_rekey`): a
landmark whose bucket holds more than ``popular`` postings is indexed, and looked up, under
the key of (landmark, the nearest other landmark from the same anchor peak): three peaks
instead of two, so a tonal or periodic sound whose landmarks all sit in popular buckets still
votes, with a few postings per hash instead of thousands. Stored fingerprints do not change;
only the index's keys do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..defaults import LOOKUP_BUDGET
from .fingerprint import Fingerprint

#: a landmark bucket over this many postings is re-keyed by a companion landmark
POPULAR_BUCKET = 300


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
    """Append fingerprints, then :meth:`build`; refs are numbered in insertion order.

    Landmark hashes (< 2^24) are stored without a hash column: postings are placed by a
    counting sort into (ref, time) int32 arrays, bucket ``h`` at ``bucket_start[h] :
    bucket_start[h + 1]`` (8 bytes per posting, no sort permutation, no concatenated copy of
    the input: at 8,000 clips the argsort build peaked at ~2.5x the final index)."""

    def __init__(self, max_bucket: int = 5000, postings_per_hash: int | None = None,
                 min_budget: int = LOOKUP_BUDGET, popular: int | None = POPULAR_BUCKET):
        """The defaults are the product's (the filter stage builds this index), so a test or a
        benchmark that builds the class measures what ships. ``postings_per_hash`` None: one
        per 2,000 of ``min_budget`` (long queries); ``popular`` None: never re-key."""
        self.max_bucket = max_bucket
        self.postings_per_hash = (max(1, min_budget // 2000) if postings_per_hash is None
                                  else postings_per_hash)
        self.min_budget = min_budget     # below this many postings a query is never thinned
        #: buckets over this many postings are re-keyed by a companion landmark (None: never)
        self.popular = popular
        #: one bit per landmark: its bucket is popular (set only when something was re-keyed;
        #: 512 kB, so the re-keying's random reads stay in cache)
        self._popular_bits: np.ndarray | None = None
        self._parts: list[tuple[np.ndarray, "int | np.ndarray", np.ndarray]] = []
        self.n_hashes: list[int] = []
        self.keys: list[Hashable] = []
        self._built = False
        self.hash: np.ndarray | None = None          # only for hashes >= 2^24 (binary search)
        self.ref = np.zeros(0, np.int32)
        self.time = np.zeros(0, np.int32)
        self._bucket_start: np.ndarray | None = None

    @classmethod
    def for_budget(cls, lookup_budget: int = LOOKUP_BUDGET) -> "FingerprintIndex":
        """The index the filter stage and the near-duplicate check use: ``lookup_budget``
        postings per query (long queries: one per hash per 2,000 of it, the ratio the
        benchmark measured) and popular buckets re-keyed: the class's defaults at that budget."""
        return cls(min_budget=lookup_budget)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Hashable, fp: Fingerprint) -> int:
        ref = len(self.keys)
        self.keys.append(key)
        self.n_hashes.append(len(fp))
        if len(fp):
            self._parts.append((fp.hashes, ref, fp.times))
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

    @property
    def n_postings(self) -> int:
        return len(self.ref)

    def _old_hashes(self) -> np.ndarray:
        """The hash of every posting already built (to rebuild after more adds)."""
        if self.hash is not None:
            return self.hash
        if self._bucket_start is None:
            return np.zeros(0, np.uint32)
        return np.repeat(np.arange(len(self._bucket_start) - 1, dtype=np.uint32),
                         np.diff(self._bucket_start))

    def build(self) -> "FingerprintIndex":
        if self._parts:
            parts = self._parts
            if self.n_postings:      # earlier postings first: the order of insertion
                if self._popular_bits is not None:
                    raise RuntimeError("an index with re-keyed popular buckets is built once: "
                                       "add every clip before build()")
                parts = [(self._old_hashes(), self.ref, self.time)] + parts
            top = max((int(p[0].max()) for p in parts if len(p[0])), default=-1)
            if self.popular is not None and 0 <= top < 1 << 22:    # landmark hashes
                parts = self._rekey_parts(parts)
                top = max((int(p[0].max()) for p in parts if len(p[0])), default=-1)
            if top < 1 << 24:
                self._build_counting(parts, top)
            else:
                h = np.concatenate([p[0] for p in parts])
                r = np.concatenate([np.full(len(p[0]), p[1], np.int32) if np.isscalar(p[1])
                                    else p[1] for p in parts])
                t = np.concatenate([p[2] for p in parts])
                order = np.argsort(h, kind="stable")
                self.hash, self.ref, self.time = h[order], r[order], t[order].astype(np.int32)
                self._bucket_start = None
            self._parts = []
        self._n_hashes_arr = np.asarray(self.n_hashes, np.int64)
        self._built = True
        return self

    def _rekey_parts(self, parts):
        """Count postings per landmark, then give each landmark of a popular bucket its
        companion key (and drop it where its anchor has no other landmark). An index with no
        popular bucket keeps its landmarks as they are (and may grow and be rebuilt)."""
        counts = np.zeros((1 << 22) + 1, np.int64)
        for h, _, _ in parts:
            _count(h, counts)
        if counts.max() <= self.popular:
            return parts
        self._popular_bits = bits = _popular_bits(counts[1:], self.popular)
        out = []
        for h, r, t in parts:
            refs = np.full(len(h), r, np.int32) if np.isscalar(r) else r
            key = _rekey(h, refs, t, bits)
            ok = key >= 0
            out.append((key[ok].astype(np.uint32), r if np.isscalar(r) else refs[ok], t[ok]))
        return out

    def _query_keys(self, qh: np.ndarray, qt: np.ndarray, qn: np.ndarray):
        """Queries' (keys, times, counts) as this index files them (:func:`_rekey`), in one
        call for the batch (each query is a clip of its own)."""
        query = np.repeat(np.arange(len(qn), dtype=np.int32), qn)
        key = _rekey(qh, query, qt, self._popular_bits)
        ok = key >= 0
        return (key[ok].astype(np.uint32), qt[ok],
                np.bincount(query[ok], minlength=len(qn)).astype(np.int64))

    def _build_counting(self, parts, top: int) -> None:
        """Counting sort by hash, stable in insertion order (the same postings, in the same
        order, as a stable argsort of the concatenation), in place: the bucket table is the
        only array besides the postings (int32 while there are < 2^31 postings)."""
        total = sum(len(p[0]) for p in parts)
        start = np.zeros(top + 2, np.int32 if total < (1 << 31) else np.int64)
        for h, _, _ in parts:
            _count(h, start)
        np.cumsum(start, out=start)          # start[h] = first posting of bucket h
        ref = np.empty(total, np.int32)
        time = np.empty(total, np.int32)
        for h, r, t in parts:                # start[h] advances to the end of bucket h ...
            if np.isscalar(r):
                _scatter_one(h, int(r), t, start, ref, time)
            else:
                _scatter(h, r, t, start, ref, time)
        _shift_right(start)                  # ... which is where bucket h + 1 starts
        self.hash, self.ref, self.time, self._bucket_start = None, ref, time, start

    @property
    def nbytes(self) -> int:
        return (self.ref.nbytes + self.time.nbytes + (0 if self.hash is None else self.hash.nbytes)
                + (0 if self._bucket_start is None else self._bucket_start.nbytes))

    def _buckets(self, qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first posting, posting count) of each query hash: a direct table when hashes are
        small integers (landmarks are 22 bits), else a binary search."""
        if self._bucket_start is not None:
            return _bucket_spans(qh, self._bucket_start)
        lo = np.searchsorted(self.hash, qh, side="left")
        return lo, np.searchsorted(self.hash, qh, side="right") - lo

    def selection(self, queries: Sequence[Fingerprint]):
        """The postings a batch of queries reads: per query hash (keyed as this index files
        it) its first posting and posting count (0 for the hashes left out), per hash its time,
        and per query its hash count and how many kept hashes have postings (the vote
        threshold's side). Per-query posting budget: every hash carries the same evidence for
        the true reference, but popular ones cost the most, so a query keeps its rarest hashes
        whose postings fit in max(postings_per_hash * n_hashes, min_budget) (an adaptive
        stop-list)."""
        qn = np.array([len(q) for q in queries], np.int64)
        qh = np.concatenate([q.hashes for q in queries]).astype(np.uint32, copy=False)
        qt = np.concatenate([q.times for q in queries]).astype(np.int32)
        if self._popular_bits is not None:        # the keys this index files them under
            qh, qt, qn = self._query_keys(qh, qt, qn)
        budget = np.maximum(self.postings_per_hash * qn, self.min_budget)
        if self._bucket_start is not None:
            lo, cnt, kept = _spans_select(qh, self._bucket_start, qn, budget, self.max_bucket)
        else:
            lo, cnt = self._buckets(qh)
            cnt, kept = _select(cnt, qn, budget, self.max_bucket)
        return lo, cnt, kept, qt, qn

    def candidates(self, queries: Sequence[Fingerprint], *, min_votes: int = 6,
                   min_fraction: float = 0.02, top: int = 5, offsets: int = 4,
                   exclude_self: Sequence[int] | None = None) -> list[Candidate]:
        """Offset-voted candidates for a batch of query fingerprints.

        ``min_fraction`` scales the vote threshold with the shorter clip's hash count (for the
        query, the hashes it kept under its budget that have postings: one in no clip, or in a
        bucket over ``max_bucket``, cannot vote), so a long noisy query does not nominate by
        chance. ``exclude_self[i]`` is a ref to skip for query ``i`` (the query itself when the
        index holds the corpus).
        """
        if not self._built:
            self.build()
        if not len(queries) or not self.n_postings:
            return []
        lo, cnt, kept, qt, qn = self.selection(queries)
        if not int(cnt.sum()):
            return []
        ex = np.full(len(queries), -1, np.int64) if exclude_self is None else \
            np.asarray(exclude_self, np.int64)
        # per query: its ``top`` refs, each with its best ``offsets`` offsets (looped material
        # votes for several offsets a period apart; the check picks the right one)
        uq, ur, uo, votes = _vote_peaks(lo, cnt, qt, qn, kept, ex, self.ref, self.time,
                                        self._n_hashes_arr, len(self.keys),
                                        float(min_votes), float(min_fraction), top, offsets,
                                        _MAX_WIDTH)
        return [Candidate(a, b, c, d) for a, b, c, d in
                zip(uq.tolist(), ur.tolist(), uo.tolist(), votes.tolist())]


@numba.njit(cache=True, nogil=True)
def _count(h, counts):
    """``counts[v + 1] += 1`` for every hash ``v`` (one clip: no table-sized temporary)."""
    for k in range(len(h)):
        counts[h[k] + 1] += 1


#: companion keys live above the 22-bit landmarks, below the counting sort's 2^24 limit
_KEY_BASE = 1 << 22
_KEY_SPAN = 3 << 22


def _popular_bits(counts: np.ndarray, popular: int) -> np.ndarray:
    """Bit ``h`` (little-endian within bytes) set where landmark ``h`` has over ``popular``
    postings."""
    return np.packbits(counts > popular, bitorder="little")


@numba.njit(cache=True, nogil=True)
def _rekey(h, r, t, bits):
    """Each landmark's index key: itself, or where its bucket is popular (``bits``, see
    :func:`_popular_bits`), a key of (landmark, companion) in ``[2^22, 2^24)``; -1 where its anchor has no
    other landmark. The companion is the anchor's landmark with the shortest (dt, df) other
    than itself (for that one, the next): anchors are (clip, time, anchor bin), so the query
    and the index pick the same companion wherever the same peaks survived. ``r`` names each
    landmark's clip (grouped by a stable sort unless already in order); inside a clip the
    landmarks are grouped by a counting sort on time, then each frame's anchors keep their
    least and second least (dt, df) in one pass (a frame can hold ~200 landmarks)."""
    n = len(h)
    key = np.empty(n, np.int64)
    pop = np.empty(n, np.bool_)
    n_pop = 0
    for k in range(n):
        key[k] = h[k]
        pop[k] = (bits[h[k] >> 3] >> (h[k] & 7)) & 1
        n_pop += pop[k]
    if n_pop == 0:
        return key
    srt = np.empty(n, np.int64)                   # (anchor bin, dt, df) inside a frame
    for k in range(n):
        x = np.int64(h[k])
        srt[k] = (((x >> 13) & 0x1FF) << 13) | ((x & 0x3F) << 7) | ((x >> 6) & 0x7F)
    ordered = True
    for k in range(1, n):
        if r[k] < r[k - 1]:
            ordered = False
            break
    order = np.arange(n) if ordered else np.argsort(r, kind="mergesort")
    sub = np.empty(n, np.int64)
    size = np.zeros(512, np.int64)                # per anchor bin, within one frame
    best1 = np.empty(512, np.int64)
    best2 = np.empty(512, np.int64)
    bins = np.empty(512, np.int64)
    a = 0
    while a < n:                                  # one clip at a time
        b = a
        t_lo, t_hi = t[order[a]], t[order[a]]
        while b < n and r[order[b]] == r[order[a]]:
            t_lo = min(t_lo, t[order[b]])
            t_hi = max(t_hi, t[order[b]])
            b += 1
        start = np.zeros(t_hi - t_lo + 2, np.int64)
        for i in range(a, b):
            start[t[order[i]] - t_lo + 1] += 1
        for i in range(1, len(start)):
            start[i] += start[i - 1]
        for i in range(a, b):
            k = order[i]
            j = t[k] - t_lo
            sub[a + start[j]] = k
            start[j] += 1
        g0 = a                                    # start[j] is now the end of frame j
        for j in range(len(start) - 1):
            g_end = a + start[j]
            n_f = 0                               # the frame's anchors, by anchor bin: size,
            for i in range(g0, g_end):            # least and second least (dt, df), first
                k = sub[i]                        # in order among equals
                f = srt[k] >> 13
                if size[f] == 0:
                    bins[n_f] = f
                    n_f += 1
                    best1[f] = k
                elif srt[k] < srt[best1[f]]:
                    best2[f] = best1[f]
                    best1[f] = k
                elif size[f] == 1 or srt[k] < srt[best2[f]]:
                    best2[f] = k
                size[f] += 1
            for i in range(g0, g_end):
                k = sub[i]
                if not pop[k]:
                    continue
                f = srt[k] >> 13
                if size[f] < 2:
                    key[k] = -1
                    continue
                c = best2[f] if k == best1[f] else best1[f]
                cx = np.int64(h[c])
                mix = (np.int64(h[k]) * 0x9E3779B1 + ((cx >> 6) & 0x7F) * 131
                       + (cx & 0x3F) * 0x85EBCA77) & 0xFFFFFFFF
                key[k] = _KEY_BASE + mix % _KEY_SPAN
            for i in range(n_f):
                size[bins[i]] = 0
            g0 = g_end
        a = b
    return key


@numba.njit(cache=True, nogil=True)
def _shift_right(a):
    """``a[1:] = a[:-1]; a[0] = 0`` in place (no copy of a 2^22-entry table)."""
    for i in range(len(a) - 1, 0, -1):
        a[i] = a[i - 1]
    a[0] = 0


@numba.njit(cache=True, nogil=True)
def _scatter_one(h, r, t, fill, ref, time):
    """Place one clip's postings (ref ``r``) at their buckets' next free slots."""
    for k in range(len(h)):
        j = fill[h[k]]
        ref[j] = r
        time[j] = t[k]
        fill[h[k]] = j + 1


@numba.njit(cache=True, nogil=True)
def _scatter(h, r, t, fill, ref, time):
    for k in range(len(h)):
        j = fill[h[k]]
        ref[j] = r[k]
        time[j] = t[k]
        fill[h[k]] = j + 1


_BIN_SHIFT = 4           # prefilter offset bins of 16 frames (a peak's evidence spans +-3)
_FOLD_BITS = 3           # ... folded modulo 8 per ref, so the counter is dense and small
_FOLD = 1 << _FOLD_BITS
#: a ref whose voted offsets span more frames than this (hours-long clips) is counted by a
#: sort instead of a dense histogram, which would not fit in cache
_MAX_WIDTH = 1 << 20
#: buckets are prefetched this many hashes ahead: a bucket's first postings are a random
#: access into the index (two arrays), and the first pass waited on them (~10 % of it)
_PREFETCH = 8
#: queries' posting counts up to this are ranked by a histogram (the bucket cap keeps them
#: small), larger ones by a sort
_SELECT_HIST = 1 << 16


@intrinsic
def _prefetch(typingctx, arr, idx):
    """``llvm.prefetch`` of ``arr[idx]`` (read, all cache levels): never faults, so ``idx``
    may run past the end."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen


@numba.njit(cache=True, nogil=True)
def _bucket_spans(qh, start):
    """(first posting, posting count) of each query hash from the bucket table."""
    top = len(start) - 1
    lo = np.empty(len(qh), np.int64)
    cnt = np.empty(len(qh), np.int64)
    for k in range(len(qh)):
        h = np.int64(qh[k])
        a = start[min(h, top)]
        lo[k] = a
        cnt[k] = start[min(h + 1, top)] - a
    return lo, cnt


@numba.njit(cache=True, nogil=True)
def _keep_rarest(cnt, qn, budget):
    """Per query (hashes grouped by query, ``qn`` each): keep its rarest hashes, ties in
    order, while their postings fit in ``budget[q]``: the prefix of a stable sort by count
    that fits, found by a histogram of the counts (a threshold count, and how many hashes at
    that count still fit, first in order) instead of a sort per query."""
    keep = np.zeros(len(cnt), np.bool_)
    top = 0
    for k in range(len(cnt)):
        top = max(top, cnt[k])
    by_hist = top < _SELECT_HIST
    hist = np.zeros(top + 1 if by_hist else 1, np.int64)
    k0 = 0
    for q in range(len(qn)):
        k1 = k0 + qn[q]
        if not by_hist:
            order = np.argsort(cnt[k0:k1], kind="mergesort")
            used = 0
            for i in order:
                used += cnt[k0 + i]
                if used > budget[q]:
                    break
                keep[k0 + i] = True
            k0 = k1
            continue
        for k in range(k0, k1):
            hist[cnt[k]] += 1
        used, left, c = 0, k1 - k0, 0
        cut, fit = top + 1, 0         # counts below ``cut`` all fit; ``fit`` of those at it
        while left > 0:
            n_c = hist[c]
            if n_c:
                if used + c * n_c > budget[q]:
                    cut, fit = c, ((budget[q] - used) // c if c > 0 else 0)
                    break
                used += c * n_c
                left -= n_c
            c += 1
        for k in range(k0, k1):         # branch-free: counts arrive in no order
            x = cnt[k]
            at_cut = (x == cut) & (fit > 0)
            keep[k] = (x < cut) | at_cut
            fit -= at_cut
            hist[x] = 0
        k0 = k1
    return keep


@numba.njit(cache=True, nogil=True)
def _spans_select(qh, start, qn, budget, max_bucket):
    """:func:`_bucket_spans` and :func:`_select` in one call (no temporaries between them)."""
    lo, cnt = _bucket_spans(qh, start)
    out, kept = _select(cnt, qn, budget, max_bucket)
    return lo, out, kept


@numba.njit(cache=True, nogil=True)
def _select(cnt, qn, budget, max_bucket):
    """The query hashes each query keeps (buckets over ``max_bucket`` count as empty, then
    :func:`_keep_rarest`): their posting counts, 0 for the others (no compacted copies), and
    the number each query keeps that have postings (the others cannot vote)."""
    out = np.where(cnt > max_bucket, 0, cnt)
    keep = _keep_rarest(out, qn, budget)
    kept = np.zeros(len(qn), np.int64)
    k0 = 0
    for q in range(len(qn)):
        for k in range(k0, k0 + qn[q]):
            out[k] *= keep[k]
            kept[q] += out[k] > 0
        k0 += qn[q]
    return out, kept


@numba.njit(cache=True, nogil=True)
def _need(min_votes, min_fraction, n):
    """``max(min_votes, ceil(min_fraction * n))`` as the least integer vote count that passes."""
    return np.int64(np.ceil(max(min_votes, np.ceil(min_fraction * n))))


@numba.njit(cache=True, nogil=True)
def _count_near(u, c, j, target):
    """Hits at offset ``target`` among the distinct sorted offsets ``u`` (counts ``c``) near
    position ``j`` (within 2: targets are at most 2 frames from ``u[j]``)."""
    for i in range(max(j - 2, 0), min(j + 3, len(u))):
        if u[i] == target:
            return c[i]
    return 0


@numba.njit(cache=True, nogil=True)
def _vote_peaks(lo, cnt, qt, q_n, qn, ex, ref, time, n_hashes, n_refs, min_votes, min_fraction,
                top, offsets, max_width=_MAX_WIDTH):
    """(query, ref, offset, votes) of the offset peaks that pass the vote threshold: per
    query its ``top`` refs by best votes (ties: lower ref), each with its ``offsets`` best
    peaks (ties: lower offset), sorted by (query, ref, -votes, offset).

    Query hashes arrive grouped by query (``q_n[q]`` each; ``qn[q]`` of them kept and with
    postings, the query's side of ``need``); query hash ``k`` hits postings
    ``lo[k] : lo[k] + cnt[k]``. Per query:
    (1) hits are counted per (ref, 16-frame offset bin, folded modulo 8) in a dense counter.
        A peak at offset ``o`` with votes ``>= need`` (``need = max(min_votes,
        ceil(min_fraction * min(query voting hashes, ref hashes)))``) has all its votes, and its
        neighbours' counts, at ``o +-2``: a posting at offset ``x`` that counts for, or next
        to, a kept peak has ``need`` hits within ``x +-3``. That window lies in the posting's
        own bin unless ``x`` is within 3 frames of the bin's edge (6 of 16 positions: then also
        the bin on that side); a posting whose window's bins (folding only adds) hold
        fewer than ``need`` hits is dropped. Noise refs mostly go here, cheaply; the check
        runs branch-free over every posting, then exactly on the few that pass (2.2 M of 9.6 M
        postings at 100k refs; 3.2 M when 32-frame bins and both their neighbours were read).
    (2) the survivors are grouped by ref (a counting sort over the refs they touch), and a ref
        with fewer than ``need`` of them is dropped whole;
    (3) each remaining ref's offsets are counted in a dense histogram over their span (in
        cache; a sort when the span exceeds ``max_width``): an offset's votes are its count plus
        its +-1 neighbours' (one-frame tolerance), and it is kept when it reaches ``need`` and
        is a local maximum along the offset axis (ties go to the lower offset: strictly above
        the offset below, at least the offset above; an offset with no hits of its own is no
        neighbour). Linear in postings; no hash table, no sort of the postings.
    """
    max_load = 0
    k0 = 0
    for q in range(len(q_n)):
        load = 0
        for k in range(k0, k0 + q_n[q]):
            load += cnt[k]
        max_load = max(max_load, load)
        k0 += q_n[q]
    mv = np.int64(np.ceil(min_votes))
    # the ref's side of ``need``, capped like the prefilter's counters (a small table: at 100k
    # refs the kernel's random-access tables must share the L2 cache)
    need8 = np.empty(n_refs, np.uint8)
    for r in range(n_refs):
        need8[r] = min(255, _need(min_votes, min_fraction, n_hashes[r]))
    fm = np.int32(_FOLD - 1)
    wm = np.int32((1 << _BIN_SHIFT) - 1)
    bins = np.empty(max_load, np.int32)        # each posting's prefilter counter
    offs = np.empty(max_load, np.int32)        # ... and its offset (survivors' compacted in place)
    s_ref = np.empty(max_load, np.int32)       # survivors of (1): ref
    g_off = np.empty(max_load, np.int32)       # ... grouped by ref
    # saturating uint8 counters: the table stays in L2 (800 kB at 100k refs). The prefilter
    # only rejects below min(need, 255); the exact count in step (3) decides the rest
    per_bin = np.zeros(n_refs * _FOLD, np.uint8)
    ref_n = np.zeros(n_refs, np.int32)         # survivors per ref, then (2)'s fill pointer
    t_n = np.empty(max_load + 1, np.int32)     # survivors per touched ref
    touched = np.empty(max_load + 1, np.int32)
    nz = np.empty(max(q_n.max(), 1) if len(q_n) else 1, np.int64)
    hist = np.zeros(4096, np.int32)
    pk_o = np.empty(max_load, np.int64)        # one ref's peaks: offset, votes
    pk_v = np.empty(max_load, np.int64)
    sq_o = np.empty(max_load, np.int64)        # one query's: each ref's best ``offsets``
    sq_v = np.empty(max_load, np.int64)
    sr_ref = np.empty(max_load, np.int64)      # ... per ref: ref, first, count, best votes
    sr_first = np.empty(max_load, np.int64)
    sr_n = np.empty(max_load, np.int64)
    sr_key = np.empty(max_load, np.int64)
    cap = 1024
    out_q = np.empty(cap, np.int64)
    out_r = np.empty(cap, np.int64)
    out_o = np.empty(cap, np.int64)
    out_v = np.empty(cap, np.int64)
    n_out = 0
    k1 = 0
    for q in range(len(q_n)):
        k0 = k1
        k1 = k0 + q_n[q]
        need_q = _need(min_votes, min_fraction, qn[q])
        n_post = 0
        n_nz = 0                  # the query's hashes with postings, to prefetch ahead
        for k in range(k0, k1):
            nz[n_nz] = k
            n_nz += cnt[k] > 0
        for a in range(n_nz):
            if a + _PREFETCH < n_nz:
                kk = nz[a + _PREFETCH]
                _prefetch(ref, lo[kk])
                _prefetch(time, lo[kk])
                _prefetch(ref, lo[kk] + 16)
                _prefetch(time, lo[kk] + 16)
            k = nz[a]
            t0 = np.int32(qt[k])
            for p in range(lo[k], lo[k] + cnt[k]):
                off = time[p] - t0
                j = ref[p] * _FOLD + ((off >> _BIN_SHIFT) & fm)
                bins[n_post] = j
                offs[n_post] = off
                n_post += 1
                if per_bin[j] < 255:
                    per_bin[j] += 1
        # (1) branch-free: keep every posting whose +-3 window's bins reach its pair's threshold
        xr = ex[q]
        nq = min(need_q, 255)
        n_s = 0
        for i in range(n_post):
            j = bins[i]
            base = j & ~fm
            b = j & fm
            x = offs[i] & wm          # where in its bin: the +-3 window needs a neighbour bin?
            near = (np.int64(per_bin[j]) + (x < 3) * np.int64(per_bin[base + ((b - 1) & fm)])
                    + (x > wm - 3) * np.int64(per_bin[base + ((b + 1) & fm)]))
            r = base >> _FOLD_BITS
            s_ref[n_s] = r
            offs[n_s] = offs[i]
            n_s += (near >= mv) & (near >= min(nq, np.int64(need8[r]))) & (r != xr)
        # ... counted per ref (``touched``: each ref once, in order of first survivor)
        n_t = 0
        for i in range(n_s):
            r = s_ref[i]
            touched[n_t] = r
            n_t += ref_n[r] == 0
            ref_n[r] += 1
        m = n_s
        for i in range(n_post):
            per_bin[bins[i]] = 0
        # (2) group the survivors by ref
        pos = 0
        for t in range(n_t):
            r = touched[t]
            t_n[t] = ref_n[r]
            ref_n[r] = pos
            pos += t_n[t]
        for i in range(m):
            r = s_ref[i]
            g_off[ref_n[r]] = offs[i]
            ref_n[r] += 1
        # (3) per ref: votes per offset, peaks; its best ``offsets`` peaks
        n_sq = 0
        n_sr = 0
        for t in range(n_t):
            r = touched[t]
            b = ref_n[r]
            a = b - t_n[t]
            ref_n[r] = 0
            need = min(need_q, np.int64(need8[r]) if need8[r] < 255 else
                       _need(min_votes, min_fraction, n_hashes[r]))
            if b - a < need:
                continue
            omin = g_off[a]
            omax = omin
            for i in range(a + 1, b):
                omin = min(omin, g_off[i])
                omax = max(omax, g_off[i])
            width = np.int64(omax) - omin + 5
            n_pk = 0
            if width > max_width:
                u = np.unique(g_off[a:b])
                c = np.zeros(len(u), np.int64)
                for i in range(a, b):
                    c[np.searchsorted(u, g_off[i])] += 1
                for j in range(len(u)):
                    o = np.int64(u[j])
                    c_lo = _count_near(u, c, j, o - 1)
                    c_hi = _count_near(u, c, j, o + 1)
                    v = c[j] + c_lo + c_hi
                    if v < need:
                        continue
                    if c_lo > 0 and v <= c_lo + c[j] + _count_near(u, c, j, o - 2):
                        continue
                    if c_hi > 0 and v < c_hi + c[j] + _count_near(u, c, j, o + 2):
                        continue
                    pk_o[n_pk], pk_v[n_pk] = o, v
                    n_pk += 1
            else:
                if width > len(hist):
                    hist = np.zeros(max(width, 2 * len(hist)), np.int32)
                base = omin - 2
                for i in range(a, b):
                    hist[g_off[i] - base] += 1
                # most refs here have no offset with ``need`` votes: find that out branch-free
                # before the peak scan, whose branches mispredict
                best = 0
                for i in range(a, b):
                    x = g_off[i] - base
                    best = max(best, hist[x - 1] + hist[x] + hist[x + 1])
                for i in range(a if best >= need else b, b):
                    x = g_off[i] - base
                    c0 = hist[x]
                    if c0 < 0:            # this offset's votes are already decided
                        continue
                    hist[x] = -c0
                    c_lo = abs(hist[x - 1])
                    c_hi = abs(hist[x + 1])
                    v = c0 + c_lo + c_hi
                    if v < need:
                        continue
                    if c_lo > 0 and v <= c_lo + c0 + abs(hist[x - 2]):
                        continue
                    if c_hi > 0 and v < c_hi + c0 + abs(hist[x + 2]):
                        continue
                    pk_o[n_pk], pk_v[n_pk] = g_off[i], v
                    n_pk += 1
                for i in range(a, b):
                    hist[g_off[i] - base] = 0
            if not n_pk:
                continue
            # best first (most votes, then lower offset): insertion sort, peaks are few
            for i in range(1, n_pk):
                o, v = pk_o[i], pk_v[i]
                j = i - 1
                while j >= 0 and (pk_v[j] < v or (pk_v[j] == v and pk_o[j] > o)):
                    pk_o[j + 1], pk_v[j + 1] = pk_o[j], pk_v[j]
                    j -= 1
                pk_o[j + 1], pk_v[j + 1] = o, v
            n_keep = min(n_pk, offsets)
            sr_ref[n_sr], sr_first[n_sr], sr_n[n_sr] = r, n_sq, n_keep
            sr_key[n_sr] = -pk_v[0] * (np.int64(1) << 32) + r   # rank: most votes, lower ref
            n_sr += 1
            for i in range(n_keep):
                sq_o[n_sq], sq_v[n_sq] = pk_o[i], pk_v[i]
                n_sq += 1
        # the query's ``top`` refs, out in ref order
        if n_sr:
            best = np.sort(np.argsort(sr_key[:n_sr])[:top]) if n_sr > top else np.arange(n_sr)
            chosen = sr_ref[:n_sr][best]
            order = best[np.argsort(chosen)]
            total = 0
            for e in order:
                total += sr_n[e]
            if n_out + total > cap:
                cap = max(2 * cap, n_out + total)
                out_q = np.concatenate((out_q[:n_out], np.empty(cap - n_out, np.int64)))
                out_r = np.concatenate((out_r[:n_out], np.empty(cap - n_out, np.int64)))
                out_o = np.concatenate((out_o[:n_out], np.empty(cap - n_out, np.int64)))
                out_v = np.concatenate((out_v[:n_out], np.empty(cap - n_out, np.int64)))
            for e in order:
                for i in range(sr_first[e], sr_first[e] + sr_n[e]):
                    out_q[n_out], out_r[n_out] = q, sr_ref[e]
                    out_o[n_out], out_v[n_out] = sq_o[i], sq_v[i]
                    n_out += 1
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


def _empty_warp_print():
    from .fingerprint import WarpPrint

    return WarpPrint(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.int32), 0,
                     np.zeros(0, bool))


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
#: pitch shift (semitones) from which the warp confirmation is held to the stricter threshold
WARP_PITCHED = 0.25
#: queries looked up together (the hit arrays of a batch stay ~100 MB)
WARP_QUERY_CHUNK = 256
#: a hit votes for time factors within this (log) distance of its own span ratio ...
WARP_HIT_SPREAD = 0.04
#: ... widened by this many frames of its two spans (peak times are whole frames, a vocoder
#: moves them by up to a hop): a short span's ratio says little (a 10-frame span stretched
#: 5 % stays 10 frames), and a fixed spread made such hits pull the estimate of a tempo
#: change to the spread's edge (1.042 for 1.05)
WARP_HIT_SPREAD_FRAMES = 1.5
#: the Hough grids: coarse over the searched range, then fine (1/8 step; a 1/4 step lost a
#: -100 cent copy to a chance peak) around the best, then the line fitted through the inliers
_COARSE = np.arange(-WARP_LOG_RANGE, WARP_LOG_RANGE + 1e-9, WARP_LOG_STEP)
_FINE = np.arange(-WARP_LOG_STEP, WARP_LOG_STEP + 1e-9, WARP_LOG_STEP / 8)


@numba.njit(cache=True, nogil=True)
def _peak_cell(hist, touched, n_t, tol):
    """(votes, cell) of the touched histogram cell with most hits within +-``tol`` cells
    (ties: the lowest cell); clears the touched cells for the next vote."""
    best_v, best_cell = 0, np.int64(-1)
    for u in range(n_t):
        cell = touched[u]
        v = 0
        for d in range(-tol, tol + 1):
            v += hist[cell + d]
        if v > best_v or (v == best_v and cell < best_cell):
            best_v, best_cell = v, cell
    for u in range(n_t):
        hist[touched[u]] = 0
    return best_v, best_cell


@numba.njit(cache=True, nogil=True)
def _hough(tq, tr, log_s, spread, use, coarse, fine, hist, touched):
    """Best (votes, log time factor, offset) of the hits ``use`` (indices) with
    ``tr ~ exp(g) * tq + offset``, and the number of inliers written to ``use[:k]`` (in
    place). A coarse grid of factors (a hit votes only within ``spread[h]`` of its own span
    ratio ``log_s[h]``), then a fine one around the best, where a long clip's offsets line up,
    then a line fitted through the inliers.
    An offset's votes are the hits within +-WARP_OFFSET_TOL frames of it; ties go to the
    lower factor, then the lower offset. Votes are counted in ``hist`` (zero on entry and on
    return; one row of offsets per coarse factor), so each hit costs a few increments."""
    tol = WARP_OFFSET_TOL
    n_g = len(coarse)
    s_lo = np.exp(coarse[0] - WARP_LOG_STEP)
    s_hi = np.exp(coarse[-1] + WARP_LOG_STEP)
    o_min, o_max = np.inf, -np.inf
    for h in use:
        o_min = min(o_min, tr[h] - s_hi * tq[h])
        o_max = max(o_max, tr[h] - s_lo * tq[h])
    if len(use) == 0:
        return 0, 0.0, np.int64(0), 0
    base = np.int64(np.floor(o_min)) - tol - 1
    width = np.int64(np.ceil(o_max)) - base + tol + 2
    if width * n_g > len(hist):              # a very long pair: a histogram of its own
        hist = np.zeros(width * n_g, np.int32)
    if len(touched) < (n_g + 1) * len(use):   # a hit votes for <= n_g coarse factors
        touched = np.empty((n_g + 1) * len(use), np.int64)
    es = np.exp(coarse)
    n_t = 0
    for h in use:
        for gi in range(n_g):
            if abs(log_s[h] - coarse[gi]) <= spread[h]:
                cell = gi * width + np.int64(np.rint(tr[h] - es[gi] * tq[h])) - base
                if hist[cell] == 0:
                    touched[n_t] = cell
                    n_t += 1
                hist[cell] += 1
    best_v, best_cell = _peak_cell(hist, touched, n_t, tol)
    if best_v == 0:
        return 0, 0.0, np.int64(0), 0
    g0 = coarse[best_cell // width]
    # fine grid around g0: one histogram row, reused
    fv, fg, fo = 0, g0, np.int64(0)
    for df in fine:
        g = g0 + df
        sg = np.exp(g)
        n_t = 0
        for h in use:
            if abs(log_s[h] - g0) <= spread[h] + WARP_LOG_STEP:
                cell = np.int64(np.rint(tr[h] - sg * tq[h])) - base
                if hist[cell] == 0:
                    touched[n_t] = cell
                    n_t += 1
                hist[cell] += 1
        bv, bc = _peak_cell(hist, touched, n_t, tol)
        if bv > fv:
            fv, fg, fo = bv, g, bc + base
    sg = np.exp(fg)
    k = 0
    for h in use:
        if abs(log_s[h] - g0) <= spread[h] + WARP_LOG_STEP and \
                abs(np.int64(np.rint(tr[h] - sg * tq[h])) - fo) <= tol:
            use[k] = h
            k += 1
    # the grid's ties: every factor whose drift over the clip fits the +-tol window votes the
    # same (+-0.003 on a 10 s clip, lowest first); a least-squares line through the inliers
    # is the factor itself (kept when it stays in the fine window)
    if k >= 3:
        mq, mr = 0.0, 0.0
        for u in range(k):
            mq += tq[use[u]]
            mr += tr[use[u]]
        mq, mr = mq / k, mr / k
        sqq, sqr = 0.0, 0.0
        for u in range(k):
            dq = tq[use[u]] - mq
            sqq += dq * dq
            sqr += dq * (tr[use[u]] - mr)
        if sqq > 0 and sqr > 0 and abs(np.log(sqr / sqq) - fg) <= WARP_LOG_STEP:
            fg = np.log(sqr / sqq)
            fo = np.int64(np.rint(mr - (sqr / sqq) * mq))
    return fv, fg, fo, k


@numba.njit(cache=True, nogil=True)
def _warp_hits(lo, cnt, qtri, span_q, lf_q, span_r, lf_r, max_log_s, max_semis, spread_frames):
    """The postings of each query hash (``lo[k] : lo[k] + cnt[k]``) whose time factor (span
    ratio) and pitch shift (anchor difference) are in the searched range: (posting, query
    triplet, log time factor, semitones), without materialising the rejected ones."""
    n = 0
    for k in range(len(cnt)):
        n += cnt[k]
    post = np.empty(n, np.int64)
    tri = np.empty(n, np.int64)
    ls = np.empty(n, np.float64)
    sm = np.empty(n, np.float64)
    m = 0
    for k in range(len(cnt)):
        t = qtri[k]
        for p in range(lo[k], lo[k] + cnt[k]):
            x = np.log(span_r[p] / span_q[t])
            y = np.float64(lf_r[p]) - lf_q[t]
            if abs(x) <= max_log_s + spread_frames / min(span_r[p], span_q[t]) and abs(y) <= max_semis:
                post[m], tri[m], ls[m], sm[m] = p, t, x, y
                m += 1
    return post[:m], tri[:m], ls[:m], sm[:m]


#: the pre-vote's cells: offsets (at each hit's own span ratio) of 48 frames, pitch shifts
#: of 0.3 semitone; a pair's score is its best 3 x 3 block of cells
_PRE_OFFSET = 48.0
_PRE_SEMIS = 0.3


@numba.njit(cache=True, nogil=True)
def _pair_prescore(order, starts, counts, tq, tr, log_s, semis):
    """Per pair (hits ``order[starts[p]:starts[p] + counts[p]]``), a cheap count of the hits
    that agree on a warp: the most hits in one 3 x 3 block of (offset, pitch shift) cells.
    Chance hits spread over the whole range of both, a copy's hits pile up in one block; it
    ranks the pairs worth the Hough vote."""
    n_s = int(np.ceil(1.5 / _PRE_SEMIS)) * 2 + 3
    out = np.zeros(len(starts), np.int64)
    hist = np.zeros(0, np.int32)
    for p in range(len(starts)):
        a, b = starts[p], starts[p] + counts[p]
        ob = np.empty(b - a, np.int64)
        sb = np.empty(b - a, np.int64)
        for u in range(a, b):
            h = order[u]
            g = min(max(log_s[h], -WARP_LOG_RANGE), WARP_LOG_RANGE)
            ob[u - a] = np.int64(np.floor((tr[h] - np.exp(g) * tq[h]) / _PRE_OFFSET))
            sb[u - a] = np.int64(np.floor(semis[h] / _PRE_SEMIS)) + n_s // 2
        o0 = ob.min() - 1
        width = ob.max() - o0 + 2
        if len(hist) < width * n_s:
            hist = np.zeros(width * n_s, np.int32)
        for u in range(b - a):
            hist[(ob[u] - o0) * n_s + min(max(sb[u], 1), n_s - 2)] += 1
        best = 0
        for u in range(b - a):
            c = (ob[u] - o0) * n_s + min(max(sb[u], 1), n_s - 2)
            v = 0
            for dd in (-n_s, 0, n_s):
                v += hist[c + dd - 1] + hist[c + dd] + hist[c + dd + 1]
            best = max(best, v)
        for u in range(b - a):
            hist[(ob[u] - o0) * n_s + min(max(sb[u], 1), n_s - 2)] = 0
        out[p] = best
    return out


@numba.njit(cache=True, nogil=True)
def _warp_votes(starts, need, tq, tr, log_s, spread, semis, grid, coarse, fine):
    """Per (query, ref) pair (hits ``starts[p]:starts[p + 1]``): up to two warp hypotheses,
    (pair, votes, time factor, semitones, offset). The time factor is voted once from the hits
    whose peaks all stretch with the audio (when there are enough) and once from all hits (a
    sustained tone's grid picks do not stretch, so they vote near factor 1, the best estimate
    a tonal sound allows); both go to the confirmation. Votes are the Hough inliers whose
    pitch shift is within 0.6 semitone of their median."""
    n_pairs = len(starts) - 1
    out_p = np.empty(2 * n_pairs, np.int64)
    out_v = np.empty(2 * n_pairs, np.int64)
    out_s = np.empty(2 * n_pairs, np.float64)
    out_m = np.empty(2 * n_pairs, np.float64)
    out_o = np.empty(2 * n_pairs, np.int64)
    n_out = 0
    hist = np.zeros(len(coarse) * 4096, np.int32)
    touched = np.empty(4096, np.int64)
    for p in range(n_pairs):
        a, b = starts[p], starts[p + 1]
        every = np.arange(a, b).astype(np.int64)
        free = every[~grid[a:b]]
        first_out = n_out
        for hyp in range(2):
            if hyp == 0:
                if len(free) < need[p]:
                    continue
                use = free.copy()
            else:
                use = every.copy()
            votes, g, off, k = _hough(tq, tr, log_s, spread, use, coarse, fine, hist, touched)
            if votes < need[p]:
                continue
            sm = semis[use[:k]]
            med = np.median(sm)
            votes = 0
            for x in sm:
                if abs(x - med) <= 0.6:
                    votes += 1
            s = np.exp(g)
            dup = False
            for c in range(first_out, n_out):
                if abs(out_s[c] - s) < 2e-3 and out_o[c] == off:
                    dup = True
            if votes >= need[p] and not dup:
                out_p[n_out], out_v[n_out], out_s[n_out] = p, votes, s
                out_m[n_out], out_o[n_out] = med, off
                n_out += 1
    return out_p[:n_out], out_v[:n_out], out_s[:n_out], out_m[:n_out], out_o[:n_out]


#: how far (in frames over the overlap) an estimated time factor may be off a family's and still
#: count as it: short clips' factors are 1-2 % off (a few frames over ~2 s)
WARP_FAMILY_FRAMES = 5.0


def _one_edit(time_factor: float, semitones: float, overlap_frames: int) -> bool:
    """Whether a warp estimate is one of the edits re-uploads make: a speed change (pitch
    follows time: -12 log2 of the factor), a pitch shift (time unchanged) or a tempo change
    (pitch unchanged), within the estimate's precision. A same sentence spoken by another
    voice, faster and lower, matched a distractor at 0.76 as a "1.058, +0.95 semitone" warp."""
    g = np.log(time_factor)
    tol_g = max(0.01, WARP_FAMILY_FRAMES / max(overlap_frames, 1))
    speed = abs(semitones + 12 / np.log(2) * g) <= 0.3 + 12 / np.log(2) * tol_g
    return bool(speed or abs(g) <= tol_g or abs(semitones) < WARP_PITCHED)


class WarpMatcher:
    """The warp pass: triplet-hash candidates, a Hough vote over (time factor, offset), then
    the aligned correlation of the query's band features *warped to the estimated factor and
    pitch* against the reference, at the same threshold as the exact path."""

    def __init__(self, index: WarpIndex, *, min_votes: int = 8, min_fraction: float = 0.02,
                 min_correlation: float = 0.7, min_overlap_seconds: float = 0.2, top: int = 5,
                 min_correlation_pitched: float = 0.75, min_correlation_combined: float = 0.8):
        self.index = index
        #: a warp that is none of one speed change, one pitch shift or one tempo change (both
        #: time and pitch moved independently) has searched two dimensions: this much
        self.min_correlation_combined = min_correlation_combined
        #: a confirmation at a pitch shift of >= WARP_PITCHED semitones has searched one more
        #: dimension, and tone patterns align by chance there: it must correlate this much
        self.min_correlation_pitched = min_correlation_pitched
        self.min_votes = min_votes
        self.min_fraction = min_fraction
        self.min_correlation = min_correlation
        self.min_overlap_seconds = min_overlap_seconds
        self.top = top

    def candidates(self, wp) -> list[tuple[int, int, float, float, int]]:
        """(ref, votes, time factor, semitones, offset in 8 ms frames) of one query's best refs."""
        return self.candidates_batch([wp])[0]

    def candidates_batch(self, wps: Sequence) -> list[list[tuple[int, int, float, float, int]]]:
        """:meth:`candidates` of each query of a batch: the lookups, hit filtering and pair
        counts as whole-batch numpy, the Hough votes in one numba pass over every pair."""
        from .fingerprint import warp_query_hashes

        ix = self.index
        out: list[list] = [[] for _ in wps]
        if not len(ix.hash):
            return out
        qhs, qts, n = [], [], 0
        for wp in wps:
            qh, qt = warp_query_hashes(wp) if len(wp) else (np.zeros(0, np.uint32), np.zeros(0, np.int32))
            qhs.append(qh)
            qts.append(qt.astype(np.int64) + n)
            n += len(wp)
        if not n:
            return out
        # per query triplet (batch-wide numbering): query, anchor time, span, anchor pitch, grid
        qid = np.repeat(np.arange(len(wps)), [len(wp) for wp in wps])
        nonempty = [wp for wp in wps if len(wp)]
        t_i = np.concatenate([wp.t[wp.tri[:, 0]] for wp in nonempty]).astype(np.float64)
        span_q = np.concatenate([wp.t[wp.tri[:, 2]] - wp.t[wp.tri[:, 0]] for wp in nonempty]).astype(np.float64)
        lf_i = np.concatenate([wp.lf[wp.tri[:, 0]] for wp in nonempty])
        grid_q = np.concatenate([wp.grid for wp in nonempty])
        qh, qtri = np.concatenate(qhs), np.concatenate(qts)
        # sorted, distinct needles: the binary searches walk the index in order
        uh, inv = np.unique(qh, return_inverse=True)
        lo = np.searchsorted(ix.hash, uh, side="left")
        cnt = (np.searchsorted(ix.hash, uh, side="right") - lo)[inv]
        lo = lo[inv]
        cnt[cnt > ix.max_bucket] = 0
        if not int(cnt.sum()):
            return out
        post, qtri, log_s, semis = _warp_hits(lo, cnt, qtri, span_q, lf_i, ix.span, ix.lf1,
                                              WARP_LOG_RANGE + WARP_HIT_SPREAD, 1.5, WARP_HIT_SPREAD_FRAMES)
        grid = grid_q[qtri] | ix.grid[post]
        # group the hits by (query, ref); a pair is counted when it reaches its vote threshold
        n_refs = len(ix.keys)
        pair_key = qid[qtri].astype(np.int64) * n_refs + ix.ref[post]
        order = np.argsort(pair_key, kind="stable")
        pair_key = pair_key[order]
        keys, starts, counts = np.unique(pair_key, return_index=True, return_counts=True)
        pq, pr = keys // n_refs, keys % n_refs
        qlen = np.array([len(wp) for wp in wps], np.int64)
        need = np.maximum(self.min_votes, np.ceil(self.min_fraction * np.minimum(qlen[pq], ix._n_triplets[pr])))
        sel = np.flatnonzero(counts >= need)
        if not len(sel):
            return out
        # per query its 3 x top refs by consistent hits (ties: lower ref first): raw hit counts
        # favour long references (a 24 s music clip draws thousands of chance hits from a
        # noisy query's wide lookup), which pushed a short true reference out of the top 15
        score = _pair_prescore(order, starts[sel], counts[sel], t_i[qtri], ix.t1[post].astype(np.float64),
                               log_s, semis)
        sel = sel[np.lexsort((pr[sel], -score, pq[sel]))]
        first = np.searchsorted(pq[sel], pq[sel], side="left")
        sel = sel[np.arange(len(sel)) - first < 3 * self.top]
        hits = np.concatenate([order[starts[p]:starts[p] + counts[p]] for p in sel])
        bounds = np.concatenate([[0], np.cumsum(counts[sel])]).astype(np.int64)
        tq = t_i[qtri[hits]]
        tr = ix.t1[post[hits]].astype(np.float64)
        span_h = np.minimum(span_q[qtri[hits]], ix.span[post[hits]].astype(np.float64))
        spread = WARP_HIT_SPREAD + WARP_HIT_SPREAD_FRAMES / np.maximum(span_h, 1.0)
        res = _warp_votes(bounds, need[sel].astype(np.int64), tq, tr, log_s[hits], spread, semis[hits],
                          grid[hits], _COARSE, _FINE)
        for p, v, s, m, o in zip(*res):
            out[int(pq[sel[p]])].append((int(pr[sel[p]]), int(v), float(s), float(m), int(o)))
        for q in range(len(out)):
            out[q].sort(key=lambda c: -c[1])
            out[q] = out[q][: 2 * self.top]
        return out

    def match(self, queries: Sequence, query_bands: BandsLookup, ref_bands: BandsLookup,
              query_bands_at: Callable[[int, float], "np.ndarray | None"] | None = None
              ) -> tuple[list[WarpMatch], int]:
        """Confirmed warped matches (``queries`` are :class:`fingerprint.WarpPrint`) and the
        number of candidates checked. ``query_bands_at(q, semitones)``, when given, is the
        query's band features measured at a pitch (:func:`fingerprint.pitched_band_features`),
        used instead of shifting ``query_bands`` across bands."""
        out, n_cands = [], 0
        for c0 in range(0, len(queries), WARP_QUERY_CHUNK):     # bounded hit arrays
            batch = self.candidates_batch(queries[c0:c0 + WARP_QUERY_CHUNK])
            for q, cands in enumerate(batch, start=c0):
                if not cands:
                    continue
                qb = query_bands(q)
                if qb is None:
                    continue
                n_cands += len(cands)
                out += self._confirm(q, qb, cands, ref_bands, query_bands_at)
        out.sort(key=lambda m: (m.query, -m.score, m.ref))
        return out, n_cands

    def _confirm(self, q: int, qb: np.ndarray, cands, ref_bands: BandsLookup,
                 query_bands_at=None) -> list[WarpMatch]:
        from .fingerprint import BAND_DECIMATE, FRAME_SECONDS, correlation_at, warp_bands

        out = []
        pitched: dict[float, np.ndarray | None] = {}
        for r, votes, s, semis, off in cands:
            rb = ref_bands(r)
            if rb is None:
                continue
            if query_bands_at is not None and abs(semis) >= WARP_PITCHED:
                key = round(semis, 2)
                if key not in pitched:
                    pitched[key] = query_bands_at(q, key)
                if pitched[key] is None:
                    continue
                wb = warp_bands(pitched[key], s, 0.0)
            else:
                wb = warp_bands(qb, s, semis)
            base = int(round(off / BAND_DECIMATE))
            score, n, d = correlation_at(wb, rb, range(base - 2, base + 3))
            overlap = n * BAND_DECIMATE * FRAME_SECONDS
            need = self.min_correlation_pitched if abs(semis) >= WARP_PITCHED else self.min_correlation
            if not _one_edit(s, semis, n * BAND_DECIMATE):
                need = max(need, self.min_correlation_combined)
            if score >= need and overlap >= self.min_overlap_seconds:
                out.append(WarpMatch(q, r, (base if d is None else d) * BAND_DECIMATE, votes,
                                     score, overlap, time_factor=s, semitones=semis))
        return out


WARP_METHOD = "triplet+warped_band_correlation"


def warp_eval_matches(eval_paths: Sequence[str], query_paths: Sequence[str], skip: Iterable[int],
                      ref_bands: BandsLookup, query_bands: BandsLookup) -> list[WarpMatch]:
    """The filter stage's warp pass: corpus clips ``query_paths`` the exact path did not match
    (all but ``skip``) against the eval clips ``eval_paths`` (refs numbered in that order),
    so a sped-up, pitch-shifted or time-stretched copy of an eval clip is caught. Triplets
    are read from the audio here (they are not in the fingerprint store); a clip that cannot
    be decoded is not matched. Matches are numbered like the exact path's (query = position
    in ``query_paths``)."""
    from .fpstore import warp_print_file

    index = WarpIndex()
    for path in eval_paths:
        wp = warp_print_file(str(path))
        index.add(len(index), wp if wp is not None else _empty_warp_print())
    if not len(index):
        return []
    index.build()
    matcher = WarpMatcher(index)
    skip = set(skip)
    todo = [q for q in range(len(query_paths)) if q not in skip]
    out: list[WarpMatch] = []
    for c0 in range(0, len(todo), WARP_QUERY_CHUNK):        # bounded: one chunk's triplets
        part = todo[c0:c0 + WARP_QUERY_CHUNK]
        wps = [warp_print_file(str(query_paths[q])) for q in part]
        ok = [k for k, wp in enumerate(wps) if wp is not None]
        found, _ = matcher.match([wps[k] for k in ok], query_bands=lambda k: query_bands(part[ok[k]]),
                                 ref_bands=ref_bands,
                                 query_bands_at=lambda k, st: _pitched_file(query_paths[part[ok[k]]], st))
        for m in found:
            m.query = part[ok[m.query]]
            out.append(m)
    return out


def _pitched_file(path: str, semitones: float) -> "np.ndarray | None":
    """:func:`fingerprint.pitched_band_features` of an audio file (bounded read), or None."""
    from .fingerprint import pitched_band_features
    from .fpstore import frame_features_file

    try:
        return frame_features_file(str(path), lambda x, sr: pitched_band_features(x, sr, semitones))
    except Exception:  # noqa: BLE001 - unreadable now: no confirmation, no match
        return None


def match_fields(m: Match) -> dict:
    """What a match adds to ``filter_match`` beyond the exact path's fields: for a warped
    copy, its method and the warp found (reference duration / copy's, reference pitch minus
    the copy's)."""
    if isinstance(m, WarpMatch):
        return {"method": WARP_METHOD, "time_factor": round(m.time_factor, 4),
                "semitones": round(m.semitones, 2)}
    return {}
