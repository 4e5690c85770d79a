"""A content-addressed store of landmark fingerprints, keyed by the decoded-PCM sha256.

Why: fingerprinting is the filter stage's main cost (~35 clips/s/core). With a store, the
fingerprints are computed once per distinct audio, in parallel by the build's workers
(:func:`fingerprint_batch` runs on the executor like any other stage), and a refresh only
fingerprints new audio. The store also lets the near-duplicate check compare new records
with clips that are already in shards without decoding them again.

Layout: ``<root>/<VERSION>/<sha[:2]>/<sha>.npz`` holding hashes, anchor times, frame count
and per-hash strength; beside it ``<sha>.<NEAR_VERSION>.npy``, the near-duplicate
confirmation features (float16, ~4x the fingerprint), computed by the workers from the same
STFT as the fingerprint. The filter reads them instead of decoding FLACs again: a feature
read costs ~0.1 ms where a decode and STFT cost ~5-9 ms, so the filter's feature cache can be
small and fixed (its memory does not grow with the corpus) without re-decoding.
Writes are atomic (temp file + rename), so a killed run leaves no partial entry, only temp
files that the next run removes before it writes.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic
from ..records import Record
from ..shards.members import audio_exists, open_audio, released_clip_intact
from . import fingerprint as fpmod
from .fingerprint import Fingerprint, fingerprint

log = logging.getLogger(__name__)

#: bump when fingerprint.py changes what it computes: old entries are then simply not found
VERSION = "v1"
#: bump when dedup.near_features changes
NEAR_VERSION = "n1"

#: Audio is read in blocks of this many frames, down-mixed and resampled to 16 kHz as a stream
#: (the same samples as resampling the whole clip at once: soxr's stream is chunking-exact).
READ_BLOCK = 1 << 16
#: Clips up to this long are fingerprinted in one piece, exactly as before; longer ones in
#: windows, so peak memory per worker stays ~200 MB whatever the clip length (the spectrogram
#: of a whole hour took 5.2 GB).
WHOLE_SECONDS = 120.0
#: Window core and context in STFT frames: multiples of the peak-picking block (62 frames),
#: its grid (4) and the band decimation (2), so blocks line up with the whole-clip ones.
WINDOW_FRAMES = fpmod.BLOCK * fpmod.GRID * 30          # 7,440 frames = 59.5 s
CONTEXT_FRAMES = 2 * fpmod.BLOCK                       # 124 frames: > pair zone + neighbourhood


def _mono_16k_blocks(path: str):
    """(frames at the file's rate, iterator of mono float32 blocks at 16 kHz). Down-mix is the
    same per-row mean as :func:`laion_audio.transcode.audio.read_mono`; the resampler is soxr
    HQ as in ``to_mono_16k``."""
    import soundfile as sf

    from ..transcode.audio import mono_blocks

    handle = sf.SoundFile(open_audio(path))     # a file, or a sharded clip's tar member
    rate = handle.samplerate
    frames = handle.frames if 0 < handle.frames < (1 << 62) else None

    def blocks():
        try:
            yield from mono_blocks(handle, max(1024, READ_BLOCK * 8 // max(1, handle.channels)), fpmod.SR)
        finally:
            handle.close()
    return rate, frames, blocks()


def _whole(blocks) -> np.ndarray:
    parts = [b for b in blocks if len(b)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _windows(blocks):
    """(first frame, 16 kHz samples) of overlapping windows: core WINDOW_FRAMES frames plus
    CONTEXT_FRAMES on each side; only one window of samples is held at a time."""
    hop, n_fft = fpmod.HOP, fpmod.N_FFT
    buf = np.zeros(0, np.float32)
    buf_start = 0                       # sample index of buf[0]
    k = 0
    done = False
    while True:
        f0 = max(0, k * WINDOW_FRAMES - CONTEXT_FRAMES)
        f1 = (k + 1) * WINDOW_FRAMES + CONTEXT_FRAMES
        want = f1 * hop + n_fft - hop   # samples needed for frame f1 - 1
        while not done and buf_start + len(buf) < want:
            try:
                buf = np.concatenate([buf, next(blocks)])
            except StopIteration:
                done = True
        lo = f0 * hop - buf_start
        yield k * WINDOW_FRAMES, f0, buf[lo:want - buf_start]
        if done and buf_start + len(buf) <= want:
            return
        k += 1
        drop = max(0, (k * WINDOW_FRAMES - CONTEXT_FRAMES) * hop - buf_start)
        buf, buf_start = buf[drop:], buf_start + drop


def _windowed(blocks, keep_bands: bool, bands_only: bool = False):
    """Fingerprint (or band features) of a long clip from its windows: each window keeps the
    hashes anchored in its core (their peaks and pair targets see the same neighbourhood and
    peak blocks as in the whole clip; only the near-silence floor is per window)."""
    hashes, times, strength, bands = [], [], [], []
    total_samples = 0
    for core0, f0, x in _windows(blocks):
        total_samples = max(total_samples, f0 * fpmod.HOP + len(x))
        core1 = core0 + WINDOW_FRAMES
        if bands_only or keep_bands:
            b = fpmod.band_features(x, fpmod.SR)
            r0 = (core0 - f0) // fpmod.BAND_DECIMATE
            bands.append(b[r0:r0 + WINDOW_FRAMES // fpmod.BAND_DECIMATE])
        if bands_only:
            continue
        fp = fingerprint(x, fpmod.SR, keep_bands=False)
        if len(fp.hashes):
            t = fp.times.astype(np.int64) + f0
            keep = (t >= core0) & (t < core1)
            hashes.append(fp.hashes[keep])
            times.append(t[keep].astype(np.int32))
            strength.append(fp.strength[keep])
    band_arr = np.concatenate(bands) if bands else None
    if bands_only:
        return band_arr
    n = total_samples
    n_frames = (1 + (max(n, fpmod.N_FFT) - fpmod.N_FFT) // fpmod.HOP)
    if n < fpmod.MIN_SECONDS * fpmod.SR:
        n_frames = n // fpmod.HOP
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    return Fingerprint(cat(hashes, np.uint32), cat(times, np.int32), n_frames,
                       band_arr if keep_bands else None, cat(strength, np.uint8))


def _is_long(rate: int, frames: int | None) -> bool:
    return frames is None or frames / rate > WHOLE_SECONDS


def fingerprint_file(path: str, keep_bands: bool = True) -> Fingerprint | None:
    """Fingerprint of an audio file, or None (logged) when it cannot be decoded. Read as a
    stream; a clip longer than WHOLE_SECONDS is fingerprinted in windows (bounded memory)."""
    try:
        rate, frames, blocks = _mono_16k_blocks(path)
        if not _is_long(rate, frames):
            return fingerprint(_whole(blocks), fpmod.SR, keep_bands=keep_bands)
        return _windowed(blocks, keep_bands)
    except Exception as exc:  # noqa: BLE001 - one unreadable file is counted, not fatal
        log.warning("cannot decode %s: %s", path, exc)
        return None


def warp_print_file(path: str) -> "fpmod.WarpPrint | None":
    """The warp path's peaks and triplets of an audio file (issue 14), from the same bounded
    read as :func:`fingerprint_file`: a long clip window by window, each window keeping the
    triplets anchored in its core. None (logged) when the file cannot be decoded."""
    try:
        rate, frames, blocks = _mono_16k_blocks(path)
        if not _is_long(rate, frames):
            return fpmod.warp_print(_whole(blocks), fpmod.SR)
        ts, lfs, tris, grids, n_peaks, n_frames = [], [], [], [], 0, 0
        for core0, f0, x in _windows(blocks):
            wp = fpmod.warp_print(x, fpmod.SR)
            n_frames = max(n_frames, f0 + wp.n_frames)
            if not len(wp):
                continue
            anchor = wp.t[wp.tri[:, 0]].astype(np.int64) + f0
            keep = (anchor >= core0) & (anchor < core0 + WINDOW_FRAMES)
            ts.append(wp.t.astype(np.int64) + f0)
            lfs.append(wp.lf)
            tris.append(wp.tri[keep] + n_peaks)
            grids.append(wp.grid[keep])
            n_peaks += len(wp.t)
        cat = (lambda xs, dt, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape, dt))
        return fpmod.WarpPrint(cat(ts, np.int64).astype(np.int32), cat(lfs, np.float32),
                               cat(tris, np.int32, (0, 3)).astype(np.int32), n_frames,
                               cat(grids, bool))
    except Exception as exc:  # noqa: BLE001 - one unreadable file is counted, not fatal
        log.warning("cannot decode %s: %s", path, exc)
        return None


def fingerprint_and_near_file(path: str) -> tuple[Fingerprint | None, np.ndarray | None]:
    """(fingerprint, near-duplicate features) of an audio file from one decode (and, for a
    clip up to WHOLE_SECONDS, one STFT); (None, None), logged, when it cannot be decoded."""
    from .dedup import near_features, near_features_spectrogram

    try:
        rate, frames, blocks = _mono_16k_blocks(path)
        if _is_long(rate, frames):
            return _windowed(blocks, keep_bands=False), frame_features_file(path, near_features)
        x = _whole(blocks)
        S = fpmod._log_spectrogram(x)
        # a clip too short or silent for landmarks still gets (unused) features, so the store
        # says it is done and a rerun does not decode it again
        fp = (fingerprint(x, fpmod.SR, keep_bands=False)
              if len(x) < fpmod.MIN_SECONDS * fpmod.SR or not np.any(x)
              else fpmod.fingerprint_spectrogram(S, keep_bands=False))
        return fp, near_features_spectrogram(S)
    except Exception as exc:  # noqa: BLE001 - one unreadable file is counted, not fatal
        log.warning("cannot decode %s: %s", path, exc)
        return None, None


def frame_features_file(path: str, features) -> np.ndarray | None:
    """Per-frame features of an audio file (``features(samples_16k, 16000)`` -> one row per
    ``BAND_DECIMATE`` STFT frames, e.g. the near-duplicate bands), from the same bounded read
    as :func:`fingerprint_file`: whole for short clips, window by window for long ones."""
    rate, frames, blocks = _mono_16k_blocks(path)
    if not _is_long(rate, frames):
        return features(_whole(blocks), fpmod.SR)
    out = []
    for core0, f0, x in _windows(blocks):
        r0 = (core0 - f0) // fpmod.BAND_DECIMATE
        out.append(features(x, fpmod.SR)[r0:r0 + WINDOW_FRAMES // fpmod.BAND_DECIMATE])
    return np.concatenate(out) if out else None


def band_features_file(path: str) -> np.ndarray:
    """The confirmation features of an audio file (same bounded read as
    :func:`fingerprint_file`)."""
    rate, frames, blocks = _mono_16k_blocks(path)
    if not _is_long(rate, frames):
        return fpmod.band_features(_whole(blocks), fpmod.SR)
    return _windowed(blocks, keep_bands=True, bands_only=True)


def _read_f16_npy(path: Path) -> np.ndarray:
    """A 2-D float16 .npy as :func:`np.save` writes it, read in one call: ``np.load`` parses
    the header with ``ast.literal_eval`` (~0.15 ms, most of a feature read, and the filter
    reads one per clip of every candidate pair). Anything else goes to ``np.load``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw[:6].tobytes() == b"\x93NUMPY" and raw[6] == 1:
        n = 10 + int(raw[8]) + 256 * int(raw[9])
        head = raw[10:n].tobytes()
        if b"'descr': '<f2'" in head and b"'fortran_order': False" in head:
            shape = head[head.index(b"(") + 1:head.index(b")")].split(b",")
            if len(shape) == 2 and shape[1].strip():
                return raw[n:].view(np.float16).reshape(int(shape[0]), int(shape[1]))
    return np.load(path)


class FingerprintStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / VERSION

    def remove_partial(self) -> int:
        """Delete temp files a killed run left behind; call only while no one writes."""
        n = 0
        if self.root.is_dir():
            for tmp in self.root.glob("*/.tmp-*"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.npz"

    def __contains__(self, sha: str) -> bool:
        return bool(sha) and self.path(sha).is_file()

    def get(self, sha: str, strength: bool = True) -> Fingerprint | None:
        """The stored fingerprint (``strength=False``: without the per-hash strengths, which
        the filter does not use: 1 byte of every 9 it holds per landmark)."""
        if not sha:
            return None
        try:
            with np.load(self.path(sha)) as z:
                return Fingerprint(z["hashes"], z["times"], int(z["n_frames"]), None,
                                   z["strength"] if strength else None)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
            log.warning("fingerprint store entry %s unreadable (%s): recomputing", sha, exc)
            return None

    def put(self, sha: str, fp: Fingerprint) -> None:
        dest = self.path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, hashes=fp.hashes, times=fp.times, n_frames=np.int64(fp.n_frames),
                         strength=fp.strength if fp.strength is not None
                         else np.zeros(len(fp.hashes), np.uint8))
            atomic.publish(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def near_path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.{NEAR_VERSION}.npy"

    def has_near(self, sha: str) -> bool:
        return bool(sha) and self.near_path(sha).is_file()

    def get_near(self, sha: str) -> np.ndarray | None:
        """The stored near-duplicate features of ``sha`` (None: not stored or unreadable)."""
        if not sha:
            return None
        try:
            return _read_f16_npy(self.near_path(sha))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
            log.warning("near features %s unreadable (%s): recomputing", sha, exc)
            return None

    def put_near(self, sha: str, features: np.ndarray) -> None:
        dest = self.near_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(features, np.float16))
            atomic.publish(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, sha: str, audio_path: str, strength: bool = True) -> Fingerprint | None:
        """The stored fingerprint, else computed from ``audio_path`` and stored (when the
        record has a PCM hash to key it by)."""
        fp = self.get(sha, strength)
        if fp is not None:
            return fp
        if not released_clip_intact(audio_path, sha):
            log.warning("%s does not hold the samples hashed %s: not fingerprinted", audio_path, sha[:12])
            return None
        fp = fingerprint_file(audio_path, keep_bands=False)
        if fp is not None and sha:
            self.put(sha, fp)
            if not strength:
                fp.strength = None
        return fp


def fingerprint_batch(records: Sequence[Record], *, store_dir: str) -> list[Record]:
    """Executor stage: store a fingerprint and the near-duplicate features for every record's
    audio (``flac_path``, absolute) that the store lacks, from one decode. Records come back
    unchanged; an undecodable file is left for the filter stage to count."""
    store = FingerprintStore(store_dir)
    for rec in records:
        sha, path = rec.audio_sha256, rec.flac_path
        if not (sha and path) or (sha in store and store.has_near(sha)) or not audio_exists(path):
            continue
        if not released_clip_intact(path, sha):
            log.warning("%s does not hold the samples of %s/%s (sha256 %s): not fingerprinted",
                        path, rec.source, rec.source_id, sha[:12])
            continue
        fp, near = fingerprint_and_near_file(path)
        if near is not None and not store.has_near(sha):
            store.put_near(sha, near)
        if fp is not None and sha not in store:
            store.put(sha, fp)          # last: an entry with a fingerprint has its features
    return list(records)
