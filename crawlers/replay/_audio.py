"""Real, decodable audio bodies for the replay server, generated in memory and cached.

Each item is its own seeded scene (by its key): a few events a second at random onsets, each
a chirp, a harmonic tone, a gated tone or a band of noise with random frequencies, lengths,
envelopes and levels, over a faint noise floor. Two items share neither bytes nor sound (the
near-duplicate filter finds no match between them, where one tone plus noise per item made
half of a 9,000-item catalogue look alike), and a changed revision has different audio. MP3 goes through libsndfile's MPEG encoder (libsndfile
>= 1.1), so an ``.mp3`` URL really serves MPEG audio, not WAV with a misleading type."""
from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
import soundfile as sf

FORMATS = {
    # ext: (soundfile format, subtype, content type)
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
}


def synth_scene(seed: int, seconds: float, sample_rate: int, channels: int = 1) -> np.ndarray:
    """A distinct clip for ``seed``: float32 ``[n, channels]``, peak 0.8."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    out = np.zeros(n, np.float64)
    nyquist = sample_rate / 2
    top = min(7000.0, nyquist * 0.8)
    n_events = max(3, int(round(seconds * rng.uniform(5.0, 9.0))))
    for _ in range(n_events):
        length = min(n, max(16, int(rng.uniform(0.06, 0.7) * sample_rate)))
        start = int(rng.integers(0, max(1, n - length + 1)))
        t = np.arange(length) / sample_rate
        attack = rng.uniform(0.002, 0.05)
        env = np.minimum(1.0, t / attack) * np.exp(-t * rng.uniform(0.5, 12.0))
        kind = rng.integers(0, 4)
        f0 = float(np.exp(rng.uniform(np.log(120.0), np.log(top))))
        if kind == 0:      # chirp, up or down
            f1 = float(np.exp(rng.uniform(np.log(120.0), np.log(top))))
            sig = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * max(t[-1], 1e-3))))
        elif kind == 1:    # harmonic tone with a random spectrum
            f0 = min(f0, 900.0)
            sig = np.zeros(length)
            for h in range(1, int(rng.integers(2, 7))):
                if f0 * h < nyquist * 0.9:
                    sig += rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3))
        elif kind == 2:    # gated tone
            gate = (np.sin(2 * np.pi * rng.uniform(3.0, 18.0) * t) > rng.uniform(-0.3, 0.5))
            sig = gate * np.sin(2 * np.pi * f0 * t)
        else:              # band of noise
            spec = np.fft.rfft(rng.standard_normal(length))
            freqs = np.fft.rfftfreq(length, 1 / sample_rate)
            width = f0 * rng.uniform(0.1, 0.6)
            spec[(freqs < f0 - width) | (freqs > f0 + width)] = 0
            sig = np.fft.irfft(spec, length)
            sig /= max(1e-9, np.abs(sig).max())
        out[start:start + length] += rng.uniform(0.15, 0.6) * env * sig
    out += 0.002 * rng.standard_normal(n)
    out *= 0.8 / max(1e-9, np.abs(out).max())
    data = np.repeat(out[:, None], channels, axis=1)
    if channels > 1:   # not quite the same on every channel
        data += 0.002 * rng.standard_normal((n, channels))
    return data.astype(np.float32)


@functools.lru_cache(maxsize=512)
def make_audio(key: str, ext: str = "wav", seconds: float = 1.0, sample_rate: int = 44100,
               channels: int = 1) -> tuple[bytes, str]:
    """``(bytes, content_type)`` of a short seeded clip in format ``ext``."""
    fmt, subtype, ctype = FORMATS[ext]
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    data = synth_scene(seed, seconds, sample_rate, channels)
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue(), ctype
