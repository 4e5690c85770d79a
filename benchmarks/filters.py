"""Filter benchmarks (run by hand, not in CI). Prints medians and ratios against baselines
measured in the same run.

    python benchmarks/filters.py id            # id filter over 2.5 M synthetic ledger rows
    python benchmarks/filters.py fingerprint   # ours vs Chromaprint (fpcalc) on real clips
    python benchmarks/filters.py lookup        # lookups/s against 10k..100k-clip indexes
    python benchmarks/filters.py lookup --sizes 100000 --against main   # ... beside main's lookup
    python benchmarks/filters.py neardup       # near-duplicate precision + cost, distinct clips
    python benchmarks/filters.py stage         # filter_ledger seconds/record, 1k vs 8k FLACs
    python benchmarks/filters.py warp          # planted speed/pitch/tempo copies: exact vs + warp pass
    python benchmarks/filters.py all

The machine this was written on has 2 cores shared by 7 engineers working at once: absolute
figures are noisy and pessimistic; the ratios are what to read.
"""
from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))   # helpers shared with the tests: robustness.py, ...
SHARED = Path(os.environ.get("LAION_AUDIO_SHARED", REPO.parent / "shared")) / "data"


def _scratch(prefix: str) -> str:
    """A temporary folder removed when the benchmark exits (each run used to leave its
    folders in /tmp: dozens of lookup-baseline-* after a few sessions)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path

def _median_time(fn, repeat=3):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# --------------------------------------------------------------------------- id filter
def _synthetic_ledger(n: int, items, seed: int = 0):
    import pyarrow as pa

    from laion_audio.records import SCHEMA

    rng = np.random.default_rng(seed)
    n_fs = int(n * 0.6)
    fs_eval = items[items.id_kind == "freesound"].match_id.unique()
    yt_eval = items[items.id_kind == "youtube"].match_id.unique()
    fs_ids = rng.integers(1, 900_000, n_fs).astype(str)
    plant = rng.random(n_fs) < 0.01
    fs_ids[plant] = rng.choice(fs_eval, plant.sum())
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    yt = ["".join(r) for r in alphabet[rng.integers(0, len(alphabet), (n - n_fs, 11))]]
    yt = np.array(yt, dtype=object)
    plant_yt = rng.random(n - n_fs) < 0.01
    yt[plant_yt] = rng.choice(yt_eval, plant_yt.sum())
    starts = rng.integers(0, 300, n - n_fs).astype(float)
    source = ["freesound"] * n_fs + ["audioset"] * (n - n_fs)
    source_id = list(fs_ids) + [f"{y}_{int(s)}" for y, s in zip(yt, starts)]
    od = ['{"license": "CC-BY"}'] * n_fs + [
        f'{{"labels": ["/m/09x0r"], "youtube_id": "{y}"}}' for y in yt]
    cols = {"source": source, "source_id": source_id, "original_data": od,
            "trim_start": [None] * n_fs + list(starts), "trim_end": [None] * n_fs + list(starts + 10)}
    arrays = []
    for f in SCHEMA:
        if f.name in cols:
            arrays.append(pa.array(cols[f.name], f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _id_worker(n, cache, q):
    from laion_audio.filters import evalsets
    from laion_audio.filters.id_overlap import find_id_overlaps

    items = evalsets.load(cache)
    table = _synthetic_ledger(n, items)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, matches = _median_time(lambda: find_id_overlaps(table, items), repeat=3)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # baseline: the per-row Python loop a one-off script would write (sets of eval ids)
    fs = set(items[items.id_kind == "freesound"].match_id)
    yt = set(items[items.id_kind == "youtube"].match_id)
    import json as _json

    def per_row():
        hits = 0
        for s, sid, od in zip(table.column("source").to_pylist(), table.column("source_id").to_pylist(),
                              table.column("original_data").to_pylist()):
            if s == "freesound":
                hits += sid in fs
            else:
                hits += _json.loads(od).get("youtube_id") in yt
        return hits
    tb, _ = _median_time(per_row, repeat=1)
    q.put({"rows": n, "seconds_median": t, "baseline_per_row_python_seconds": tb,
           "matches": len(matches), "peak_rss_gb": rss1 / 1e6, "table_rss_gb": rss0 / 1e6})


def bench_id(n: int) -> dict:
    from laion_audio.filters import evalsets

    cache = _scratch("evalsets-")
    evalsets.fetch(cache, mirror=str(SHARED))
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_id_worker, args=(n, cache, q))
    p.start()
    res = q.get()
    p.join()
    res["speedup_vs_per_row_python"] = res["baseline_per_row_python_seconds"] / res["seconds_median"]
    return res


# --------------------------------------------------------------------------- fingerprints
def _real_clips(n_max: int = 300, seconds: float = 10.0):
    """Up to ``n_max`` real clips of at most ``seconds``: the first chunk of every Debian sound
    file, then second chunks, and so on (so short effects, speech-like sounds and music all
    count, not just the longest files). Chunks under 0.5 s (only exact PCM matches find those)
    and chunks that are mostly silence are skipped."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import find_debian_sounds

    from robustness import active_fraction, load_mono

    n = int(seconds * 48_000)
    chunked = []
    for p in find_debian_sounds():
        try:
            x = load_mono(p, max_seconds=120)
        except Exception:  # noqa: BLE001
            continue
        chunked.append([(p, x[s:s + n]) for s in range(0, max(1, len(x) - n + 1), n)])
    clips = []
    for k in range(max(len(c) for c in chunked)):
        for chunks in chunked:
            if k < len(chunks) and len(chunks[k][1]) >= 24_000 and active_fraction(chunks[k][1]) >= 0.5:
                clips.append(chunks[k])
                if len(clips) >= n_max:
                    return clips
    return clips


def bench_fingerprint() -> dict:
    import soundfile as sf

    from laion_audio.filters.fingerprint import fingerprint

    clips = _real_clips(200)
    secs = sum(len(x) for _, x in clips) / 48_000
    t, fps = _median_time(lambda: [fingerprint(x, 48_000) for _, x in clips], repeat=3)
    # Chromaprint through fpcalc, one process per clip (how pyacoustid calls it), same clips
    tmp = Path(_scratch("fpcalc-"))
    paths = []
    for i, (_, x) in enumerate(clips[:100]):
        paths.append(tmp / f"{i}.wav")
        sf.write(paths[-1], x, 48_000)
    t0 = time.perf_counter()
    for pth in paths:
        subprocess.run(["fpcalc", "-raw", "-json", "-ignore-errors", str(pth)], capture_output=True)
    t_fpcalc = (time.perf_counter() - t0) / len(paths)
    # coverage on short sounds: which clips get any fingerprint at all
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import find_debian_sounds
    short = [p for p in find_debian_sounds() if 0.5 <= sf.info(str(p)).duration < 3][:80]
    from robustness import load_mono
    got_ours = sum(len(fingerprint(load_mono(p), 48_000)) > 0 for p in short)
    got_cp = 0
    for p in short:
        out = subprocess.run(["fpcalc", "-raw", "-json", "-ignore-errors", str(p)], capture_output=True, text=True)
        try:
            got_cp += len(json.loads(out.stdout).get("fingerprint", [])) > 0
        except json.JSONDecodeError:
            pass
    per_clip = t / len(clips)
    return {"clips": len(clips), "clip_seconds": secs / len(clips),
            "ours_clips_per_s_per_core": 1 / per_clip, "ours_audio_x_realtime": secs / t,
            "fpcalc_clips_per_s": 1 / t_fpcalc, "speedup_vs_fpcalc": t_fpcalc / per_clip,
            "hashes_per_audio_second": sum(len(f) for f in fps) / secs,
            "short_clips_under_3s": len(short), "short_with_fingerprint_ours": got_ours,
            "short_with_fingerprint_chromaprint": got_cp}


def _varied_fingerprints(orig, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """``n`` synthetic index clips, each a real fingerprint re-voiced in the hash domain: every
    landmark's frequencies scaled by one factor in 0.7-1.45 (never within 3% of 1, which
    would be a near-copy) and its time gaps by one in 0.8-1.25. The index gets real spectral
    structure (popular low bins, short gaps) spread over many distinct recordings."""
    from laion_audio.filters.fingerprint import (DF_MAX, DT_MAX, F_MAX, F_MIN, MIN_DF,
                                                 pack_landmarks, unpack_landmarks)

    src = rng.integers(0, len(orig), n)
    pitch = np.exp(rng.uniform(np.log(0.7), np.log(1.45), n))
    pitch[np.abs(pitch - 1) < 0.03] = 1.1
    tempo = np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))
    hs, rs, ts, ns = [], [], [], []
    for k in range(n):
        f = orig[src[k]]
        f1, df, dt = unpack_landmarks(f.hashes)
        f1, df, dt = np.round(f1 * pitch[k]), np.round(df * pitch[k]), np.round(dt * tempo[k])
        ok = ((f1 >= F_MIN) & (f1 < F_MAX) & (np.abs(df) <= DF_MAX) & (np.abs(df) >= MIN_DF)
              & (dt >= 1) & (dt <= DT_MAX))
        hs.append(pack_landmarks(f1[ok], df[ok], dt[ok]))
        rs.append(np.full(int(ok.sum()), k, np.int32))
        ts.append((f.times[ok] * tempo[k]).astype(np.int32))
        ns.append(int(ok.sum()))
    return np.concatenate(hs), np.concatenate(rs), np.concatenate(ts), ns


def _postings_touched(ix, queries) -> int:
    """Postings a batch's lookups read (after the budget), from the index's own selection (an
    older revision without :meth:`selection`: the same with its plain landmark keys)."""
    if hasattr(ix, "selection"):
        return int(ix.selection(queries)[1].sum())
    from laion_audio.filters import content_overlap as co

    qn = np.array([len(q) for q in queries], np.int64)
    lo, cnt = ix._buckets(np.concatenate([q.hashes for q in queries]).astype(np.uint32))
    cnt, _ = co._select(cnt, qn, np.maximum(ix.postings_per_hash * qn, ix.min_budget), ix.max_bucket)
    return int(cnt.sum())


def _content_overlap_at(rev: str):
    """``laion_audio/filters/content_overlap.py`` as committed at ``rev``, imported as a module
    of its own (to time an older lookup against today's in the same process)."""
    import importlib.util

    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:laion_audio/filters/content_overlap.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(_scratch("lookup-baseline-")) / "content_overlap_baseline.py"
    path.write_text(src.replace("from ..", "from laion_audio.").replace("from .", "from laion_audio.filters."))
    spec = importlib.util.spec_from_file_location("content_overlap_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod              # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def bench_lookup(sizes=(10_000, 30_000, 100_000), clip_seconds: float = 5.0, n_queries: int = 400,
                 max_bucket: int = 5000, index_model: str = "varied",
                 budgets=((30_000, 15),), against: str | None = None, popular: int | None = None,
                 repeats: int = 15, perturbation: str = "trim",
                 against_budget: tuple[int, int] = (25_000, 12)) -> list[dict]:
    """Index = real fingerprints of the originals + synthetic clips (``index_model``:
    "varied" = re-voiced real fingerprints, see :func:`_varied_fingerprints`; "pooled" = each
    synthetic clip draws its hashes from the pooled originals, i.e. a corpus made of the same
    few recordings over and over, the worst case for bucket loads). Queries = real perturbed
    copies (trim + gain; or ``perturbation``: any of ``robustness.PERTURBATIONS``, or
    "inside_longer", the clip between pieces of two other originals) of the originals, looked
    up in batches of 400, per posting budget.

    ``popular``: buckets over this many postings are re-keyed by a companion landmark (the
    product's ``FingerprintIndex.for_budget``; None: plain landmark buckets).

    ``against`` (a git revision): that revision's ``content_overlap.py`` indexes the same clips
    at ``against_budget`` (min_budget, postings_per_hash; default the budget shipped until
    2026-12-02, which docs/filters.md's speed-ups are against; no re-keying, unless it has it
    and ``popular`` is given) and its lookup runs alternating with today's (``repeats`` runs each: this
    machine's speed for memory-bound code flips ~1.5-2.8x within seconds, so the median of many
    short runs is the figure); the output says whether the candidates are the same. Lookups/s
    are by the wall clock and per CPU second of the process, so the ratio to ``against`` in
    the same run is the figure to quote (docs/filters.md, Benchmarks)."""
    from laion_audio.filters.content_overlap import ContentMatcher, FingerprintIndex
    from laion_audio.filters.fingerprint import fingerprint
    from robustness import PERTURBATIONS, embed_in_longer

    rng = np.random.default_rng(0)
    clips = _real_clips(n_queries, clip_seconds)
    orig = [fingerprint(x, 48_000) for _, x in clips]
    pert = []
    for i, (_, x) in enumerate(clips):
        if perturbation == "trim":        # the figure's history: trimmed, -4.4 dB
            y = PERTURBATIONS["trim"][0](x, 48_000, rng) * np.float32(0.6)
        elif perturbation == "inside_longer":
            filler = np.concatenate([clips[(i + 1) % len(clips)][1], clips[(i + 2) % len(clips)][1]])
            y = embed_in_longer(x, filler, 48_000, rng)
        else:
            y = PERTURBATIONS[perturbation][0](x, 48_000, rng)
        pert.append(fingerprint(y, 48_000))
    pool_h = np.concatenate([f.hashes for f in orig])
    per_clip = int(np.median([len(f) for f in orig]))
    out = []
    for size in sizes:
        n_syn = size - len(orig)
        if index_model == "pooled":
            total = n_syn * per_clip
            syn = (rng.choice(pool_h, total), np.repeat(np.arange(n_syn, dtype=np.int32), per_clip),
                   rng.integers(0, int(clip_seconds / 0.008), total, dtype=np.int32), [per_clip] * n_syn)
        else:
            syn = _varied_fingerprints(orig, n_syn, rng)

        def make(cls, **kw):
            ix = cls(max_bucket=max_bucket, **kw)
            for i, f in enumerate(orig):
                ix.add(i, f)
            ix.add_raw(*syn[:3], [f"syn{i}" for i in range(n_syn)], syn[3])
            t0 = time.perf_counter()
            ix.build()
            ix.candidates(pert[:8])                    # numba compile / cache load
            return ix, time.perf_counter() - t0
        idx, t_build = make(FingerprintIndex, popular=popular)
        base = None
        if against:
            old = _content_overlap_at(against).FingerprintIndex
            # by name: since 2026-12-02 the class's own defaults are the product's
            kw = {"popular": popular} if "popular" in old.__init__.__code__.co_varnames else {}
            kw.update(min_budget=against_budget[0], postings_per_hash=against_budget[1])
            base, _ = make(old, **kw)
        for min_budget, per_hash in budgets:
            idx.min_budget, idx.postings_per_hash = min_budget, per_hash

            def lookup(ix):
                found, got = 0, []
                for s in range(0, len(pert), 400):
                    cands = ix.candidates(pert[s:s + 400])
                    found += len({(c.query, c.ref) for c in cands if c.query + s == c.ref})
                    got += [(c.query + s, c.ref, c.offset, c.votes) for c in cands]
                return found, got
            runs = {"new": ([], [])} if base is None else {"new": ([], []), "base": ([], [])}
            for _ in range(repeats):                   # alternated: the same machine state
                for name in runs:
                    w, c = time.perf_counter(), time.process_time()
                    out_name = lookup(idx if name == "new" else base)
                    runs[name][0].append(time.perf_counter() - w)
                    runs[name][1].append(time.process_time() - c)
                    if name == "new":
                        found, got = out_name
                    else:
                        base_found, base_got = out_name
            t = statistics.median(runs["new"][0])
            matcher = ContentMatcher(idx)
            t_m, res = _median_time(lambda: matcher.match(pert, ref_bands=lambda r: orig[r].bands
                                                           if r < len(orig) else None), repeat=1)
            confirmed = len({m.query for m in res[0] if m.query == m.ref})
            out.append({"index_clips": size, "index_model": index_model, "clip_seconds": clip_seconds,
                        "budget": [min_budget, per_hash], "max_bucket": max_bucket, "popular": popular,
                        "perturbation": perturbation,
                        "postings_per_batch": _postings_touched(idx, pert),
                        "index_landmarks": idx.n_postings, "index_gb": round(idx.nbytes / 1e9, 3),
                        "build_s": round(t_build, 1), "lookups_per_s_per_core": round(len(pert) / t),
                        "lookups_per_cpu_s": round(len(pert) / statistics.median(runs["new"][1])),
                        "candidate_recall": found / len(pert),
                        "lookup+confirm_per_s": round(len(pert) / t_m),
                        "confirmed_recall": confirmed / len(pert),
                        "load_1min": round(os.getloadavg()[0], 1)})
            if base is not None:
                tb, cb = statistics.median(runs["base"][0]), statistics.median(runs["base"][1])
                out[-1].update({"against": against, "against_budget": [base.min_budget, base.postings_per_hash],
                                "against_postings_per_batch": _postings_touched(base, pert),
                                "against_lookups_per_s_per_core": round(len(pert) / tb),
                                "against_lookups_per_cpu_s": round(len(pert) / cb),
                                "against_candidate_recall": base_found / len(pert),
                                "speedup_wall": round(tb / t, 2),
                                "speedup_cpu": round(cb / statistics.median(runs["new"][1]), 2),
                                "same_candidates": got == base_got})
                print(f"lookup {size} clips, budget {min_budget}, popular {popular}: "
                      f"{out[-1]['lookups_per_s_per_core']}/s (cpu {out[-1]['lookups_per_cpu_s']}/s), recall "
                      f"{out[-1]['candidate_recall']} vs {against} (budget {base.min_budget}) "
                      f"{out[-1]['against_lookups_per_s_per_core']}/s (cpu {out[-1]['against_lookups_per_cpu_s']}/s),"
                      f" recall {out[-1]['against_candidate_recall']}: {out[-1]['speedup_wall']}x wall, "
                      f"{out[-1]['speedup_cpu']}x cpu, same candidates: {out[-1]['same_candidates']}", flush=True)
            print("lookup:", json.dumps(out[-1]), flush=True)
        del idx
    return out


# --------------------------------------------------------------------------- near duplicates
def _cache_path(cache: str, seed: int, start: int, stop: int) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from distinct_clips import VERSION as GEN_VERSION

    from laion_audio.filters.dedup import NEAR_BANDS
    from laion_audio.filters.fpstore import VERSION
    return Path(cache) / f"{VERSION}-g{GEN_VERSION}-b{NEAR_BANDS}-s{seed}-{start:07d}-{stop:07d}.npz"


def _load_chunk(path: Path) -> list:
    """[(fingerprint, near features)] of one cached chunk."""
    from laion_audio.filters.fingerprint import Fingerprint
    with np.load(path) as z:
        nh, nf = np.cumsum(z["n_hashes"])[:-1], np.cumsum(z["n_feat"])[:-1]
        return [(Fingerprint(h, t, int(n), None, st), f) for h, t, n, st, f in zip(
            np.split(z["hashes"], nh), np.split(z["times"], nh), z["n_frames"],
            np.split(z["strength"], nh), np.split(z["feat"], nf))]


def _gen_fingerprints(args):
    """Worker: (fingerprint, near-duplicate features) of generated distinct clips
    ``start .. stop - 1`` (features computed here, from the same generated clip, so the
    driver does not generate it again). With ``cache`` (a folder), each chunk is read from
    or written to one .npz there, so a 100k-clip run can be matched again after a rule change
    without generating anything (the name holds the seed and the generator's, the store's and
    the features' versions)."""
    start, stop, seed, *rest = args
    cache = rest[0] if rest else None
    sys.path.insert(0, str(REPO / "benchmarks"))
    from distinct_clips import SR, distinct_clip

    from laion_audio.filters.dedup import near_features
    from laion_audio.filters.fingerprint import fingerprint
    path = _cache_path(cache, seed, start, stop) if cache else None
    if path is not None and path.is_file():
        return _load_chunk(path)
    out = []
    for i in range(start, stop):
        x = distinct_clip(i, seed)
        out.append((fingerprint(x, SR, keep_bands=False), near_features(x, SR)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, hashes=np.concatenate([f.hashes for f, _ in out]),
                 times=np.concatenate([f.times for f, _ in out]),
                 strength=np.concatenate([f.strength for f, _ in out]),
                 n_hashes=np.array([len(f) for f, _ in out]),
                 n_frames=np.array([f.n_frames for f, _ in out]),
                 feat=np.concatenate([g for _, g in out]), n_feat=np.array([len(g) for _, g in out]))
        os.rename(tmp, path)      # a benchmark's scratch cache, not product output
    return out


def bench_neardup(sizes=(1000, 8000), seed: int = 0, procs: int = 1,
                  cache: str | None = None, queries: int | None = None) -> list[dict]:
    """Generated clips, all distinct by construction (benchmarks/distinct_clips.py), through
    the filter stage's near-duplicate functions (same index, rule and keep pass): every drop
    is a false positive. Confirmation features are computed with the fingerprint and kept in
    memory (~20 kB per clip; the stage recomputes them from the FLAC). Prints drops and
    seconds per record of index + lookups + confirmation per size, side by side.

    ``queries`` (for sizes above it): every clip is indexed, but only that many, drawn at
    random, are looked up and decided, placed last in keep order so that each is dropped
    when it matches any other clip: an estimate (upper bound) of the share a full run drops,
    at the cost of ``queries`` lookups."""
    from laion_audio.filters.dedup import FeatureCache, decide_near, near_duplicate_matches
    out = []
    for n in sizes:
        t0 = time.perf_counter()
        step = 500
        jobs = [(s, min(n, s + step), seed, cache) for s in range(0, n, step)]
        if procs > 1:
            with mp.get_context("fork").Pool(procs) as pool:
                got = [f for part in pool.imap(_gen_fingerprints, jobs) for f in part]
        else:
            got = [f for job in jobs for f in _gen_fingerprints(job)]
        k = n if not queries or queries >= n else queries
        order = np.arange(n)
        if k < n:
            pick = np.random.default_rng(seed).choice(n, k, replace=False)
            rest = np.setdiff1d(order, pick)
            order = np.concatenate([rest, np.sort(pick)])
        fps = [got[i][0] for i in order]
        feats = [got[i][1] for i in order]
        del got
        t_fp = time.perf_counter() - t0
        if not out:       # numba kernels load once per process: not a per-record cost
            near_duplicate_matches(fps[:200], FeatureCache(feats.__getitem__))
        features = FeatureCache(feats.__getitem__, max_bytes=1 << 40)
        t1 = time.perf_counter()
        matches, st = near_duplicate_matches(fps, features, first_query=n - k)
        t_match = time.perf_counter() - t1
        dropped = decide_near(n, matches, n_published=n - k)
        res = {"clips": n, "queries": k, "dropped": len(dropped), "dropped_share": len(dropped) / k,
               "confirmed_pairs": len(matches), **st, "feature_loads": features.loads,
               "generate+fingerprint_s_per_record_wall": round(t_fp / n, 4), "procs": procs,
               "match_ms_per_query": round(t_match / k * 1e3, 2),
               "drops": [(int(order[m.a]), int(order[m.b]), round(m.score, 3), round(m.vote_fraction, 3),
                          round(m.residual_db, 2), round(m.detail, 3)) for m in dropped.values()][:20]}
        if out:
            res["ratio_vs_first"] = round(res["match_ms_per_query"] / out[0]["match_ms_per_query"], 2)
        out.append(res)
        print("neardup:", json.dumps(res), flush=True)
    print(f"{'clips':>8} {'queries':>8} {'dropped':>8} {'share':>8} {'ms/query':>9} {'ratio':>6}")
    for r in out:
        print(f"{r['clips']:>8} {r['queries']:>8} {r['dropped']:>8} {100 * r['dropped_share']:>7.3f}% "
              f"{r['match_ms_per_query']:>9.2f} {r.get('ratio_vs_first', 1.0):>6.2f}")
    return out


def _write_flacs(args):
    """Worker: generated clips ``start .. stop - 1`` as 48 kHz FLAC, with their PCM hashes."""
    start, stop, seed, folder = args
    import soundfile as sf
    from distinct_clips import SR, distinct_clip

    from laion_audio.transcode.audio import pcm_sha256_of_file
    from laion_audio.filters.fpstore import FingerprintStore, fingerprint_file
    store = FingerprintStore(Path(folder) / "fingerprints")
    out = []
    for i in range(start, stop):
        path = Path(folder) / "audio" / f"{i // 1000:03d}" / f"g{i:06d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            sf.write(path, distinct_clip(i, seed), SR, subtype="PCM_16")
        sha = pcm_sha256_of_file(path)
        if sha not in store:          # the build's fingerprint stage (on its workers)
            store.put(sha, fingerprint_file(str(path), keep_bands=False))
        out.append((f"g{i:06d}", str(path), sha, sf.info(str(path)).duration))
    return out


def bench_stage(sizes=(1000, 8000), seed: int = 0, procs: int = 2, folder: str | None = None) -> list[dict]:
    """``filter_ledger`` (the filter stage after the build's fingerprint stage has filled the
    store) over ledgers of N generated distinct clips as FLAC: seconds per record, the ratio
    to the first size, and how many were dropped (all are distinct: every drop is false).
    The FLACs and the store are made first (not timed; ``--folder`` keeps them for reruns)."""
    from laion_audio.filters.stage import FilterConfig, filter_ledger
    from laion_audio.ledger import Ledger
    from laion_audio.records import Record, Status

    root = Path(folder or _scratch("filter-stage-"))
    out = []
    for n in sizes:
        jobs = [(s, min(n, s + 250), seed, str(root)) for s in range(0, n, 250)]
        with mp.get_context("fork").Pool(procs) as pool:
            rows = [r for part in pool.map(_write_flacs, jobs) for r in part]
        lroot = Path(tempfile.mkdtemp(prefix=f"ledger-{n}-", dir=root))
        ledger = Ledger(lroot)
        ledger.write([Record("local", sid, flac_path=p, audio_sha256=sha, audio_duration=d,
                             status=Status.CAPTIONED, texts=[sid]) for sid, p, sha, d in rows])
        t = time.perf_counter()
        report, _ = filter_ledger(ledger, FilterConfig(evalsets_cache=str(root / "no-evalsets"),
                                                       fingerprint_dir=str(root / "fingerprints")))
        secs = time.perf_counter() - t
        ledger.close()
        res = {"clips": n, "filter_seconds": round(secs, 2), "ms_per_record": round(secs / n * 1e3, 2),
               "dropped": dict(report.dropped)}
        if out:
            res["ratio_vs_first"] = round(res["ms_per_record"] / out[0]["ms_per_record"], 2)
        out.append(res)
        print("stage:", json.dumps(res), flush=True)
    print(f"{'clips':>8} {'filter s':>9} {'ms/record':>10} {'ratio':>6} {'dropped':>8}")
    for r in out:
        print(f"{r['clips']:>8} {r['filter_seconds']:>9.1f} {r['ms_per_record']:>10.2f} "
              f"{r.get('ratio_vs_first', 1.0):>6.2f} {sum(r['dropped'].values()):>8}")
    return out


# --------------------------------------------------------------------------- warps (issue 14)
def bench_warp(n_eval: int = 100, n_distractors: int = 2000, seed: int = 0) -> dict:
    """Planted-copy recall per perturbation and per eval clip length (the acceptance corpus
    plus :data:`robustness.WARPS`), the exact path alone and with the warp pass, and what the
    warp pass costs next to the exact path in the same run."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    import robustness

    files = conftest.find_debian_sounds() + sorted(Path(SHARED, "laion_pairs").glob("*.flac"))
    corpus = robustness.build_planted_corpus(files, n_eval=n_eval, n_distractors=n_distractors,
                                             seed=seed, warps=True)
    out = {}
    warps = tuple(robustness.WARPS)
    for name, warp in (("exact", False), ("exact+warp", True)):
        report, extra = robustness.evaluate(corpus, warp=warp)
        print(f"--- {name}: per perturbation, then per eval clip length")
        print("\n".join(report.lines()))
        out[name] = {"recall_required": report.recall_of(robustness.REQUIRED),
                     "recall_warps_ge_1.5s": report.recall_of(warps, 1.5),
                     **{f"{k}_ge_1.5s": report.recall_of((k,), 1.5) for k in warps},
                     "fp_rate": report.fp_rate, "false_positive_pairs": extra["false_positive_pairs"],
                     "fingerprint_s": round(extra["fingerprint_seconds"], 1),
                     "match_s": round(extra["match_seconds"], 1), "warp_s": round(extra["warp_seconds"], 1),
                     "warp_print_s": round(extra["warp_print_seconds"], 1),
                     "warp_match_s": round(extra["warp_match_seconds"], 1),
                     "warp_queries": extra["warp_queries"],
                     "warp_candidates": extra["warp_candidates"], "n_queries": extra["n_queries"]}
        print(name, json.dumps(out[name], indent=1), flush=True)
    w = out["exact+warp"]
    # per query, in the same run: the warp pass runs only on the queries the exact path left
    per_exact = (w["fingerprint_s"] + w["match_s"]) / w["n_queries"]
    per_warp = w["warp_s"] / max(w["warp_queries"], 1)
    print(f"warp pass / exact path, per query (features + lookup + confirmation): "
          f"{per_warp * 1e3:.1f} ms / {per_exact * 1e3:.1f} ms = {per_warp / per_exact:.1f}x; "
          f"matching only: {w['warp_match_s'] / max(w['warp_queries'], 1) * 1e3:.1f} ms / "
          f"{w['match_s'] / w['n_queries'] * 1e3:.1f} ms = "
          f"{(w['warp_match_s'] / max(w['warp_queries'], 1)) / (w['match_s'] / w['n_queries']):.1f}x")
    return out


def main() -> None:
    from laion_audio.defaults import LOOKUP_BUDGET
    from laion_audio.filters.content_overlap import POPULAR_BUCKET

    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["id", "fingerprint", "lookup", "neardup", "stage", "warp", "all"])
    ap.add_argument("--n-eval", type=int, default=100, help="warp: eval clips planted")
    ap.add_argument("--distractors", type=int, default=2000, help="warp: distractor clips")
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--sizes", default=None, help="index sizes (lookup: 10000,30000,100000; "
                    "neardup: 1000,8000)")
    ap.add_argument("--procs", type=int, default=1, help="neardup/stage: processes preparing clips")
    ap.add_argument("--folder", default=None, help="stage: keep the FLACs and the store here")
    ap.add_argument("--queries", type=int, default=None, help="neardup: look up only this many "
                    "clips (drawn at random) at sizes above it; all are indexed")
    ap.add_argument("--cache", default=None, help="neardup: keep generated fingerprints and "
                    "features here (chunks of 500 clips), reused by later runs")
    ap.add_argument("--clip-seconds", type=float, default=5.0)
    ap.add_argument("--max-bucket", type=int, default=5000, help="skip hash buckets larger than this")
    ap.add_argument("--index-model", choices=["varied", "pooled"], default="varied",
                    help="how the synthetic index clips get their hashes (see bench_lookup)")
    ap.add_argument("--budgets", default=f"{LOOKUP_BUDGET}:{max(1, LOOKUP_BUDGET // 2000)}",
                    help="comma list of min_budget:postings_per_hash to measure (default: the product's)")
    ap.add_argument("--popular", type=int, default=POPULAR_BUCKET,
                    help="lookup: re-key buckets over this many postings (-1: never)")
    ap.add_argument("--repeats", type=int, default=15, help="lookup: alternated runs per code")
    ap.add_argument("--perturbation", default="trim", help="lookup: how the queries differ from "
                    "the originals (trim, inside_longer, or a robustness.PERTURBATIONS name)")
    ap.add_argument("--against-budget", default="25000:12", help="lookup: min_budget:"
                    "postings_per_hash of the --against index (default: the budget shipped "
                    "until 2026-12-02)")
    ap.add_argument("--against", default=None, help="lookup: also time this git revision's "
                    "content_overlap.py on the same index, alternating (e.g. main)")
    args = ap.parse_args()
    print("note: 2 CPU cores shared by 7 engineers while measured; read the ratios")
    if args.what in ("id", "all"):
        print("id filter:", json.dumps(bench_id(args.rows), indent=1))
    if args.what in ("fingerprint", "all"):
        print("fingerprint:", json.dumps(bench_fingerprint(), indent=1))
    if args.what in ("lookup", "all"):
        sizes = tuple(int(s) for s in (args.sizes or "10000,30000,100000").split(","))
        budgets = tuple(tuple(int(v) for v in b.split(":")) for b in args.budgets.split(","))
        bench_lookup(sizes, args.clip_seconds, max_bucket=args.max_bucket,
                     index_model=args.index_model, budgets=budgets, against=args.against,
                     popular=None if args.popular < 0 else args.popular, repeats=args.repeats,
                     perturbation=args.perturbation,
                     against_budget=tuple(int(v) for v in args.against_budget.split(":")))
    if args.what in ("neardup", "all"):
        bench_neardup(tuple(int(s) for s in (args.sizes or "1000,8000").split(",")), procs=args.procs,
                      cache=args.cache, queries=args.queries)
    if args.what == "stage":
        bench_stage(tuple(int(s) for s in (args.sizes or "1000,8000").split(",")),
                    procs=max(1, args.procs), folder=args.folder)
    if args.what in ("warp", "all"):
        bench_warp(args.n_eval, args.distractors)


if __name__ == "__main__":
    main()
