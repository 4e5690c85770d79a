"""Duplicates: exact across lossless formats (PCM hash), near for a lossy re-encode, and the
keep rule; two different takes of the same kind of sound stay."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from laion_audio.transcode.audio import pcm_sha256_of_file as pcm_sha256
from laion_audio.filters.fpstore import FingerprintStore
from robustness import espeak  # benchmarks/ (tests/filters/conftest.py)
from laion_audio.filters.stage import FilterConfig, filter_ledger
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]


def _rec(source, sid, path, **kw):
    info = sf.info(str(path))
    return Record(source, sid, flac_path=str(path), audio_sha256=pcm_sha256(path),
                  audio_duration=info.duration, status=Status.CAPTIONED, **kw)


def build_ledger(tmp_path: Path, debian_sounds) -> Ledger:
    src = max((p for p in debian_sounds if p.suffix == ".wav" and 2 < sf.info(str(p)).duration < 8),
              key=lambda p: (sf.info(str(p)).duration, p.name))
    x, sr = sf.read(str(src), dtype="int16", always_2d=True)
    x = x.mean(axis=1).astype(np.int16)
    d = tmp_path / "audio"
    d.mkdir()
    sf.write(d / "a.wav", x, sr, subtype="PCM_16")
    sf.write(d / "a.flac", x, sr, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(d / "a.wav"),
                    "-c:a", "libvorbis", "-q:a", "4", str(d / "a.ogg")], check=True)
    # two takes of the same words by different voices, and two rain textures of the same recipe
    sf.write(d / "take1.wav", espeak("the kettle is boiling in the kitchen", "en", 150), 48_000)
    sf.write(d / "take2.wav", espeak("the kettle is boiling in the kitchen", "en-us", 170, 40), 48_000)
    rng = np.random.default_rng(1)
    for k in (1, 2):
        y = np.zeros(48_000 * 3)
        idx = rng.integers(0, len(y), 300)
        y[idx] = rng.normal(size=300)
        y = np.convolve(y, np.exp(-np.arange(200) / 30.0), mode="same") * 0.2
        sf.write(d / f"rain{k}.wav", y.astype(np.float32), 48_000)
    ledger = Ledger(tmp_path / "ledger")
    ledger.write([
        _rec("audioset", "yt_a_0", d / "a.wav"),
        _rec("freesound", "111", d / "a.flac"),
        _rec("bbc", "B1", d / "a.ogg"),
        _rec("freesound", "201", d / "take1.wav"),
        _rec("freesound", "202", d / "take2.wav"),
        _rec("freesound", "301", d / "rain1.wav"),
        _rec("freesound", "302", d / "rain2.wav"),
    ])
    return ledger


def test_exact_and_near_duplicates_across_formats(tmp_path, debian_sounds):
    ledger = build_ledger(tmp_path, debian_sounds)
    report, stats = filter_ledger(ledger, FilterConfig(evalsets_cache=str(tmp_path / "no-cache")))
    wav, flac, ogg = (ledger.get("audioset", "yt_a_0"), ledger.get("freesound", "111"),
                      ledger.get("bbc", "B1"))
    assert wav.audio_sha256 == flac.audio_sha256 != ogg.audio_sha256
    # keep rule: freesound outranks audioset, so the FLAC copy is kept
    assert flac.status == Status.CAPTIONED
    assert wav.status == Status.DROPPED and wav.filter_reason == "duplicate_exact"
    assert wav.duplicate_of == "freesound/111"
    assert ogg.status == Status.DROPPED and ogg.filter_reason == "duplicate_near"
    assert ogg.duplicate_of == "freesound/111" and ogg.filter_match["score"] >= 0.8
    for sid in ("201", "202", "301", "302"):
        assert ledger.get("freesound", sid).status == Status.CAPTIONED, sid
    assert report.dropped == {"duplicate_exact": 1, "duplicate_near": 1}
    assert stats.closes


def test_filter_cli_prints_table(tmp_path, debian_sounds):
    build_ledger(tmp_path, debian_sounds).close()
    proc = subprocess.run([sys.executable, "-m", "laion_audio", "filter", str(tmp_path / "ledger"),
                           "--evalsets-cache", str(tmp_path / "none")], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "duplicate_exact" in proc.stdout and "duplicate_near" in proc.stdout
    assert "filter: 7 in = 5 ok + 0 failed + 2 dropped" in proc.stdout   # dropped is not failed
    assert (tmp_path / "filter_report.json").exists()   # beside the ledger folder, not in it


def test_new_copies_of_sharded_clips_are_dropped_and_fingerprints_reused(tmp_path, debian_sounds):
    """A refresh: the sharded clip stays published; a new exact copy (other id, other lossless
    format) and a new lossy re-encode of it are dropped as its duplicates. The fingerprint
    store is filled once and a rerun reads it instead of decoding again."""
    ledger = build_ledger(tmp_path, debian_sounds)
    store = tmp_path / "fingerprints"
    first = ledger.get("audioset", "yt_a_0")
    first.status, first.shard = Status.SHARDED, "audioset/train/0.tar"
    ledger.write([first])
    report, _ = filter_ledger(ledger, FilterConfig(evalsets_cache=str(tmp_path / "no-cache"),
                                                   fingerprint_dir=str(store)))
    published = ledger.get("audioset", "yt_a_0")
    assert published.status == Status.SHARDED and not published.filter_reason
    # freesound would outrank audioset for a new pair, but the sharded copy is already out
    flac, ogg = ledger.get("freesound", "111"), ledger.get("bbc", "B1")
    assert (flac.status, flac.filter_reason, flac.duplicate_of) == (
        Status.DROPPED, "duplicate_exact", "audioset/yt_a_0")
    assert (ogg.status, ogg.filter_reason, ogg.duplicate_of) == (
        Status.DROPPED, "duplicate_near", "audioset/yt_a_0")
    for sid in ("201", "202", "301", "302"):          # other takes stay
        assert ledger.get("freesound", sid).status == Status.CAPTIONED
    entries = sorted(store.rglob("*.npz"))
    assert len(entries) >= 5 and not list(store.rglob(".tmp-*"))
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    # rerun with the dropped records made eligible again: same verdicts, no entry rewritten
    again = [ledger.get(*k) for k in (("freesound", "111"), ("bbc", "B1"))]
    for rec in again:
        rec.status, rec.filter_reason, rec.filter_match, rec.duplicate_of = Status.CAPTIONED, "", {}, ""
    ledger.write(again)
    filter_ledger(ledger, FilterConfig(evalsets_cache=str(tmp_path / "no-cache"),
                                       fingerprint_dir=str(store)))
    assert ledger.get("bbc", "B1").duplicate_of == "audioset/yt_a_0"
    assert {p: p.stat().st_mtime_ns for p in sorted(store.rglob("*.npz"))} == stamps


def test_damaged_store_entries_are_recomputed(tmp_path, debian_sounds):
    """A truncated or garbage fingerprint entry (disk full, a copy cut short) is read as
    missing: the verdicts stay the same and the entry is written again, whole."""
    ledger = build_ledger(tmp_path, debian_sounds)
    store = tmp_path / "fingerprints"
    config = FilterConfig(evalsets_cache=str(tmp_path / "no-cache"), fingerprint_dir=str(store))
    filter_ledger(ledger, config)
    verdicts = {(r.source, r.source_id): (r.status, r.filter_reason, r.duplicate_of)
                for r in ledger.records()}
    entries = sorted(store.rglob("*.npz"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])        # truncated
    entries[1].write_bytes(b"not a numpy archive")                 # garbage
    for rec in ledger.records(status=[Status.DROPPED]):
        rec.status, rec.filter_reason, rec.filter_match, rec.duplicate_of = Status.CAPTIONED, "", {}, ""
        ledger.write([rec])
    filter_ledger(ledger, config)
    assert {(r.source, r.source_id): (r.status, r.filter_reason, r.duplicate_of)
            for r in ledger.records()} == verdicts
    fresh = FingerprintStore(store)
    assert all(fresh.get(p.stem) is not None for p in entries)


def test_counting_sort_index_matches_a_stable_argsort():
    """The index's in-place counting sort places the postings exactly where a stable argsort
    of the concatenated (hash, ref, time) put them, across two builds (adds after a build)."""
    from laion_audio.filters.content_overlap import FingerprintIndex
    from laion_audio.filters.fingerprint import Fingerprint

    rng = np.random.default_rng(5)
    fps = [Fingerprint(rng.integers(0, 1 << 22, n).astype(np.uint32),
                       rng.integers(0, 5000, n).astype(np.int32), 5000)
           for n in rng.integers(0, 400, 60)]
    index = FingerprintIndex()
    for j, fp in enumerate(fps[:25]):
        index.add(j, fp)
    index.build()
    for j, fp in enumerate(fps[25:]):
        index.add(25 + j, fp)
    index.build()
    h = np.concatenate([fp.hashes for fp in fps])
    r = np.concatenate([np.full(len(fp), j, np.int32) for j, fp in enumerate(fps)])
    t = np.concatenate([fp.times for fp in fps])
    order = np.argsort(h, kind="stable")
    assert np.array_equal(index.ref, r[order]) and np.array_equal(index.time, t[order])
    lo, cnt = index._buckets(h[order])
    assert np.array_equal(lo, np.searchsorted(h[order], h[order], side="left"))
    assert np.array_equal(cnt, np.searchsorted(h[order], h[order], side="right") - lo)
