"""Helpers for the audio tests: signals, encoders (soundfile and the ffmpeg CLI), FLAC checks."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg CLI is not installed")


def sine(rate: int, seconds: float, channels: int = 1, freq: float = 1000.0,
         amp: float = 0.5) -> np.ndarray:
    """float64 (frames, channels); channel c carries amp*(c+1)/channels so the mean is known."""
    t = np.arange(int(round(rate * seconds))) / rate
    base = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([base * (c + 1) / channels for c in range(channels)], axis=1)


def write_sf(path: Path, data: np.ndarray, rate: int, subtype: str, fmt: str | None = None) -> Path:
    sf.write(str(path), data, rate, subtype=subtype, format=fmt)
    return path


def ffmpeg_encode(src: Path, dst: Path, *args: str) -> Path:
    """Encode ``src`` with the real ffmpeg CLI (for formats libsndfile cannot write)."""
    subprocess.run([FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-i", str(src), *args,
                    str(dst)], check=True)
    return dst


def read_flac(path: Path) -> tuple[np.ndarray, sf._SoundFileInfo]:
    info = sf.info(str(path))
    data, _ = sf.read(str(path), dtype="float64")
    return data, info


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (partial or not): failure tests expect none."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
