"""Real, decodable audio bodies for the replay server, generated in memory and cached.

Each item gets its own tone + noise (seeded by its key), so two items never share bytes and a
changed revision has different audio. MP3 goes through libsndfile's MPEG encoder (libsndfile
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


@functools.lru_cache(maxsize=512)
def make_audio(key: str, ext: str = "wav", seconds: float = 1.0, sample_rate: int = 44100,
               channels: int = 1) -> tuple[bytes, str]:
    """``(bytes, content_type)`` of a short seeded clip in format ``ext``."""
    fmt, subtype, ctype = FORMATS[ext]
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n, dtype=np.float64) / sample_rate
    freq = 110.0 + (seed % 2000)
    tone = 0.3 * np.sin(2 * np.pi * freq * t) * np.minimum(1.0, 8 * t)  # short fade-in
    data = tone[:, None] + 0.02 * rng.standard_normal((n, channels))
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue(), ctype
