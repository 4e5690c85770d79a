"""Varied clips that are distinct by construction, for near-duplicate precision tests and scale runs.

Clip ``i`` of seed ``s`` is a pure function of ``(s, i)`` (its own random generator), so a
test, a benchmark and a build can each regenerate any clip without storing it. Every clip is
one to three segments of random kinds - linear/exponential chirps, gated tones, band-filtered
noise, FM tones, harmonic stacks with vibrato, rhythmic patterns of decaying blips - with
continuous random parameters, mixed or concatenated, then faded and scaled. No two clips share
a segment, so any near-duplicate match between them is a false positive.

    from distinct_clips import distinct_clip, KINDS
    x = distinct_clip(17, seed=0)          # float32 mono at SR
"""
from __future__ import annotations

import numpy as np
import scipy.fft

SR = 48_000
#: bump when what a clip number generates changes (benchmark caches are keyed by it).
#: v2: tonal segments follow curved random pitch paths with richer amplitude contours, and
#: every clip has a faint noise bed of its own (v1 made pairs of FM tones and harmonic
#: stacks with near-equal parameters whose straight glides coincided after a time shift:
#: near-copies, 1.1% of 8,000 clips matched one, see docs/filters.md)
VERSION = 2
KINDS = ("chirp", "gated_tone", "filtered_noise", "fm", "harmonic", "rhythm")


def _smooth_envelope(n, rng, depth):
    """A random slow amplitude contour (six random partials under 15 Hz: enough degrees of
    freedom that two clips' contours do not coincide by chance)."""
    t = np.arange(n) / SR
    e = sum(np.sin(2 * np.pi * rng.uniform(0.5, 15) * t + rng.uniform(0, 6.3)) * rng.uniform(0, 1)
            for _ in range(6))
    e = e / (np.max(np.abs(e)) + 1e-9)
    return 1 - depth * (0.5 + 0.5 * e)


def _pitch_path(n, rng, span):
    """A random curved pitch path (log-frequency factor over the segment): slope, curvature
    and a slow wobble. A straight glide is one parameter, and two straight glides of similar
    slope are the same sound shifted in time (v1 of this generator made such near-copies)."""
    u = np.arange(n) / n
    path = span * (rng.uniform(-1, 1) * u + rng.uniform(-1, 1) * u ** 2)
    for _ in range(2):
        path += rng.uniform(0, 0.06) * np.sin(2 * np.pi * rng.uniform(0.5, 6) * u * n / SR
                                              + rng.uniform(0, 6.3))
    return np.exp(path)


def _chirp(n, rng):
    """A sweep along a random curved path (not a straight line: two straight sweeps of one
    slope are the same sound shifted in time), with 1-4 partials and a random contour."""
    u = np.arange(n) / n
    f0 = rng.uniform(150, 3000)
    path = rng.uniform(-1.5, 1.5) * u + rng.uniform(-1, 1) * u ** 2
    path += rng.uniform(0, 0.08) * np.sin(2 * np.pi * rng.uniform(1, 10) * u * n / SR + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f0 * np.exp(path)) / SR
    y = np.zeros(n)
    for h in range(1, int(rng.integers(1, 5)) + 1):
        y += rng.uniform(0.2, 1) / h * np.sin(h * phase + rng.uniform(0, 6.3))
    return y * _smooth_envelope(n, rng, rng.uniform(0.2, 0.9))


def _gated_tone(n, rng):
    t = np.arange(n) / SR
    y = np.sin(2 * np.pi * rng.uniform(150, 5000) * t)
    if rng.random() < 0.5:
        y += 0.5 * np.sin(2 * np.pi * rng.uniform(150, 5000) * t)
    gate = np.zeros(n)
    pos = 0
    while pos < n:                        # random on/off lengths
        on = int(rng.uniform(0.03, 0.3) * SR)
        gate[pos:pos + on] = 1.0
        pos += on + int(rng.uniform(0.02, 0.25) * SR)
    k = int(0.004 * SR)                   # 4 ms ramps, no clicks
    gate = np.convolve(gate, np.ones(k) / k, mode="same")[:n]
    return y * gate


def _filtered_noise(n, rng):
    m = scipy.fft.next_fast_len(n, real=True)      # a fast FFT size, then cut to n
    spec = scipy.fft.rfft(rng.normal(size=m))
    f = np.fft.rfftfreq(m, 1 / SR)
    lo = rng.uniform(80, 8000)
    hi = lo * rng.uniform(1.2, 4.0)
    spec *= np.exp(-0.5 * ((np.log(f + 1) - np.log((lo + hi) / 2)) / np.log(hi / lo)) ** 2)
    y = scipy.fft.irfft(spec, m)[:n]
    t = np.arange(n) / SR
    env = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(0.3, 6) * t + rng.uniform(0, 6.3))
    return y * env


def _fm(n, rng):
    """FM tone whose carrier follows a random curved path and whose modulation index drifts."""
    t = np.arange(n) / SR
    fc, fm, index = rng.uniform(200, 4000), rng.uniform(2, 40), rng.uniform(1, 10)
    carrier = fc * _pitch_path(n, rng, 0.5)
    index_t = index * (1 + rng.uniform(-0.5, 0.5) * np.sin(2 * np.pi * rng.uniform(0.3, 3) * t))
    y = np.sin(2 * np.pi * np.cumsum(carrier) / SR + index_t * np.sin(2 * np.pi * fm * t))
    return y * _smooth_envelope(n, rng, rng.uniform(0.2, 0.8))


def _harmonic(n, rng):
    t = np.arange(n) / SR
    f0 = rng.uniform(60, 800)
    vib = 1 + rng.uniform(0, 0.03) * np.sin(2 * np.pi * rng.uniform(2, 8) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vib * _pitch_path(n, rng, 0.3)) / SR
    y = np.zeros(n)
    for h, a in enumerate(rng.uniform(0.1, 1, int(rng.integers(3, 12))), start=1):
        if f0 * h < 7000:
            y += a / h * np.sin(h * phase + rng.uniform(0, 6.3))
    env = np.minimum(1, t / rng.uniform(0.01, 0.3)) * np.exp(-t * rng.uniform(0, 3))
    return y * env * _smooth_envelope(n, rng, rng.uniform(0.1, 0.6))


def _rhythm(n, rng):
    y = np.zeros(n)
    period = rng.uniform(0.08, 0.5)
    jitter = rng.uniform(0, 0.3)
    pos = rng.uniform(0, period)
    while pos * SR < n:
        s = int(pos * SR)
        m = min(n - s, int(rng.uniform(0.02, 0.2) * SR))
        tt = np.arange(m) / SR
        if rng.random() < 0.5:
            blip = np.sin(2 * np.pi * rng.uniform(100, 6000) * tt)
        else:
            blip = rng.normal(size=m)
        y[s:s + m] += blip * np.exp(-tt * rng.uniform(10, 80)) * rng.uniform(0.3, 1)
        pos += period * (1 + rng.uniform(-jitter, jitter))
    return y


_MAKERS = {"chirp": _chirp, "gated_tone": _gated_tone, "filtered_noise": _filtered_noise,
           "fm": _fm, "harmonic": _harmonic, "rhythm": _rhythm}


def distinct_clip(i: int, seed: int = 0, min_seconds: float = 0.5,
                  max_seconds: float = 3.0, kinds: list | None = None) -> np.ndarray:
    """Clip ``i`` (float32 mono at :data:`SR`, ``min_seconds``..``max_seconds`` long); the
    segment kinds it drew are appended to ``kinds`` when given (a report's labels)."""
    rng = np.random.default_rng([seed, i])
    n = int(rng.uniform(min_seconds, max_seconds) * SR)
    parts = int(rng.integers(1, 4))
    if rng.random() < 0.5 or parts == 1:      # segments one after another
        cuts = np.sort(rng.integers(1, n, parts - 1)) if parts > 1 else np.zeros(0, int)
        bounds = [0, *cuts.tolist(), n]
        y = np.zeros(n)
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a < int(0.05 * SR):     # too short to be a sound of its own
                continue
            kind = KINDS[rng.integers(len(KINDS))]
            seg = _MAKERS[kind](b - a, rng)
            if kinds is not None:
                kinds.append(kind)
            y[a:b] = seg / (np.max(np.abs(seg)) + 1e-9) * rng.uniform(0.3, 1)
    else:                                     # layers mixed
        y = np.zeros(n)
        for _ in range(parts):
            kind = KINDS[rng.integers(len(KINDS))]
            seg = _MAKERS[kind](n, rng)
            if kinds is not None:
                kinds.append("+" + kind)
            y += seg / (np.max(np.abs(seg)) + 1e-9) * rng.uniform(0.2, 1)
    fade = min(n // 4, int(0.01 * SR))
    ramp = np.linspace(0, 1, fade)
    y[:fade] *= ramp
    y[n - fade:] *= ramp[::-1]
    y = y / (np.max(np.abs(y)) + 1e-9)
    # a faint noise bed of its own (35-50 dB under the peak), as every recording has
    y += rng.normal(size=n) * 10 ** (-rng.uniform(35, 50) / 20)
    y = y / (np.max(np.abs(y)) + 1e-9) * rng.uniform(0.1, 0.9)
    return y.astype(np.float32)


def distinct_clips(n: int, seed: int = 0, start: int = 0, **kw):
    """Clips ``start .. start + n - 1`` (a generator: a 100k-clip run never holds them all)."""
    for i in range(start, start + n):
        yield distinct_clip(i, seed, **kw)
