"""Landmark audio fingerprints (spectral-peak pairs) and the aligned spectral check that confirms them.

Why our own and not Chromaprint: Chromaprint computes nothing below ~3 s and is chroma
(pitch-class) based, so short sound effects (UrbanSound8K, FSD50K, most SFX) get no fingerprint
and noise-like sounds collide (measured in benchmarks/filters.py). Landmarks (Wang 2003, as in
audfprint/dejavu) are pairs of spectral peaks hashed as (f1, f2 - f1, t2 - t1); a copy shares
many hashes *at one consistent time offset*, which trims, excerpts, gain, MP3 and resampling do
not change. Peaks are picked per half second, so short clips get their share of landmarks.

Pipeline per clip: mono -> 16 kHz (soxr) -> |STFT| (1024/128, 8 ms hop) -> log -> local maxima
(picked per 0.5 s block, strongest first) -> peak pairs -> 22-bit hashes with anchor times.
The same STFT gives coarse log band energies (48 bands, 16 ms) for :func:`aligned_correlation`,
the second check: two clips are the same recording only if their band-energy *envelopes*
(each band's mean removed, so spectral colour and gain do not count) correlate at the offset
the landmarks voted for. Two takes of the same kind of sound share colour but not envelope.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft
import soxr

SR = 16_000
N_FFT = 1024
HOP = 128                       # 8 ms frames
FRAME_SECONDS = HOP / SR
F_MIN, F_MAX = 4, 448           # peak bins: 62 Hz .. 7 kHz (stays under a 16 kHz resample's edge)
NEIGH_F, NEIGH_T = 21, 11       # local-maximum neighbourhood (bins x frames)
GRID = 4                        # frames between frequency-only peak picks (32 ms)
BLOCK = 62                      # frames per density block (~0.5 s)
PEAKS_PER_BLOCK = 32
FLOOR_DB = 60.0                 # peaks within 60 dB of their block's loudest bin ...
GLOBAL_FLOOR_DB = 100.0         # ... and not in near-silence of the whole clip
FAN_OUT = 6
DT_MAX = 63                     # pair target zone: 1..63 frames later (~0.5 s) ...
DF_MAX = 63                     # ... within +-63 bins (~1 kHz)
MIN_DF = 2
N_BANDS = 48
BAND_DECIMATE = 2               # band features at 16 ms
MIN_SECONDS = 0.25              # shorter clips get no fingerprint (counted by the caller)

_WINDOW = np.hanning(N_FFT).astype(np.float32)
_BAND_EDGES = np.unique(np.round(np.geomspace(F_MIN, F_MAX, N_BANDS + 1)).astype(int))


@dataclass
class Fingerprint:
    """Landmark hashes of one clip (``hashes[i]`` anchored at frame ``times[i]``) and, when
    kept, its band-energy envelope for the confirmation check."""

    hashes: np.ndarray          # uint32
    times: np.ndarray           # int32, anchor frame
    n_frames: int
    bands: np.ndarray | None = None   # float16 [frames/2, bands]
    #: per hash: the weaker of its two peaks, dB above its block's floor (uint8). Strong
    #: pairs survive MP3, noise and gain; a lookup with a posting budget spends it on them.
    strength: np.ndarray | None = None

    @property
    def duration(self) -> float:
        return self.n_frames * FRAME_SECONDS

    def __len__(self) -> int:
        return len(self.hashes)


def to_mono_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if sr != SR:
        x = soxr.resample(x, sr, SR, quality="HQ").astype(np.float32, copy=False)
    return x


def _log_spectrogram(x: np.ndarray) -> np.ndarray:
    """log |STFT|, shape [frames, N_FFT/2+1] (float32, dB)."""
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    spec = np.abs(scipy.fft.rfft(frames * _WINDOW, axis=1)).astype(np.float32)
    return 20.0 * np.log10(spec + 1e-9)


@numba.njit(cache=True, nogil=True)
def _max_filter_rows(x, w):
    """Centred running maximum of width ``w`` (odd) along each row, -inf outside the row:
    van Herk / Gil-Werman (block prefix and suffix maxima), three comparisons per cell
    whatever ``w`` is."""
    n, m = x.shape
    r = w // 2
    size = -(-(m + 2 * r) // w) * w
    padded = np.empty(size, x.dtype)
    prefix = np.empty(size, x.dtype)
    suffix = np.empty(size, x.dtype)
    out = np.empty_like(x)
    for i in range(n):
        for k in range(size):
            j = k - r
            padded[k] = x[i, j] if 0 <= j < m else -np.inf
        for b0 in range(0, size, w):
            acc = -np.inf
            for k in range(b0, b0 + w):
                acc = max(acc, padded[k])
                prefix[k] = acc
            acc = -np.inf
            for k in range(b0 + w - 1, b0 - 1, -1):
                acc = max(acc, padded[k])
                suffix[k] = acc
        for j in range(m):
            out[i, j] = max(suffix[j], prefix[j + w - 1])
    return out


def _peaks(S: np.ndarray, per_block: int, flag_grid: bool = False, grid: bool = True):
    """(frame, bin, dB above the floor) of local maxima, at most ``per_block`` per block.
    ``flag_grid`` (the warp path) adds a 4th array: True for a peak that is only a
    every-GRID-frames spectral maximum, whose time sits on a fixed grid that does not stretch
    with the audio. ``grid=False`` leaves those picks out (the warp path's stretchable peaks)."""
    band = np.ascontiguousarray(S[:, F_MIN:F_MAX])
    top = band.max()
    # the 2-D maximum filter, separably: over frequency, then over time (exactly what
    # scipy.ndimage.maximum_filter gives with -inf outside, ~3.5x faster)
    fmax = _max_filter_rows(band, NEIGH_F)
    mx = _max_filter_rows(np.ascontiguousarray(fmax.T), NEIGH_T).T
    is_peak = (band == mx)
    is_2d = is_peak.copy() if flag_grid else None
    # sustained tones are one ridge, whose only 2-D maximum is its onset: also take spectral
    # maxima (frequency only) on every GRID-th frame, so a chime keeps landmarks along its decay
    if grid:
        is_peak[::GRID] |= band[::GRID] == fmax[::GRID]
    # the floor is per block, so a quiet sound inside a loud recording keeps its own peaks
    nblk = -(-len(band) // BLOCK)
    frame_max = band.max(axis=1)
    pad = np.full(nblk * BLOCK, -np.inf, np.float32)
    pad[:len(frame_max)] = frame_max
    block_max = np.repeat(pad.reshape(nblk, BLOCK).max(axis=1), BLOCK)[:len(band)]
    floor = np.maximum(block_max - FLOOR_DB, top - GLOBAL_FLOOR_DB)
    t, f = np.nonzero(is_peak & (band > floor[:, None]))
    if len(t) == 0:
        out = t.astype(np.int32), f.astype(np.int32), np.zeros(0, np.float32)
        return (*out, np.zeros(0, bool)) if flag_grid else out
    mag = band[t, f]
    above = mag - floor[t]
    block = t // BLOCK
    order = np.lexsort((-mag, block))
    t, f, block, above = t[order], f[order], block[order], above[order]
    start = np.searchsorted(block, block, side="left")
    rank = np.arange(len(block)) - start
    keep = rank < per_block
    t, f, above = t[keep], f[keep] + F_MIN, above[keep]
    order = np.lexsort((f, t))
    out = t[order].astype(np.int32), f[order].astype(np.int32), above[order]
    return (*out, ~is_2d[out[0], out[1] - F_MIN]) if flag_grid else out


def _pairs(t: np.ndarray, f: np.ndarray, fan_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hash each peak with its next ``fan_out`` peaks in the target zone: (hashes, anchor
    times, anchor index, target index)."""
    n = len(t)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32), empty, empty
    anchors, targets = [], []
    taken = np.zeros(n, np.int32)
    for k in range(1, min(n, 4 * fan_out)):
        i = np.arange(n - k)
        j = i + k
        dt = t[j] - t[i]
        df = np.abs(f[j] - f[i])
        # |df| < 2 pairs only say "a steady tone at f1": any tone at that pitch would vote
        ok = (dt >= 1) & (dt <= DT_MAX) & (df <= DF_MAX) & (df >= MIN_DF) & (taken[i] < fan_out)
        if not ok.any():
            if (dt > DT_MAX).all():
                break
            continue
        taken[i[ok]] += 1
        anchors.append(i[ok])
        targets.append(j[ok])
    if not anchors:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32), empty, empty
    a = np.concatenate(anchors)
    b = np.concatenate(targets)
    return pack_landmarks(f[a], f[b] - f[a], t[b] - t[a]), t[a], a, b


def pack_landmarks(f1: np.ndarray, df: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """The 22-bit landmark hash: anchor bin (9 bits) | df + 64 (7 bits) | dt (6 bits)."""
    return ((np.asarray(f1).astype(np.uint32) << 13) | ((np.asarray(df) + 64).astype(np.uint32) << 6)
            | np.asarray(dt).astype(np.uint32))


def unpack_landmarks(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f1, df, dt) of :func:`pack_landmarks` hashes, as int64."""
    h = np.asarray(h).astype(np.int64)
    return (h >> 13) & 0x1FF, ((h >> 6) & 0x7F) - 64, h & 0x3F


def _bands(S: np.ndarray) -> np.ndarray:
    power = np.power(10.0, S[:, F_MIN:F_MAX] / 10.0, dtype=np.float32)
    cums = np.concatenate([np.zeros((len(power), 1), np.float32), np.cumsum(power, axis=1)], axis=1)
    edges = _BAND_EDGES - F_MIN
    e = cums[:, edges[1:]] - cums[:, edges[:-1]]
    n = (len(e) // BAND_DECIMATE) * BAND_DECIMATE
    if n == 0:
        n = len(e)
        e = e[:n]
    else:
        e = e[:n].reshape(-1, BAND_DECIMATE, e.shape[1]).mean(axis=1)
    return (10.0 * np.log10(e + 1e-10)).astype(np.float16)


def fingerprint(samples: np.ndarray, sr: int, *, keep_bands: bool = True) -> Fingerprint:
    """Landmark fingerprint of one clip (any rate, mono or [n, channels])."""
    x = to_mono_16k(samples, sr)
    if len(x) < MIN_SECONDS * SR or not np.any(x):
        return Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32), len(x) // HOP, None)
    return fingerprint_spectrogram(_log_spectrogram(x), keep_bands=keep_bands)


def fingerprint_spectrogram(S: np.ndarray, *, keep_bands: bool = True) -> Fingerprint:
    """:func:`fingerprint` from the clip's :func:`_log_spectrogram` (of at least
    ``MIN_SECONDS`` of audio), so a caller that needs other features of the same STFT
    computes it once."""
    # one density for every clip: pairs only match when both sides picked the same peaks
    t, f, above = _peaks(S, PEAKS_PER_BLOCK)
    h, ta, a, b = _pairs(t, f, FAN_OUT)
    strength = np.clip(np.minimum(above[a], above[b]), 0, 255).astype(np.uint8)
    return Fingerprint(h, ta, len(S), _bands(S) if keep_bands else None, strength)


def band_features(samples: np.ndarray, sr: int) -> np.ndarray:
    """Only the confirmation features (for a clip whose hashes are already indexed)."""
    x = to_mono_16k(samples, sr)
    return _bands(_log_spectrogram(x))


def aligned_correlation(a: np.ndarray, b: np.ndarray, offset_frames: int, *,
                        search: int = 2, min_overlap: int = 12,
                        range_db: float = 30.0, return_offset: bool = False):
    """Best envelope correlation of band features ``a`` (query) and ``b`` (reference).

    ``offset_frames`` (8 ms frames, reference minus query) comes from the landmark vote; we
    search +-``search`` feature frames around it. Each band's mean over the overlap is removed
    so gain and spectral colour cancel, and each frame's mean so a loudness contour shared by
    any two sounds cancels; what is left is the spectro-temporal pattern. Returns
    (correlation, overlap in feature frames), plus the best feature-frame offset when
    ``return_offset``.
    """
    base = int(round(offset_frames / BAND_DECIMATE))
    best, best_n, best_d = correlation_at(a, b, range(base - search, base + search + 1),
                                          min_overlap=min_overlap, range_db=range_db)
    if best_d is None:
        best_d = base
    return (best, best_n, best_d) if return_offset else (best, best_n)


def correlation_at(a: np.ndarray, b: np.ndarray, feature_offsets, *, min_overlap: int = 12,
                   range_db: float = 30.0) -> tuple[float, int, int | None]:
    """(correlation, overlap, feature offset) of the best of ``feature_offsets`` (query frame
    ``i`` against reference frame ``i + d``); see :func:`aligned_correlation`. Each clip's
    cells are floored ``range_db`` under its loudest cell in the overlap, so added noise and
    near-silence (which carry no identity) flatten out instead of decorrelating."""
    ds = np.fromiter(feature_offsets, np.int64)
    if not len(ds):
        return -1.0, 0, None
    best, n, k = _correlation_at(np.ascontiguousarray(a, np.float32),
                                 np.ascontiguousarray(b, np.float32), ds, min_overlap, range_db)
    return float(best), int(n), (int(ds[k]) if k >= 0 else None)


@numba.njit(cache=True, nogil=True)
def _correlation_at(a, b, ds, min_overlap, range_db):
    """Numba kernel of :func:`correlation_at`: per offset, the envelope correlation after
    flooring, removing each band's mean over the overlap and then each frame's mean (three
    passes over the overlap, no temporaries)."""
    nb = a.shape[1]
    best, best_n, best_k = -1.0, 0, -1
    cx = np.empty(nb, np.float64)
    cy = np.empty(nb, np.float64)
    for k in range(len(ds)):
        d = ds[k]
        i0 = max(0, -d)
        i1 = min(a.shape[0], b.shape[0] - d)
        n = i1 - i0
        if n < min_overlap:
            continue
        fx = -np.inf
        fy = -np.inf
        for i in range(i0, i1):
            for j in range(nb):
                fx = max(fx, a[i, j])
                fy = max(fy, b[i + d, j])
        fx -= range_db
        fy -= range_db
        cx[:] = 0.0
        cy[:] = 0.0
        for i in range(i0, i1):
            for j in range(nb):
                cx[j] += max(a[i, j], fx)
                cy[j] += max(b[i + d, j], fy)
        cx /= n
        cy /= n
        sxy = 0.0
        sxx = 0.0
        syy = 0.0
        for i in range(i0, i1):
            rx = 0.0
            ry = 0.0
            for j in range(nb):
                rx += max(a[i, j], fx) - cx[j]
                ry += max(b[i + d, j], fy) - cy[j]
            rx /= nb
            ry /= nb
            for j in range(nb):
                x = max(a[i, j], fx) - cx[j] - rx
                y = max(b[i + d, j], fy) - cy[j] - ry
                sxy += x * y
                sxx += x * x
                syy += y * y
        den = np.sqrt(sxx * syy)
        if den <= 0:
            continue
        c = sxy / den
        if c > best:
            best, best_n, best_k = c, n, k
    return best, best_n, best_k


# --------------------------------------------------------------------------- warp-invariant path
# Issue 14: speed (pitch and time together), pitch shifts and tempo changes move every peak
# of a copy, so the (f1, df, dt) landmarks above stop matching past ~1-2 %. The warp path
# hashes peak *triplets* by what those edits leave alone (Panako, Six & Leman 2014): the two
# frequency *intervals* in semitones (log frequency: a pitch or speed change adds the same
# number of semitones to every peak) and the *ratio* of the two time gaps (a tempo or speed
# change multiplies every gap by the same factor). A coarse anchor pitch and a coarse log time
# span make the hash specific; the query side looks them up across the whole warp range.
WARP_DT_MAX = 40                # each gap of a triplet: 1..40 frames (320 ms)
WARP_FAN = 4                    # targets per anchor: C(4, 2) = 6 triplets per peak
WARP_DF_MAX = 12.0              # each interval within +-12 semitones
WARP_Q_INTERVAL = 1.0           # interval bin (semitones)
WARP_Q_RATIO = 8                # time-ratio bins over (0, 1)
WARP_Q_ANCHOR = 3.0             # anchor pitch bin (semitones)
WARP_Q_SPAN = np.log(1.12)      # log time-span bin (12 %)


@dataclass
class WarpPrint:
    """Peaks of one clip on a log-frequency axis and the triplets the warp path hashes
    (``tri[i]`` = indices of its three peaks, in time order)."""

    t: np.ndarray               # int32 frame of each peak
    lf: np.ndarray              # float32 semitones above 1 Hz (parabolic-refined bin)
    tri: np.ndarray             # int32 [n, 3]
    n_frames: int
    #: per triplet: one of its peaks is a grid-only pick (a sustained tone's), whose time does
    #: not stretch with the audio: it votes for the reference, not for the time factor
    grid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tri)


def _refined_semitones(S: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Peak frequency in semitones, the bin refined by a parabola through the peak and its
    neighbours (a 1-bin error is a semitone at 300 Hz: the intervals need better)."""
    a, b, c = S[t, f - 1], S[t, f], S[t, f + 1]
    den = a - 2 * b + c
    delta = np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
    hz = (f + np.clip(delta, -0.5, 0.5)) * (SR / N_FFT)
    return (12.0 * np.log2(hz)).astype(np.float32)


def _triplets(t: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """Each peak with pairs of its next ``WARP_FAN`` later peaks (gaps 1..WARP_DT_MAX frames,
    intervals within +-WARP_DF_MAX semitones)."""
    n = len(t)
    out = []
    nxt = []
    for k in range(1, 6 * WARP_FAN):
        if k >= n:
            break
        i = np.arange(n - k)
        ok = (t[i + k] - t[i] >= 1) & (t[i + k] - t[i] <= WARP_DT_MAX) & \
            (np.abs(lf[i + k] - lf[i]) <= WARP_DF_MAX)
        nxt.append(np.where(ok, i + k, -1))
    if not nxt:
        return np.zeros((0, 3), np.int32)
    cand = np.full((n, len(nxt)), -1, np.int64)
    for k, col in enumerate(nxt):
        cand[:len(col), k] = col
    # the first WARP_FAN valid targets per anchor
    valid = cand >= 0
    rank = np.cumsum(valid, axis=1) - 1
    cand = np.where(valid & (rank < WARP_FAN), cand, -1)
    for a in range(cand.shape[1]):
        for b in range(a + 1, cand.shape[1]):
            j, k = cand[:, a], cand[:, b]
            i = np.arange(n)
            ok = (j >= 0) & (k >= 0)
            if not ok.any():
                continue
            i, j, k = i[ok], j[ok], k[ok]
            ok = (t[k] - t[j] >= 1) & (np.abs(lf[k] - lf[j]) <= WARP_DF_MAX)
            out.append(np.stack([i[ok], j[ok], k[ok]], axis=1))
    if not out:
        return np.zeros((0, 3), np.int32)
    tri = np.concatenate(out).astype(np.int32)
    return tri[np.lexsort((tri[:, 2], tri[:, 1], tri[:, 0]))]


def warp_print(samples: np.ndarray, sr: int) -> WarpPrint:
    """The warp path's peaks and triplets of one clip (the same peaks as :func:`fingerprint`)."""
    x = to_mono_16k(samples, sr)
    if len(x) < MIN_SECONDS * SR or not np.any(x):
        return WarpPrint(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.int32),
                         len(x) // HOP, np.zeros(0, bool))
    S = _log_spectrogram(x)
    return warp_print_from_spectrogram(S)


def warp_print_from_spectrogram(S: np.ndarray) -> WarpPrint:
    # 2-D maxima only (they stretch with the audio), plus the triplets of the exact path's
    # peak set that involve a grid-only pick (sustained tones, which have no other peaks)
    t, f, _ = _peaks(S, PEAKS_PER_BLOCK, grid=False)
    t2, f2, _, g2 = _peaks(S, PEAKS_PER_BLOCK, flag_grid=True)
    tri, tri2 = _triplets(t, _refined_semitones(S, t, f)), _triplets(t2, _refined_semitones(S, t2, f2))
    tri2 = tri2[g2[tri2].any(axis=1)] if len(tri2) else tri2
    t_all, f_all = np.concatenate([t, t2]), np.concatenate([f, f2])
    tri_all = np.concatenate([tri, tri2 + len(t)]).astype(np.int32)
    grid = np.concatenate([np.zeros(len(tri), bool), np.ones(len(tri2), bool)])
    return WarpPrint(t_all, _refined_semitones(S, t_all, f_all), tri_all, len(S), grid)


def _warp_components(wp: WarpPrint) -> tuple[np.ndarray, ...]:
    """Per triplet, unquantized: (interval 1, interval 2, time ratio, anchor pitch, log span),
    each already divided by its bin width."""
    i, j, k = wp.tri[:, 0], wp.tri[:, 1], wp.tri[:, 2]
    lf, t = wp.lf.astype(np.float64), wp.t.astype(np.float64)
    d1 = (lf[j] - lf[i]) / WARP_Q_INTERVAL
    d2 = (lf[k] - lf[j]) / WARP_Q_INTERVAL
    span = t[k] - t[i]
    r = (t[j] - t[i]) / span * WARP_Q_RATIO
    a = lf[i] / WARP_Q_ANCHOR
    sp = np.log(span) / WARP_Q_SPAN
    return d1, d2, r, a, sp


def _pack_warp(d1, d2, r, a, sp) -> np.ndarray:
    """Bins -> 28-bit hash: interval 1 (5) | interval 2 (5) | ratio (3) | anchor (7) | span (6)."""
    d1 = np.asarray(d1, np.int64) + 16
    d2 = np.asarray(d2, np.int64) + 16
    return ((d1 << 23) | (d2 << 18) | (np.asarray(r, np.int64) << 15)
            | ((np.asarray(a, np.int64) & 0x7F) << 6) | (np.asarray(sp, np.int64) & 0x3F)).astype(np.uint32)


def warp_hashes(wp: WarpPrint) -> np.ndarray:
    """Index side: one hash per triplet (each component floored to its bin)."""
    d1, d2, r, a, sp = _warp_components(wp)
    return _pack_warp(np.floor(d1), np.floor(d2), np.clip(np.floor(r), 0, WARP_Q_RATIO - 1),
                      np.floor(a), np.floor(sp))


#: query-side tolerance per component, in semitones / ratio units / log-span units: the
#: measurement noise of refined peaks and 8 ms frames, plus, for the anchor pitch and the span,
#: the whole warp range searched (+-1.1 semitone, +-9 % time)
WARP_TOL_INTERVAL = 0.3
WARP_TOL_RATIO = 0.02
WARP_TOL_FRAMES = 0.75          # peak times are whole 8 ms frames
WARP_MAX_SEMITONES = 1.1
WARP_MAX_TIME = 0.09


def warp_query_hashes(wp: WarpPrint) -> tuple[np.ndarray, np.ndarray]:
    """Query side: every hash a warped copy's triplet may have within the searched range,
    (hashes, triplet index). Each component contributes the bins its tolerance window
    touches, so a value near a bin edge is looked up on both sides."""
    d1, d2, r, a, sp = _warp_components(wp)
    span = np.exp(sp * WARP_Q_SPAN)
    tol = [np.full(len(d1), WARP_TOL_INTERVAL / WARP_Q_INTERVAL),
           np.full(len(d1), WARP_TOL_INTERVAL / WARP_Q_INTERVAL),
           WARP_TOL_RATIO * WARP_Q_RATIO + WARP_Q_RATIO * WARP_TOL_FRAMES / span,
           np.full(len(d1), (WARP_MAX_SEMITONES + WARP_TOL_INTERVAL) / WARP_Q_ANCHOR),
           np.log(1 + WARP_MAX_TIME) / WARP_Q_SPAN + np.log1p(WARP_TOL_FRAMES / span) / WARP_Q_SPAN]
    vals = [d1, d2, r, a, sp]
    lo = [np.floor(v - w).astype(np.int64) for v, w in zip(vals, tol)]
    hi = [np.floor(v + w).astype(np.int64) for v, w in zip(vals, tol)]
    lo[2] = np.clip(lo[2], 0, WARP_Q_RATIO - 1)
    hi[2] = np.clip(hi[2], 0, WARP_Q_RATIO - 1)
    idx = np.arange(len(d1), dtype=np.int64)
    cur = [idx] + [lo[c] for c in range(5)]
    # expand one component at a time: each triplet repeated once per bin in its window
    for c in range(5):
        reps = (hi[c] - lo[c] + 1)[cur[0]]
        rep_idx = np.repeat(np.arange(len(cur[0])), reps)
        step = np.arange(len(rep_idx)) - np.repeat(np.cumsum(reps) - reps, reps)
        cur = [v[rep_idx] for v in cur]
        cur[c + 1] = cur[c + 1] + step
    return _pack_warp(*cur[1:]), cur[0].astype(np.int32)


def pitched_band_features(samples: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Band features of a clip as if it were ``semitones`` higher, measured on its own
    spectrum: each band's edges moved down by ``semitones`` (fractional bins, the power
    cumsum interpolated), so a pitch-shifted copy is compared band for band with its original
    instead of through an interpolation across ~2-semitone bands, which smears a shift of
    one semitone (the warp pass's confirmation at the estimated pitch)."""
    S = _log_spectrogram(to_mono_16k(samples, sr))
    power = np.power(10.0, S / 10.0, dtype=np.float32)
    cums = np.concatenate([np.zeros((len(power), 1), np.float32), np.cumsum(power, axis=1)], axis=1)
    x = np.clip(_BAND_EDGES * 2.0 ** (-semitones / 12.0), 0, power.shape[1] - 1e-6)
    j = np.floor(x).astype(np.int64)
    at = cums[:, j] + (x - j).astype(np.float32) * power[:, j]
    e = np.maximum(at[:, 1:] - at[:, :-1], 0)
    n = (len(e) // BAND_DECIMATE) * BAND_DECIMATE
    e = e[:n].reshape(-1, BAND_DECIMATE, e.shape[1]).mean(axis=1) if n else e
    return (10.0 * np.log10(e + 1e-10)).astype(np.float16)


def warp_bands(bands: np.ndarray, time_factor: float, semitones: float) -> np.ndarray:
    """Band features of a query as they would be ``time_factor`` times longer and
    ``semitones`` higher (to compare with the reference it is a warped copy of): the time
    axis resampled by linear interpolation, the frequency axis shifted along the log band
    centres (interpolated, edge bands held)."""
    b = np.asarray(bands, np.float32)
    n = len(b)
    m = max(1, int(round(n * time_factor)))
    src = np.clip(np.arange(m) / time_factor, 0, n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (src - i0)[:, None].astype(np.float32)
    b = b[i0] * (1 - w) + b[i1] * w
    if semitones:
        # np.interp along the band axis, the same weights for every frame
        centres = 12 * np.log2(np.sqrt(_BAND_EDGES[:-1] * _BAND_EDGES[1:]))
        src_c = np.clip(centres - semitones, centres[0], centres[-1])
        j1 = np.clip(np.searchsorted(centres, src_c, side="right"), 1, len(centres) - 1)
        j0 = j1 - 1
        wc = ((src_c - centres[j0]) / (centres[j1] - centres[j0])).astype(np.float32)
        b = b[:, j0] * (1 - wc) + b[:, j1] * wc
    return b.astype(np.float32)
