"""The filter stage reads audio for fingerprints as a bounded stream (issue 10 item 11): the
fingerprints of normal clips are exactly those of the whole-clip read, a long clip is
fingerprinted in windows with the same hashes, and peak memory does not grow with the clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _peak import in_child

from laion_audio.filters import fpstore
from laion_audio.transcode.audio import read_mono
from laion_audio.filters.fingerprint import band_features, fingerprint

def chirps(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(0.7 * t)) * t) * (1 + np.sin(3 * t))
    x = x + 0.05 * rng.standard_normal(len(t))
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def same(a, b) -> bool:
    return (a.n_frames == b.n_frames and np.array_equal(a.hashes, b.hashes)
            and np.array_equal(a.times, b.times) and np.array_equal(a.strength, b.strength)
            and ((a.bands is None and b.bands is None) or np.array_equal(a.bands, b.bands)))


@pytest.mark.parametrize("seconds,rate,channels,subtype", [(0.2, 48000, 1, "PCM_16"),
                                                           (7.3, 48000, 1, "PCM_24"),
                                                           (30.0, 44100, 2, "PCM_16")])
def test_streamed_read_gives_the_whole_clip_fingerprint(tmp_path, seconds, rate, channels, subtype):
    path = tmp_path / "a.flac"
    sf.write(str(path), chirps(seconds, rate, channels), rate, subtype=subtype)
    whole = fingerprint(*read_mono(str(path)))
    assert same(fpstore.fingerprint_file(str(path)), whole)
    assert np.array_equal(fpstore.band_features_file(str(path)),
                          band_features(*read_mono(str(path))))


def test_long_clip_windows_give_the_same_hashes(tmp_path, monkeypatch):
    """Windows of 59.5 s with aligned peak blocks: a 150 s clip gets the whole-clip hashes."""
    path = tmp_path / "long.flac"
    sf.write(str(path), chirps(150.0, 48000), 48000, subtype="PCM_16")
    whole = fingerprint(*read_mono(str(path)))
    monkeypatch.setattr(fpstore, "WHOLE_SECONDS", 10.0)      # force the windowed path
    windowed = fpstore.fingerprint_file(str(path))
    assert windowed.n_frames == whole.n_frames
    assert set(zip(windowed.hashes.tolist(), windowed.times.tolist())) == \
        set(zip(whole.hashes.tolist(), whole.times.tolist()))
    assert np.array_equal(windowed.bands, whole.bands)
    assert np.array_equal(fpstore.band_features_file(str(path)), whole.bands)


def _twenty_minutes(tmp_path: Path) -> Path:
    """A 20-minute 48 kHz FLAC of chirps, written a minute at a time."""
    path = tmp_path / "twenty.flac"
    with sf.SoundFile(str(path), "w", 48000, 1, "PCM_16", format="FLAC") as fh:
        for i in range(20):
            fh.write(chirps(60.0, 48000, seed=i))
    return path


@pytest.fixture(scope="module")
def twenty_minutes(tmp_path_factory) -> Path:
    """:func:`_twenty_minutes`, written once for the two tests that only read it."""
    return _twenty_minutes(tmp_path_factory.mktemp("twenty"))


@pytest.mark.slow
def test_fingerprint_memory_does_not_grow_with_the_clip(twenty_minutes):
    """20 min at 48 kHz: the whole-clip read and spectrogram took ~1.7 GB (5.2 GB for an hour);
    the streamed, windowed read stays near 300 MB."""
    n_frames, n_hashes, maxrss_kb = in_child(
        "from laion_audio.filters.fpstore import fingerprint_file;"
        "fp = fingerprint_file(sys.argv[1], keep_bands=False);"
        "print(fp.n_frames, len(fp.hashes), peak_kb())", twenty_minutes)
    assert n_frames == 1 + (20 * 60 * 16000 - 1024) // 128 and n_hashes > 100_000
    assert maxrss_kb < 600 * 1024, f"peak RSS {maxrss_kb / 1024:.0f} MB"


@pytest.mark.slow
def test_near_duplicate_features_are_read_in_bounded_memory(tmp_path, twenty_minutes):
    """The near-duplicate check's features come from the same bounded read: a 20-min clip read
    whole took over 1.5 GB (an hour: 4.8 GB in the hostile-corpus run); windowed, they equal
    the whole-clip features of a short clip and stay near 300 MB for the long one."""
    from laion_audio.filters.dedup import near_features

    short = tmp_path / "short.flac"
    sf.write(str(short), chirps(30.0, 44100, seed=3), 44100, subtype="PCM_16")
    x, sr = read_mono(str(short))
    assert np.array_equal(fpstore.frame_features_file(str(short), near_features), near_features(x, sr))
    rows, maxrss_kb = in_child(
        "from laion_audio.filters.fpstore import frame_features_file;"
        "from laion_audio.filters.dedup import near_features;"
        "f = frame_features_file(sys.argv[1], near_features);"
        "print(f.shape[0], peak_kb())", twenty_minutes)
    assert rows >= (20 * 60 * 16000 - 1024) // 128 // 2 - 1
    assert maxrss_kb < 600 * 1024, f"peak RSS {maxrss_kb / 1024:.0f} MB"


@pytest.mark.parametrize("seconds", [0.1, 2.5])
def test_workers_store_the_near_features_the_filter_would_compute(tmp_path, monkeypatch, seconds):
    """The fingerprint stage stores each clip's near-duplicate features from the same decode
    and STFT as its fingerprint: exactly what the filter computed from the FLAC, so the
    filter reads them instead of decoding again. A clip too short for landmarks gets an
    entry too (a rerun finds it done and decodes nothing)."""
    from laion_audio.filters.dedup import near_features
    from laion_audio.records import Record

    path = tmp_path / "a.flac"
    sf.write(str(path), chirps(seconds, 48000), 48000, subtype="PCM_16")
    rec = Record(source="local", source_id="a", url="", audio_sha256="ab" * 32, flac_path=str(path))
    fpstore.fingerprint_batch([rec], store_dir=str(tmp_path / "fp"))
    store = fpstore.FingerprintStore(tmp_path / "fp")
    assert rec.audio_sha256 in store and store.has_near(rec.audio_sha256)
    assert np.array_equal(store.get_near(rec.audio_sha256),
                          fpstore.frame_features_file(str(path), near_features))
    got, want = store.get(rec.audio_sha256), fpstore.fingerprint_file(str(path), keep_bands=False)
    assert got.n_frames == want.n_frames and np.array_equal(got.hashes, want.hashes)
    assert np.array_equal(got.times, want.times)
    def decode(path):
        raise AssertionError("decoded again")
    monkeypatch.setattr(fpstore, "fingerprint_and_near_file", decode)
    fpstore.fingerprint_batch([rec], store_dir=str(tmp_path / "fp"))     # done: no decode
