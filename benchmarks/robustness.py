"""Planted-copy evaluation of content matching: perturbations, a distractor corpus, recall/FP.

Measurement code, not part of the package (nothing in laion_audio/ uses it): a helper module,
not a script, imported as ``import robustness`` with benchmarks/ on the path (as
``distinct_clips``) by the acceptance test (tests/filters/test_content_acceptance.py, the
other filter tests) and by benchmarks/filters.py, so both measure the same thing.

Every perturbation is one the issue names: MP3 128 kbit/s (real ffmpeg/LAME round trip), trims
up to 2 s per end, a 5 s excerpt of a longer clip (and the reverse: the clip inside a longer
upload), gain +-6 dB, resampling through 16-44.1 kHz, white noise 30 dB under the signal, and
all of them at once.

:data:`WARPS` (issue 14) are the re-upload edits that move audio in time or frequency: speed
(resampling: pitch and time together, soxr), pitch shift without tempo change and tempo change
without pitch change (both with librosa's phase vocoder, ``librosa.effects``: pitch = time
stretch then resample back). ffmpeg's ``rubberband`` filter is installed too but measured 20-25
cents off on downward shifts (tests/filters/test_warp.py measures what we plant). They are planted only when asked
(``build_planted_corpus(warps=True)``), from their own random stream, so the default corpus of
the acceptance test is unchanged.
"""
from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

from laion_audio.transcode.audio import read_mono

WORK_SR = 48_000


def load_mono(path: str | Path, sr: int = WORK_SR, max_seconds: float | None = None) -> np.ndarray:
    """The clip (or its first ``max_seconds``) as mono float32 at ``sr``."""
    return read_mono(path, sr, max_seconds)[0]


def mp3_roundtrip(x: np.ndarray, sr: int, bitrate: str = "128k") -> np.ndarray:
    """Encode to MP3 with ffmpeg (libmp3lame) and decode back with libsndfile."""
    wav = io.BytesIO()
    sf.write(wav, x, sr, format="WAV", subtype="FLOAT")
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
                           "-c:a", "libmp3lame", "-b:a", bitrate, "-f", "mp3", "pipe:1"],
                          input=wav.getvalue(), capture_output=True, check=True)
    return read_mono(io.BytesIO(proc.stdout), sr)[0]


def strip_silence(x: np.ndarray, threshold_db: float = -60.0) -> np.ndarray:
    """Drop leading and trailing near-silence (below ``threshold_db`` of the peak). Game music
    files end in tens of seconds of digital zeros; an "eval clip" cut from them would be
    silence, which no content matcher can (or should) match."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak == 0.0:
        return x[:0]
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (threshold_db / 20))
    return x[loud[0]:loud[-1] + 1]


def active_fraction(x: np.ndarray, sr: int = WORK_SR, threshold_db: float = -40.0) -> float:
    """Share of 100 ms frames whose RMS is within ``threshold_db`` of the loudest frame."""
    n = sr // 10
    frames = x[: len(x) // n * n].reshape(-1, n)
    if not len(frames):
        return 0.0
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return float(np.mean(rms > rms.max() * 10 ** (threshold_db / 20))) if rms.max() > 0 else 0.0


def _trim(x, sr, rng):
    dur = len(x) / sr
    cap = min(2.0, 0.2 * dur)
    a, b = rng.uniform(0, cap, 2)
    return x[int(a * sr):len(x) - int(b * sr)]


def _excerpt(x, sr, rng, seconds=5.0):
    n = int(seconds * sr)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start:start + n]


def _gain(db):
    return lambda x, sr, rng: x * np.float32(10 ** (db / 20))


def _resample(x, sr, rng):
    mid = int(rng.choice([16_000, 22_050, 32_000, 44_100]))
    return soxr.resample(soxr.resample(x, sr, mid), mid, sr).astype(np.float32)


def _noise(x, sr, rng, db=-30.0):
    active = x[np.abs(x) > 1e-4]
    rms = float(np.sqrt(np.mean(active ** 2))) if len(active) else 1e-3
    return (x + rng.normal(0, rms * 10 ** (db / 20), len(x))).astype(np.float32)


def speed(factor: float) -> Callable:
    """Play ``factor`` times faster (a turntable/tape speed change: pitch and time together):
    the clip taken as sampled at ``sr * factor`` and resampled to ``sr`` (soxr)."""
    return lambda x, sr, rng: soxr.resample(x, sr * factor, sr).astype(np.float32)


def pitch_shift(cents: float) -> Callable:
    """Pitch up ``cents`` without changing the duration (librosa: phase-vocoder stretch, then
    resampling back)."""
    import librosa

    return lambda x, sr, rng: librosa.effects.pitch_shift(
        x, sr=sr, n_steps=cents / 100, res_type="soxr_hq").astype(np.float32)


def tempo(factor: float) -> Callable:
    """``factor`` times faster without changing the pitch (librosa phase vocoder)."""
    import librosa

    return lambda x, sr, rng: librosa.effects.time_stretch(x, rate=factor).astype(np.float32)


def _combined(x, sr, rng):
    y = _trim(x, sr, rng) * np.float32(10 ** (rng.choice([-6, 6]) / 20))
    return _noise(mp3_roundtrip(_resample(y, sr, rng), sr), sr, rng)


#: name -> (function(x, sr, rng) -> y, minimum clip seconds it applies to). The issue's list;
#: "combined" (all at once) and "inside_longer" (the reverse of an excerpt) are extra, harder
#: cases reported separately.
PERTURBATIONS: dict[str, tuple[Callable, float]] = {
    "mp3_128k": (lambda x, sr, rng: mp3_roundtrip(x, sr), 0.0),
    "trim": (_trim, 0.0),
    "excerpt_5s": (_excerpt, 7.0),
    "gain_+6dB": (_gain(6), 0.0),
    "gain_-6dB": (_gain(-6), 0.0),
    "resample": (_resample, 0.0),
    "noise_-30dB": (_noise, 0.0),
    "combined": (_combined, 0.0),
}
REQUIRED = ("mp3_128k", "trim", "excerpt_5s", "gain_+6dB", "gain_-6dB", "resample", "noise_-30dB")

#: issue 14: edits that move the audio in time and/or frequency (name -> (function, min seconds))
WARPS: dict[str, tuple[Callable, float]] = {
    **{f"speed_{p:+d}%": (speed(1 + p / 100), 0.0) for p in (-6, -3, 3, 6)},
    **{f"pitch_{c:+d}c": (pitch_shift(c), 0.0) for c in (-100, -50, 50, 100)},
    **{f"tempo_{p:+d}%": (tempo(1 + p / 100), 0.0) for p in (-5, 5)},
}
#: clip-length buckets the reports are split by (the warp target holds for clips >= 1.5 s)
LENGTH_BUCKETS = ((0.0, 1.5, "<1.5s"), (1.5, 5.0, "1.5-5s"), (5.0, float("inf"), ">=5s"))


def length_bucket(seconds: float) -> str:
    return next(name for lo, hi, name in LENGTH_BUCKETS if lo <= seconds < hi)


def embed_in_longer(x: np.ndarray, filler: np.ndarray, sr: int, rng) -> np.ndarray:
    """The clip inside a longer upload: 1-4 s of other audio before and after it."""
    pre = filler[: int(rng.uniform(1, 4) * sr)]
    post = filler[-int(rng.uniform(1, 4) * sr):]
    return np.concatenate([pre, x, post]).astype(np.float32)


# --------------------------------------------------------------------------- distractors
def espeak(text: str, voice: str = "en", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speech from espeak-ng at WORK_SR (a real TTS engine: formants, pauses, prosody)."""
    proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                          capture_output=True, check=True)
    return read_mono(io.BytesIO(proc.stdout), WORK_SR)[0]


def texture(kind: str, seconds: float, rng: np.random.Generator, sr: int = WORK_SR) -> np.ndarray:
    """Synthetic sound textures (each call a different take)."""
    return texture_plan(kind, seconds, rng, sr)()


def texture_plan(kind: str, seconds: float, rng: np.random.Generator,
                 sr: int = WORK_SR) -> Callable[[], np.ndarray]:
    """:func:`texture` in two steps: every random draw now (in the order :func:`texture`
    always made them, so a seed gives the same clips), the arithmetic in the returned
    function, which needs no generator and so can run in a thread pool (numpy's FFTs,
    convolutions and ufuncs release the GIL)."""
    n = max(1, int(seconds * 10)) * (sr // 10)    # whole 100 ms steps: fast FFT sizes
    if kind == "noise_band":
        lo = rng.uniform(100, 4000)
        white = rng.normal(size=n)
        hi, rate, phase = lo * rng.uniform(1.5, 4), rng.uniform(0.2, 3), rng.uniform(0, 6)

        def render():
            t = np.arange(n) / sr
            spec = np.fft.rfft(white)
            f = np.fft.rfftfreq(n, 1 / sr)
            spec *= (f > lo) & (f < hi)
            y = np.fft.irfft(spec, n)
            y *= 0.5 + 0.5 * np.sin(2 * np.pi * rate * t + phase)
            return y
    elif kind == "tones":
        step = int(rng.uniform(0.08, 0.4) * sr)
        notes = [(s, rng.uniform(150, 3000), rng.uniform(2, 20)) for s in range(0, n, step)]

        def render():
            y = np.zeros(n)
            for s, f0, decay in notes:
                seg = np.arange(min(step, n - s)) / sr
                y[s:s + len(seg)] = np.sin(2 * np.pi * f0 * seg) * np.exp(-seg * decay)
            return y
    elif kind == "chirps":
        f0, f1 = rng.uniform(200, 4000, 2)
        period = rng.uniform(0.2, 1.0)

        def render():
            t = np.arange(n) / sr
            ph = (t % period) / period
            return np.sin(2 * np.pi * np.cumsum(f0 + (f1 - f0) * ph) / sr) * (1 - ph)
    elif kind == "rain":
        idx = rng.integers(0, n, int(seconds * rng.uniform(20, 200)))
        drops = rng.normal(size=len(idx))
        k = np.exp(-np.arange(int(0.01 * sr)) / (0.002 * sr)) * rng.normal(size=int(0.01 * sr))
        bed = rng.normal(size=n)

        def render():
            y = np.zeros(n)
            y[idx] = drops
            return np.convolve(y, k, mode="same") + 0.05 * bed
    else:  # "hum": harmonic drone with wobble
        f0 = rng.uniform(50, 400)
        phases = [rng.uniform(0, 6) for _ in range(1, 6)]
        wobble = rng.uniform(0.1, 2)

        def render():
            t = np.arange(n) / sr
            y = sum(np.sin(2 * np.pi * f0 * h * t + p) / h for h, p in zip(range(1, 6), phases))
            return y * (0.7 + 0.3 * np.sin(2 * np.pi * wobble * t))
    level = rng.uniform(0.1, 0.9)

    def scaled() -> np.ndarray:
        y = render()
        return (y / (np.max(np.abs(y)) + 1e-9) * level).astype(np.float32)
    return scaled


TEXTURES = ("noise_band", "tones", "chirps", "rain", "hum")


@dataclass
class RecallReport:
    planted: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    distractors: int = 0
    false_positives: int = 0
    candidates_checked: int = 0
    #: (perturbation, eval clip length bucket) -> planted / found
    planted_by_length: dict[tuple[str, str], int] = field(default_factory=dict)
    found_by_length: dict[tuple[str, str], int] = field(default_factory=dict)

    def recall_of(self, names, min_seconds: float = 0.0) -> float:
        """Recall over perturbations ``names``, counting only eval clips >= ``min_seconds``
        (a bucket boundary of :data:`LENGTH_BUCKETS`)."""
        buckets = {b for lo, _, b in LENGTH_BUCKETS if lo >= min_seconds}
        n = sum(v for (k, b), v in self.planted_by_length.items() if k in names and b in buckets)
        f = sum(v for (k, b), v in self.found_by_length.items() if k in names and b in buckets)
        return f / n if n else float("nan")

    @property
    def recall(self) -> float:
        n = sum(self.planted.values())
        return sum(self.found.values()) / n if n else float("nan")

    @property
    def fp_rate(self) -> float:
        return self.false_positives / self.distractors if self.distractors else float("nan")

    def per_perturbation(self) -> dict[str, float]:
        return {k: self.found.get(k, 0) / v for k, v in sorted(self.planted.items())}

    def lines(self) -> list[str]:
        out = [f"{k:>20}: {self.found.get(k, 0)}/{v} = {self.found.get(k, 0) / v:.3f}"
               for k, v in sorted(self.planted.items())]
        buckets = [b for _, _, b in LENGTH_BUCKETS]
        out.append(f"{'by eval clip length':>20}: " + "  ".join(f"{b:>14}" for b in buckets))
        for k in sorted(self.planted):
            cells = []
            for b in buckets:
                n = self.planted_by_length.get((k, b), 0)
                cells.append(f"{self.found_by_length.get((k, b), 0):>5}/{n:<4} " + (
                    f"{self.found_by_length.get((k, b), 0) / n:.2f}" if n else "   -"))
            out.append(f"{k:>20}: " + "  ".join(f"{c:>14}" for c in cells))
        out.append(f"{'overall recall':>20}: {sum(self.found.values())}/{sum(self.planted.values())}"
                   f" = {self.recall:.4f}")
        out.append(f"{'false positives':>20}: {self.false_positives}/{self.distractors}"
                   f" = {self.fp_rate:.4%}")
        return out


SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "a train passes slowly through the station at night",
    "please close the window before the rain starts", "seven ships sailed out of the harbour at dawn",
    "the committee will meet again next thursday afternoon", "she sells sea shells by the sea shore",
    "heavy traffic is expected on the northern motorway", "the old clock in the hall struck twelve",
    "birds were singing in the garden behind the house", "remember to water the plants every morning",
    "the concert was cancelled because of the storm", "a cup of hot tea on a cold winter day",
    "the children played football in the park until dark", "turn left at the second traffic light",
    "the museum opens at nine and closes at five", "he forgot his umbrella on the crowded bus",
    "the recipe calls for two eggs and a spoon of sugar", "thunder rolled across the distant hills",
    "our flight to lisbon leaves from gate fourteen", "the printer on the third floor is out of paper",
]
VOICES = ["en", "en-us", "en-gb-scotland", "en+f3", "en+m3", "de", "fr", "es"]


@dataclass
class PlantedCorpus:
    eval_clips: list[tuple[str, np.ndarray]]          # the "eval set" (index side)
    queries: list[tuple[str, int, np.ndarray]]        # (perturbation or "distractor:kind", eval idx or -1, audio)
    n_real_distractors: int = 0                       # real files, excerpts and speech (not textures)
    sr: int = WORK_SR


def build_planted_corpus(sound_files: list[Path], *, n_eval: int = 100, n_distractors: int = 2000,
                         seed: int = 0, min_eval_seconds: float = 1.0,
                         max_file_seconds: float = 60.0, warps: bool = False) -> PlantedCorpus:
    """Eval clips from real sounds (files, 10 s excerpts of long ones, espeak speech); planted
    copies of each under every perturbation; >= n_distractors distinct other clips (the other
    real files, excerpts of other long files, other speech, different takes of the eval
    sentences, synthetic textures). Files with identical decoded audio count once."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(seed)
    n_speech = max(1, n_eval // 10)
    # the speech and the decodes draw nothing from rng: made up front in threads (espeak-ng
    # runs in its own process; libsndfile and soxr release the GIL), used in the old order
    speech_args = ([(SENTENCES[k], VOICES[k % 3]) for k in range(n_speech)]
                   + [("this is unrelated material before and after the clip", "en-gb-scotland", 150)]
                   + [(SENTENCES[k], VOICES[3 + k % 5], 130 + 7 * k, 30 + k) for k in range(n_speech)]
                   + [(SENTENCES[k], v) for k in range(n_speech, len(SENTENCES)) for v in VOICES[:4]])

    def decoded(p):
        try:
            return strip_silence(load_mono(p, max_seconds=max_file_seconds))
        except Exception:  # noqa: BLE001 - an unreadable file is simply not used
            return None

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        speech = dict(zip(speech_args, pool.map(lambda a: espeak(*a), speech_args)))
        files = sorted(sound_files)
        xs = list(pool.map(decoded, files))
    audio, seen = [], set()
    for p, x in zip(files, xs):
        if x is None:
            continue
        digest = hash(np.round(x[:: max(1, len(x) // 4096)], 3).tobytes())
        if len(x) < 0.3 * WORK_SR or digest in seen or np.max(np.abs(x)) < 1e-3:
            continue
        seen.add(digest)
        audio.append((p.name, x))
    order = rng.permutation(len(audio))
    audio = [audio[i] for i in order]
    long_ = [a for a in audio if len(a[1]) >= 25 * WORK_SR]
    short = [a for a in audio if len(a[1]) < 25 * WORK_SR]
    eval_long, other_long = long_[: len(long_) // 2], long_[len(long_) // 2:]
    eligible = [a for a in short if len(a[1]) >= min_eval_seconds * WORK_SR]
    n_long = min(len(eval_long) * 2, n_eval // 4)
    n_files = n_eval - n_speech - n_long
    eval_files, other_short = eligible[:n_files], [a for a in short if a not in eligible[:n_files]]

    evals: list[tuple[str, np.ndarray]] = list(eval_files)
    for k in range(n_long):                    # 10 s excerpts of long files (two per file)
        name, x = eval_long[k // 2]
        half = len(x) // 2
        for _attempt in range(20):             # an excerpt that is mostly sound, not a pause
            s = int(rng.integers(0, half - 10 * WORK_SR)) + (k % 2) * half
            if active_fraction(x[s:s + 10 * WORK_SR]) >= 0.5:
                break
        evals.append((f"{name}@{s / WORK_SR:.1f}s", x[s:s + 10 * WORK_SR]))
    for k in range(n_speech):
        evals.append((f"espeak:{k}", speech[(SENTENCES[k], VOICES[k % 3])]))

    queries: list[tuple[str, int, np.ndarray]] = []
    filler = speech[("this is unrelated material before and after the clip", "en-gb-scotland", 150)]

    with ThreadPoolExecutor(4) as pool:       # ffmpeg runs in its own process: threads overlap it
        mp3 = list(pool.map(lambda e: mp3_roundtrip(e[1], WORK_SR), evals))
    for i, (_, x) in enumerate(evals):
        dur = len(x) / WORK_SR
        for name, (fn, min_s) in PERTURBATIONS.items():
            if name == "mp3_128k":
                queries.append((name, i, mp3[i]))
            elif dur >= min_s:
                queries.append((name, i, fn(x, WORK_SR, rng)))
        queries.append(("inside_longer", i, embed_in_longer(x, filler, WORK_SR, rng)))

    if warps:                                  # own stream: the default corpus stays as it was
        wrng = np.random.default_rng(seed + 14)
        with ThreadPoolExecutor(4) as pool:
            for name, (fn, min_s) in WARPS.items():
                todo = [i for i, (_, x) in enumerate(evals) if len(x) / WORK_SR >= min_s]
                ys = pool.map(lambda i: fn(evals[i][1], WORK_SR, wrng), todo)
                queries.extend((name, i, y) for i, y in zip(todo, ys))

    distractors: list[tuple[str, np.ndarray]] = [(f"file|{n}", x) for n, x in other_short]
    for n, x in other_long:                    # non-overlapping excerpts of other long files
        step = int(rng.uniform(3, 6) * WORK_SR)
        for s in range(0, len(x) - step, step + WORK_SR):
            distractors.append((f"excerpt|{n}@{s / WORK_SR:.0f}s", x[s:s + step]))
    for k in range(n_speech):                  # other takes of the eval sentences
        distractors.append(("speech_other_take", speech[(SENTENCES[k], VOICES[3 + k % 5], 130 + 7 * k, 30 + k)]))
    for k in range(n_speech, len(SENTENCES)):
        for v in VOICES[:4]:
            distractors.append(("speech", speech[(SENTENCES[k], v)]))
    n_real = len(distractors)
    kinds = TEXTURES
    plans = []
    while len(distractors) + len(plans) < n_distractors:
        kind = kinds[len(plans) % len(kinds)]
        plans.append((f"texture_{kind}", texture_plan(kind, float(rng.uniform(0.5, 8)), rng)))
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:   # the same clips, 2x faster
        distractors.extend(zip([name for name, _ in plans], pool.map(lambda p: p[1](), plans)))
    queries.extend((f"distractor:{kind}", -1, x) for kind, x in distractors)
    return PlantedCorpus(evals, queries, n_real_distractors=n_real)


def shares_waveform(a: np.ndarray, b: np.ndarray, sr: int = WORK_SR, threshold: float = 0.5) -> bool:
    """Independent ground truth for "these two clips contain the same audio": the peak of their
    waveform cross-correlation (8 kHz) against the smaller clip's energy. The matcher never uses
    this (it is O(n log n) per *pair*); the acceptance test uses it to tell a false positive
    from two Debian files that really share a recording (e.g. Oxygen-Sys-Log-In-Short/-Long)."""
    import scipy.signal

    a8 = soxr.resample(a, sr, 8000)
    b8 = soxr.resample(b, sr, 8000)
    c = scipy.signal.fftconvolve(a8, b8[::-1], mode="full")
    e = min(float(np.dot(a8, a8)), float(np.dot(b8, b8)))
    return e > 0 and float(np.max(np.abs(c))) / e >= threshold


def evaluate(corpus: PlantedCorpus, *, matcher_options: dict | None = None,
             warp: bool = False, warp_options: dict | None = None) -> tuple[RecallReport, dict]:
    """Index the eval clips, query every corpus clip, and score the verdicts.

    A planted copy counts as found when its best confirmed match is its own eval clip, or an
    eval clip that :func:`shares_waveform` with it (reported as ``found_via_twin``). A
    distractor with any confirmed match is a false positive unless :func:`shares_waveform`
    shows it really contains that eval clip's audio (reported as ``pool_relations``).
    ``warp``: queries the exact path leaves unmatched go through the warp pass
    (:class:`content_overlap.WarpMatcher`), as the filter stage does."""
    import time

    from laion_audio.filters.content_overlap import ContentMatcher, FingerprintIndex, best_per_query
    from laion_audio.filters.fingerprint import fingerprint

    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    # threads: the FFTs and numba kernels release the GIL (2.3x on 2 cores); same fingerprints
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        eval_fps = list(pool.map(lambda x: fingerprint(x, corpus.sr), [x for _, x in corpus.eval_clips]))
        query_fps = list(pool.map(lambda x: fingerprint(x, corpus.sr), [x for _, _, x in corpus.queries]))
    t1 = time.perf_counter()
    index = FingerprintIndex.for_budget()      # the filter stage's index: its budget and keys
    for i, fp in enumerate(eval_fps):
        index.add(i, fp)
    index.build()
    matcher = ContentMatcher(index, **(matcher_options or {}))
    matches, n_candidates = matcher.match(query_fps, ref_bands=lambda r: eval_fps[r].bands)
    t2 = time.perf_counter()
    best = best_per_query(matches)
    n_warp = 0
    t_wp = t2
    if warp:
        from laion_audio.filters.content_overlap import WarpIndex, WarpMatcher
        from laion_audio.filters.fingerprint import warp_print

        windex = WarpIndex()
        for i, (_, x) in enumerate(corpus.eval_clips):
            windex.add(i, warp_print(x, corpus.sr))
        windex.build()
        rest = [qi for qi in range(len(corpus.queries)) if qi not in best]
        wps = [warp_print(corpus.queries[qi][2], corpus.sr) for qi in rest]
        t_wp = time.perf_counter()
        from laion_audio.filters.fingerprint import pitched_band_features

        wmatches, n_warp = WarpMatcher(windex, **(warp_options or {})).match(
            wps, query_bands=lambda k: query_fps[rest[k]].bands, ref_bands=lambda r: eval_fps[r].bands,
            query_bands_at=lambda k, st: pitched_band_features(corpus.queries[rest[k]][2], corpus.sr, st))
        for k, m in best_per_query(wmatches).items():
            best[rest[k]] = m
    t3 = time.perf_counter()
    report = RecallReport(candidates_checked=n_candidates)
    relations, false_pos, missed, via_twin = [], [], [], []
    twins: dict[tuple[int, int], bool] = {}

    def same_eval_audio(a: int, b: int) -> bool:
        """Two eval clips that are one recording (Oxygen sounds cut from one take, a music
        loop's repeats): a copy of one that matches the other is a found leak."""
        key = (min(a, b), max(a, b))
        if key not in twins:
            twins[key] = shares_waveform(corpus.eval_clips[a][1], corpus.eval_clips[b][1], corpus.sr)
        return twins[key]

    for qi, (label, ev, x) in enumerate(corpus.queries):
        m = best.get(qi)
        if ev >= 0:
            report.planted[label] = report.planted.get(label, 0) + 1
            lb = (label, length_bucket(len(corpus.eval_clips[ev][1]) / corpus.sr))
            report.planted_by_length[lb] = report.planted_by_length.get(lb, 0) + 1
            if m is not None and (m.ref == ev or same_eval_audio(m.ref, ev)):
                report.found[label] = report.found.get(label, 0) + 1
                report.found_by_length[lb] = report.found_by_length.get(lb, 0) + 1
                if m.ref != ev:
                    via_twin.append((label, corpus.eval_clips[ev][0], corpus.eval_clips[m.ref][0]))
            else:
                missed.append((label, corpus.eval_clips[ev][0]))
            continue
        report.distractors += 1
        if m is None:
            continue
        pair = (label, corpus.eval_clips[m.ref][0], round(m.score, 3))
        if shares_waveform(x, corpus.eval_clips[m.ref][1], corpus.sr):
            relations.append(pair)
        else:
            false_pos.append(pair)
    report.false_positives = len(false_pos)
    audio_seconds = sum(len(x) for _, _, x in corpus.queries) / corpus.sr
    extra = {"pool_relations": relations, "false_positive_pairs": false_pos, "missed": missed,
             "found_via_twin": via_twin,
             "fingerprint_seconds": t1 - t0, "match_seconds": t2 - t1,
             "warp_seconds": t3 - t2, "warp_print_seconds": t_wp - t2,
             "warp_match_seconds": t3 - t_wp, "warp_queries": len(rest) if warp else 0,
             "warp_candidates": n_warp,
             "audio_seconds": audio_seconds, "n_queries": len(corpus.queries),
             "hashes_per_second": sum(len(f) for f in query_fps) / max(audio_seconds, 1e-9)}
    return report, extra
