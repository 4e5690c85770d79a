"""Content matching: an inverted index of landmark hashes, offset voting, then the aligned check.

The index is three sorted numpy arrays (hash, clip, anchor time), so a lookup is a
``searchsorted`` per query hash and a vote count over (clip, time offset) pairs, batched over
many queries at once. A reference that shares at least ``min_votes`` hashes at one offset
(+-1 frame) is a *candidate*; :class:`ContentMatcher` confirms it with
:func:`fingerprint.aligned_correlation` on band envelopes, the only thing that decides.

Over-full buckets (a hash that half the corpus contains, e.g. a steady hum) carry no
evidence and cost the most; buckets above ``max_bucket`` postings are skipped at query time,
and a query whose hashes would touch more than ``max(postings_per_hash * n_hashes,
min_budget)`` postings keeps only its rarest hashes (an adaptive stop-list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

from .fingerprint import Fingerprint, aligned_correlation

_OFF_BIAS = 1 << 20            # offsets are shifted to be non-negative inside packed keys
_OFF_BITS = 21


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

    def __init__(self, max_bucket: int = 5000, postings_per_hash: int = 25, min_budget: int = 50_000):
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
        self._built = True
        return self

    @property
    def nbytes(self) -> int:
        return self.hash.nbytes + self.ref.nbytes + self.time.nbytes

    def candidates(self, queries: Sequence[Fingerprint], *, min_votes: int = 6,
                   min_fraction: float = 0.02, top: int = 5, offsets: int = 4,
                   exclude_self: Sequence[int] | None = None,
                   max_postings: int = 4_000_000) -> list[Candidate]:
        """Offset-voted candidates, computed over sub-batches of at most ``max_postings``
        index hits so memory stays bounded (each hit costs ~60 bytes while voting)."""
        if not self._built:
            self.build()
        if not len(queries) or not len(self.hash):
            return []
        load = []
        queries = list(queries)
        for k, q in enumerate(queries):
            lo = np.searchsorted(self.hash, q.hashes, side="left")
            hi = np.searchsorted(self.hash, q.hashes, side="right")
            c = hi - lo
            c[c > self.max_bucket] = 0
            budget = max(self.postings_per_hash * len(q), self.min_budget)
            if c.sum() > budget:
                # rarest hashes first: every hash carries the same evidence for the true
                # reference, but popular ones cost the most, so a per-query budget keeps the
                # cheap evidence and drops the expensive (an adaptive stop-list)
                order = np.argsort(c, kind="stable")
                keep = order[np.cumsum(c[order]) <= budget]
                keep.sort()
                q = Fingerprint(q.hashes[keep], q.times[keep], q.n_frames, q.bands)
                queries[k] = q
                c = c[keep]
            load.append(int(c.sum()))
        out: list[Candidate] = []
        start = 0
        while start < len(queries):
            end, total = start, 0
            while end < len(queries) and (end == start or total + load[end] <= max_postings):
                total += load[end]
                end += 1
            ex = None if exclude_self is None else list(exclude_self[start:end])
            for c in self._candidates(queries[start:end], min_votes=min_votes,
                                      min_fraction=min_fraction, top=top, offsets=offsets,
                                      exclude_self=ex):
                c.query += start
                out.append(c)
            start = end
        return out

    def _candidates(self, queries: Sequence[Fingerprint], *, min_votes: int, min_fraction: float,
                    top: int, offsets: int, exclude_self: Sequence[int] | None) -> list[Candidate]:
        """Offset-voted candidates for a batch of query fingerprints.

        ``min_fraction`` scales the vote threshold with the shorter clip's hash count, so a
        long noisy query does not nominate by chance. ``exclude_self[i]`` is a ref to skip for
        query ``i`` (the query itself when the index holds the corpus).
        """
        if not self._built:
            self.build()
        if not len(queries) or not len(self.hash):
            return []
        qh = np.concatenate([q.hashes for q in queries])
        qt = np.concatenate([q.times for q in queries]).astype(np.int64)
        qn = np.array([len(q) for q in queries], np.int64)
        qi = np.repeat(np.arange(len(queries), dtype=np.int64), qn)
        lo = np.searchsorted(self.hash, qh, side="left")
        hi = np.searchsorted(self.hash, qh, side="right")
        cnt = hi - lo
        cnt[cnt > self.max_bucket] = 0
        total = int(cnt.sum())
        if total == 0:
            return []
        # expand each query hash into its postings
        rep = np.repeat(np.arange(len(qh)), cnt)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
        post = starts + np.arange(total)
        refs = self.ref[post].astype(np.int64)
        offs = self.time[post].astype(np.int64) - qt[rep] + _OFF_BIAS
        qq = qi[rep]
        ref_bits = max(1, len(self.keys).bit_length())
        q_shift = ref_bits + _OFF_BITS
        if len(queries) >= 1 << (63 - q_shift):
            raise ValueError("query batch too large for one packed key; split it")
        key = (qq << q_shift) | (refs << _OFF_BITS) | offs
        key.sort()
        uniq_start = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        ukey = key[uniq_start]
        ucnt = np.diff(np.concatenate([uniq_start, [len(key)]]))
        # +-1 frame tolerance: add the neighbours' counts (same query and ref, offset +-1)
        votes = ucnt.copy()
        neighbours = []
        for d in (-1, 1):
            pos = np.searchsorted(ukey, ukey + d)
            pos_ok = pos < len(ukey)
            hit = np.zeros(len(ukey), bool)
            hit[pos_ok] = ukey[pos[pos_ok]] == ukey[pos_ok] + d
            votes[hit] += ucnt[pos[hit]]
            neighbours.append((pos, hit))
        # keep only local maxima along the offset axis (ties go to the lower offset)
        peak = np.ones(len(ukey), bool)
        for (pos, hit), strict in zip(neighbours, (True, False)):
            nv = np.zeros(len(ukey), votes.dtype)
            nv[hit] = votes[pos[hit]]
            peak &= (votes > nv) if strict else (votes >= nv)
        uq = ukey >> q_shift
        ur = (ukey >> _OFF_BITS) & ((1 << ref_bits) - 1)
        uo = (ukey & ((1 << _OFF_BITS) - 1)) - _OFF_BIAS
        shorter = np.minimum(qn[uq], self._n_hashes_arr[ur])
        need = np.maximum(min_votes, np.ceil(min_fraction * shorter))
        ok = (votes >= need) & peak
        if exclude_self is not None:
            ex = np.asarray(exclude_self, np.int64)
            ok &= ur != ex[uq]
        uq, ur, uo, votes = uq[ok], ur[ok], uo[ok], votes[ok]
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


BandsLookup = Callable[[int], "np.ndarray | None"]


class ContentMatcher:
    """Index + confirmation. ``ref_bands(ref)`` and ``query_bands(i)`` give band features for
    the second check (kept in memory, or recomputed from audio by the caller)."""

    def __init__(self, index: FingerprintIndex, *, min_votes: int = 6, min_fraction: float = 0.02,
                 min_correlation: float = 0.7, min_overlap_seconds: float = 0.2, top: int = 5,
                 offsets: int = 4):
        self.index = index
        self.min_votes = min_votes
        self.min_fraction = min_fraction
        self.min_correlation = min_correlation
        self.min_overlap_seconds = min_overlap_seconds
        self.top = top
        self.offsets = offsets

    def match(self, queries: Sequence[Fingerprint], ref_bands: BandsLookup,
              query_bands: BandsLookup | None = None,
              exclude_self: Sequence[int] | None = None) -> tuple[list[Match], int]:
        """Confirmed matches (best per query first) and the number of candidates checked."""
        from .fingerprint import BAND_DECIMATE, FRAME_SECONDS

        cands = self.index.candidates(queries, min_votes=self.min_votes,
                                      min_fraction=self.min_fraction, top=self.top,
                                      offsets=self.offsets, exclude_self=exclude_self)
        best: dict[tuple[int, int], Match] = {}
        for c in cands:
            qb = queries[c.query].bands if query_bands is None else query_bands(c.query)
            rb = ref_bands(c.ref)
            if qb is None or rb is None:
                continue
            score, n = aligned_correlation(qb, rb, c.offset)
            overlap = n * BAND_DECIMATE * FRAME_SECONDS
            if score >= self.min_correlation and overlap >= self.min_overlap_seconds:
                prev = best.get((c.query, c.ref))
                if prev is None or score > prev.score:
                    best[(c.query, c.ref)] = Match(c.query, c.ref, c.offset, c.votes, score, overlap)
        out = list(best.values())
        out.sort(key=lambda m: (m.query, -m.score, m.ref))
        return out, len(cands)


def best_per_query(matches: Iterable[Match]) -> dict[int, Match]:
    best: dict[int, Match] = {}
    for m in matches:
        if m.query not in best or m.score > best[m.query].score:
            best[m.query] = m
    return best
