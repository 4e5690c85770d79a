"""The exact path's lookup kernels (``FingerprintIndex.candidates``: bucket spans, rarest-hash
selection, offset voting, per-query top refs) give the candidates of their plain definition."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from laion_audio.filters import content_overlap as co
from laion_audio.filters.fingerprint import Fingerprint


def _reference(index: co.FingerprintIndex, queries, *, min_votes=6, min_fraction=0.02, top=5,
               offsets=4, exclude_self=None) -> list[tuple[int, int, int, int]]:
    """The definition, per query, in plain Python: buckets found by binary search in the hash
    column, buckets over ``max_bucket`` count as empty, the rarest hashes kept (stable sort by
    posting count) while their postings fit the budget; votes per (ref, offset); an offset's
    votes are its count plus its +-1 neighbours', kept when >= need and a local maximum (above
    the offset below, at least the offset above, counting only neighbours with hits), the need
    scaled by the kept hashes that have postings (the others cannot vote); per ref
    its best ``offsets`` (most votes, lower offset), per query its ``top`` refs (best votes,
    lower ref), out by (ref, -votes, offset)."""
    hashes = index._old_hashes()
    out = []
    for q, fp in enumerate(queries):
        lo = np.searchsorted(hashes, fp.hashes, side="left")
        cnt = np.searchsorted(hashes, fp.hashes, side="right") - lo
        cnt[cnt > index.max_bucket] = 0
        budget = max(index.postings_per_hash * len(fp), index.min_budget)
        order = np.argsort(cnt, kind="stable")
        kept = order[np.cumsum(cnt[order]) <= budget]
        n_voting = int((cnt[kept] > 0).sum())       # kept hashes that have postings
        votes: Counter = Counter()
        for k in kept:
            for p in range(lo[k], lo[k] + cnt[k]):
                votes[(int(index.ref[p]), int(index.time[p]) - int(fp.times[k]))] += 1
        peaks: dict[int, list[tuple[int, int]]] = {}
        for (r, o), c in votes.items():
            if exclude_self is not None and r == exclude_self[q]:
                continue
            need = max(min_votes, np.ceil(min_fraction * min(n_voting, index.n_hashes[r])))
            c_lo, c_hi = votes.get((r, o - 1), 0), votes.get((r, o + 1), 0)
            v = c + c_lo + c_hi
            if v < need:
                continue
            if c_lo > 0 and v <= c_lo + c + votes.get((r, o - 2), 0):
                continue
            if c_hi > 0 and v < c_hi + c + votes.get((r, o + 2), 0):
                continue
            peaks.setdefault(r, []).append((-v, o))
        best = sorted(peaks, key=lambda r: (min(peaks[r])[0], r))[:top]
        for r in sorted(best):
            out += [(q, r, o, -nv) for nv, o in sorted(peaks[r])[:offsets]]
    return out


def _corpus(seed: int = 3):
    """Clips over a small, skewed hash vocabulary (popular hashes over the bucket cap), some
    looped (a pattern repeated every 40-90 frames: combs of offsets), one hours long; queries
    are excerpts with jittered times (votes split over neighbouring offsets, ties), mixtures of two
    clips, and noise."""
    rng = np.random.default_rng(seed)
    vocab = 2500

    def draw(n):
        return np.minimum(rng.zipf(1.3, n) - 1 + rng.integers(0, 40, n) * (rng.random(n) < 0.5), vocab - 1)

    refs = []
    for i in range(70):
        n = int(rng.integers(40, 400))
        if i % 7 == 0:                        # looped
            pat_h, pat_t = draw(25), rng.integers(0, 30, 25)
            period = int(rng.integers(40, 90))
            reps = n // 25 + 1
            h = np.tile(pat_h, reps)[:n]
            t = (np.tile(pat_t, reps) + np.repeat(np.arange(reps) * period, 25))[:n]
        else:
            h, t = draw(n), np.sort(rng.integers(0, 3000, n))
        refs.append(Fingerprint(h.astype(np.uint32), t.astype(np.int32), int(t.max()) + 1))
    h = draw(300)
    t = np.sort(rng.integers(0, 2_000_000, 300))      # ~4.4 h: offsets span > the dense histogram
    refs.append(Fingerprint(h.astype(np.uint32), t.astype(np.int32), int(t.max()) + 1))
    queries = []
    for j in range(60):
        src = refs[int(rng.integers(0, len(refs)))]
        a = int(rng.integers(0, max(1, len(src) - 30)))
        b = min(len(src), a + int(rng.integers(30, 200)))
        h, t = src.hashes[a:b], src.times[a:b] - src.times[a] + int(rng.integers(0, 50))
        if j % 3 == 0:
            t = t + rng.integers(-1, 2, len(t))
        elif j % 3 == 1:                      # two offsets tie: the lower one is the peak
            t = t + rng.integers(0, 2, len(t))
        if j % 5 == 0:
            other = refs[int(rng.integers(0, len(refs)))]
            h = np.concatenate([h, other.hashes[:60]])
            t = np.concatenate([t, other.times[:60]])
        if j % 11 == 0:
            h = draw(150)
            t = np.sort(rng.integers(0, 2000, 150))
        t = np.maximum(t, 0)
        queries.append(Fingerprint(h.astype(np.uint32), t.astype(np.int32), int(t.max()) + 1))
    queries.append(Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32), 0))
    queries.append(refs[-1])
    return refs, queries


def _tuples(cands):
    return [(c.query, c.ref, c.offset, c.votes) for c in cands]


@pytest.mark.parametrize("max_width,wide", [(co._MAX_WIDTH, False), (16, False), (co._MAX_WIDTH, True)])
def test_candidates_equal_their_definition(monkeypatch, max_width, wide):
    """Every candidate the kernels give, and no other, in the same order, under a budget that
    thins most queries, with the dense offset histogram, (``max_width`` 16) the sorted
    fallback for wide offset spans, and (``wide``) hashes over 2^24 (binary-searched buckets)."""
    monkeypatch.setattr(co, "_MAX_WIDTH", max_width)
    refs, queries = _corpus()
    if wide:
        for fp in {id(f): f for f in refs + queries}.values():     # the long ref is a query too
            fp.hashes = fp.hashes + np.uint32(1 << 25)
    index = co.FingerprintIndex(max_bucket=60, postings_per_hash=3, min_budget=400, popular=None)
    for i, fp in enumerate(refs):
        index.add(i, fp)
    index.build()
    assert (index.hash is not None) == wide
    cases = [dict(), dict(min_votes=4, top=2, offsets=1), dict(min_votes=3, min_fraction=0.05, top=50,
                                                               offsets=50),
             dict(min_votes=4, exclude_self=[int(q % len(refs)) for q in range(len(queries))])]
    total = 0
    for kw in cases:
        got = _tuples(index.candidates(queries, **kw))
        assert got == _reference(index, queries, **kw), kw
        total += len(got)
    assert total > 300                       # the cases nominate plenty (combs included)
    index.min_budget = 10**9                 # nothing thinned
    assert _tuples(index.candidates(queries)) == _reference(index, queries)


def test_keep_rarest_is_a_stable_sort_prefix():
    """The histogram selection keeps exactly the prefix of a stable sort by count that fits the
    budget (ties in order), including budgets of 0 and below and counts past the histogram."""
    rng = np.random.default_rng(9)
    qn = rng.integers(0, 300, 80)
    cnt = np.where(rng.random(qn.sum()) < 0.3, rng.integers(0, 4, qn.sum()), rng.integers(0, 200, qn.sum()))
    budget = rng.integers(-5, 20_000, len(qn))
    budget[:3] = (0, -1, 10**9)
    for c in (cnt, np.where(rng.random(len(cnt)) < 0.01, co._SELECT_HIST + 7, cnt)):
        keep = co._keep_rarest(c, qn, budget)
        k0 = 0
        for q, n in enumerate(qn):
            part = c[k0:k0 + n]
            order = np.argsort(part, kind="stable")
            want = np.zeros(n, bool)
            want[order[np.cumsum(part[order]) <= budget[q]]] = True
            assert np.array_equal(keep[k0:k0 + n], want), q
            k0 += n


def test_peaks_at_the_threshold_across_prefilter_bin_edges():
    """A peak whose votes just reach ``need``, split over its +-1 frames (and a neighbour at +2),
    at every position of the prefilter's offset bins (negative offsets too): the prefilter
    keeps all its hits, reading the next bin only where a hit's +-3 window crosses into it."""
    patterns = ([-1, -1, 0, 0, 1, 1], [-1, 0, 0, 0, 1, 1], [-1, -1, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 1])
    index = co.FingerprintIndex()
    queries, want, h = [], [], 0
    width = 1 << co._BIN_SHIFT
    for o in range(-3 * width, 3 * width):
        for pat in patterns:
            ref_t = 500 + 20 * np.arange(len(pat))
            hashes = np.arange(h, h + len(pat), dtype=np.uint32)
            h += len(pat)
            r = index.add(len(index), Fingerprint(hashes, ref_t.astype(np.int32), int(ref_t[-1]) + 1))
            q_t = ref_t - o - np.array(pat)
            queries.append(Fingerprint(hashes, q_t.astype(np.int32), int(q_t.max()) + 1))
            want.append((len(queries) - 1, r, o))
    index.build()
    got = _tuples(index.candidates(queries, min_votes=6, min_fraction=0.0, offsets=1))
    assert got == _reference(index, queries, min_votes=6, min_fraction=0.0, offsets=1)
    assert [(q, r, o) for q, r, o, _ in got] == want


def _rekey_reference(h, r, t, counts, popular):
    """:func:`co._rekey` in plain Python: anchors are (clip, time, anchor bin); a landmark in a
    bucket over ``popular`` is filed under (itself, its anchor's landmark with the least
    (dt, df) other than itself), or dropped (-1) when alone at its anchor."""
    from laion_audio.filters.fingerprint import unpack_landmarks

    f1, df, dt = unpack_landmarks(h)
    groups: dict = {}
    for k in range(len(h)):
        groups.setdefault((int(r[k]), int(t[k]), int(f1[k])), []).append(k)
    key = np.asarray(h).astype(np.int64).copy()
    for members in groups.values():
        members = sorted(members, key=lambda k: (dt[k], df[k]))
        for i, k in enumerate(members):
            if counts[h[k]] <= popular:
                continue
            if len(members) < 2:
                key[k] = -1
                continue
            c = members[1] if i == 0 else members[0]
            mix = (int(h[k]) * 0x9E3779B1 + (int(df[c]) + 64) * 131 + int(dt[c]) * 0x85EBCA77) & 0xFFFFFFFF
            key[k] = co._KEY_BASE + mix % co._KEY_SPAN
    return key


def _landmark_corpus(seed: int = 4, n_clips: int = 50):
    """Clips of real-shaped landmarks (anchors with 1-6 targets, a small pool of anchor bins so
    many buckets are popular), queries that are excerpts of them with some targets lost."""
    from laion_audio.filters.fingerprint import pack_landmarks

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n_clips):
        hs, ts = [], []
        for t in np.sort(rng.choice(4000, int(rng.integers(20, 120)), replace=False)):
            f1 = int(rng.integers(4, 12))
            k = int(rng.integers(1, 7))
            hs.append(pack_landmarks(np.full(k, f1), rng.integers(2, 10, k), rng.integers(1, 8, k)))
            ts.append(np.full(k, t, np.int32))
        h, t = np.concatenate(hs), np.concatenate(ts)
        perm = rng.permutation(len(h))           # _pairs emits by target distance, not anchor
        clips.append(Fingerprint(h[perm].astype(np.uint32), t[perm], int(t.max()) + 1))
    queries = []
    for j in range(40):
        src = clips[int(rng.integers(0, n_clips))]
        keep = (src.times >= 500) & (src.times < 3000) & (rng.random(len(src)) < 0.8)
        queries.append(Fingerprint(src.hashes[keep], src.times[keep] - 400, 2600))
    return clips, queries


def test_rekey_is_its_definition():
    """The companion keys of the numba re-keying equal the plain definition, for clips in
    order, clips interleaved (a stable sort by clip first) and a batch of queries."""
    clips, queries = _landmark_corpus()
    h = np.concatenate([c.hashes for c in clips])
    t = np.concatenate([c.times for c in clips])
    r = np.concatenate([np.full(len(c), i, np.int32) for i, c in enumerate(clips)])
    counts = np.bincount(h, minlength=1 << 22).astype(np.int32)
    mixed = 0
    for popular in (0, 24, 10**6):
        want = _rekey_reference(h, r, t, counts, popular)
        bits = co._popular_bits(counts, popular)
        assert np.array_equal(co._rekey(h, r, t, bits), want)
        perm = np.random.default_rng(1).permutation(len(h))
        assert np.array_equal(co._rekey(h[perm], r[perm], t[perm], bits), want[perm])
        mixed += (want >= co._KEY_BASE).sum() > 100 and (want == -1).sum() > 10 and \
            ((want >= 0) & (want < co._KEY_BASE)).sum() > 100
    assert mixed                             # some threshold re-keys some, drops some, keeps some


def _rekeyed_index(clips, popular: int = 24):
    index = co.FingerprintIndex(max_bucket=400, postings_per_hash=3, min_budget=300, popular=popular)
    for i, fp in enumerate(clips):
        index.add(i, fp)
    return index.build()


def _rekeyed_definition(clips, queries, popular: int = 24):
    """The plain index over the clips' re-keyed postings (by the plain-Python definition) and the
    re-keyed queries: what a re-keyed index must answer like."""
    counts = np.bincount(np.concatenate([c.hashes for c in clips]), minlength=1 << 22)
    plain = co.FingerprintIndex(max_bucket=400, postings_per_hash=3, min_budget=300, popular=None)
    for i, fp in enumerate(clips):
        k = _rekey_reference(fp.hashes, np.full(len(fp), i, np.int32), fp.times, counts, popular)
        plain.add(i, Fingerprint(k[k >= 0].astype(np.uint32), fp.times[k >= 0], fp.n_frames))
        plain.n_hashes[i] = len(fp)              # the vote threshold counts the clip's landmarks
    plain.build()
    rekeyed = []
    for q in queries:
        k = _rekey_reference(q.hashes, np.zeros(len(q), np.int32), q.times, counts, popular)
        rekeyed.append(Fingerprint(k[k >= 0].astype(np.uint32), q.times[k >= 0], q.n_frames))
    return plain, rekeyed, counts


def test_candidates_with_popular_buckets_rekeyed_equal_their_definition():
    """With popular buckets re-keyed, the candidates are those of the plain definition run on
    the re-keyed postings and queries; a rebuild after more adds is refused (the popularity
    the keys were chosen by would change)."""
    clips, queries = _landmark_corpus()
    index = _rekeyed_index(clips)
    assert index._popular_bits is not None
    plain, rekeyed, counts = _rekeyed_definition(clips, queries)
    assert (counts > 24).sum() > 5
    got = _tuples(index.candidates(queries, min_votes=4))
    assert got == _reference(plain, rekeyed, min_votes=4)
    assert len({(q, r) for q, r, _, _ in got}) >= 20
    index.add(len(clips), clips[0])
    with pytest.raises(RuntimeError, match="built once"):
        index.build()


def test_an_index_without_popular_buckets_keeps_its_landmarks_and_can_grow():
    """Below the threshold nothing is re-keyed (a small eval index: the lookup is exactly the
    plain one), and adding clips after a build works; once a rebuild makes a bucket popular,
    the whole index is re-keyed from its landmarks."""
    clips, queries = _landmark_corpus()
    index = co.FingerprintIndex(max_bucket=400, postings_per_hash=3, min_budget=300, popular=10**6)
    plain = co.FingerprintIndex(max_bucket=400, postings_per_hash=3, min_budget=300, popular=None)
    for i, fp in enumerate(clips[:30]):
        index.add(i, fp)
        plain.add(i, fp)
    index.build()
    plain.build()
    assert index._popular_bits is None
    assert _tuples(index.candidates(queries, min_votes=4)) == _tuples(plain.candidates(queries, min_votes=4))
    index.popular = 24
    for i, fp in enumerate(clips[30:]):
        index.add(30 + i, fp)
    index.build()
    assert index._popular_bits is not None
    rebuilt = _rekeyed_index(clips)
    assert np.array_equal(index.ref, rebuilt.ref) and np.array_equal(index.time, rebuilt.time)
    assert _tuples(index.candidates(queries, min_votes=4)) == _tuples(rebuilt.candidates(queries, min_votes=4))


def test_rekeyed_index_takes_empty_clips_odd_times_and_non_landmark_hashes():
    """An empty clip and an empty query, a query with negative times, a clip spanning hours:
    the re-keyed lookup still equals its definition. Hashes beyond 22 bits are not landmarks:
    such an index is never re-keyed."""
    clips, queries = _landmark_corpus(seed=6)
    long_clip = Fingerprint(clips[0].hashes, (clips[0].times * 900).astype(np.int32),
                            int(clips[0].times.max()) * 900 + 1)        # ~8 hours of frames
    clips = clips + [Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32), 0), long_clip]
    queries = queries + [Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32), 0),
                         Fingerprint(queries[0].hashes, queries[0].times - 5000, queries[0].n_frames)]
    index = _rekeyed_index(clips)
    assert index._popular_bits is not None
    plain, rekeyed, _ = _rekeyed_definition(clips, queries)
    assert _tuples(index.candidates(queries, min_votes=4)) == _reference(plain, rekeyed, min_votes=4)
    wide = co.FingerprintIndex(popular=0)
    wide.add(0, Fingerprint(clips[1].hashes + np.uint32(1 << 23), clips[1].times, clips[1].n_frames))
    wide.build()
    assert wide._popular_bits is None and wide.n_postings == len(clips[1])


def test_the_class_defaults_are_the_index_the_product_builds():
    """``FingerprintIndex()`` is the index the filter stage and the near-duplicate check build
    (budget ``defaults.LOOKUP_BUDGET``, popular buckets re-keyed), so a test or benchmark that
    builds the class directly measures what ships. Before: budget 25,000 and never re-keyed."""
    from laion_audio import defaults
    from laion_audio.filters.stage import FilterConfig, _new_index

    def config(ix):
        return ix.max_bucket, ix.postings_per_hash, ix.min_budget, ix.popular

    want = (5000, defaults.LOOKUP_BUDGET // 2000, defaults.LOOKUP_BUDGET, co.POPULAR_BUCKET)
    assert config(co.FingerprintIndex()) == config(_new_index(FilterConfig())) == want
    assert config(co.FingerprintIndex.for_budget()) == want
    assert config(co.FingerprintIndex(min_budget=30_000)) == (5000, 15, 30_000, co.POPULAR_BUCKET)
    # and it re-keys: one landmark over the threshold in 400 clips makes its bucket popular
    rng = np.random.default_rng(1)
    index = co.FingerprintIndex()
    for i in range(400):
        h = np.concatenate([[7], rng.integers(8, 1 << 22, 30)]).astype(np.uint32)
        index.add(i, Fingerprint(h, np.sort(rng.integers(0, 600, 31)).astype(np.int32), 600))
    index.build()
    assert index._popular_bits is not None
