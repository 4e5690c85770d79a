"""Fixtures for the shard tests: real Debian sounds as 48 kHz mono FLAC, and records for them.

The FLACs are made here (soundfile + soxr) rather than by the transcode stage so this area tests
the shard writer alone."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from laion_audio.records import Record, Status

MAX_SECONDS = 6.0      # keeps the area fast; long music files are cut to this


def to_flac(src: Path, dest: Path, max_seconds: float = MAX_SECONDS) -> float:
    """Decode ``src``, mix to mono by mean, resample to 48 kHz with soxr, write 16-bit FLAC."""
    info = sf.info(str(src))
    frames = min(info.frames, int(max_seconds * info.samplerate))
    data, sr = sf.read(str(src), frames=frames, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sr != 48000:
        mono = soxr.resample(mono, sr, 48000, quality="HQ")
    mono = np.clip(mono, -1.0, 1.0)
    sf.write(str(dest), mono, 48000, format="FLAC", subtype="PCM_16")
    return len(mono) / 48000


@pytest.fixture(scope="session")
def debian_flacs(debian_sounds, tmp_path_factory) -> list[tuple[Path, Path, float]]:
    """(source file, 48 kHz mono FLAC, seconds) for up to 60 Debian sounds, of every length."""
    out = tmp_path_factory.mktemp("flacs")
    readable = []
    for p in debian_sounds:
        try:
            sf.info(str(p))
        except Exception:
            continue
        readable.append(p)
    step = max(1, len(readable) // 60)
    chosen = readable[::step][:60]
    made = []
    for i, src in enumerate(chosen):
        dest = out / f"{i:03d}.flac"
        seconds = to_flac(src, dest)
        if seconds > 0:
            made.append((src, dest, seconds))
    assert len(made) >= 20
    return made


def make_record(source: str, src: Path, flac: Path, seconds: float, *, n: int = 0,
                t5: str | None = None) -> Record:
    name = src.stem.replace("-", " ").replace("_", " ")
    return Record(
        source=source, source_id=f"{src.parent.name}/{src.name}#{n}", url=str(src),
        title=src.stem, tags=[src.parent.name, src.suffix.lstrip(".")], license="GPL-2+",
        author="Debian", original_data={"package_dir": str(src.parent), "n": n},
        flac_path=str(flac), audio_duration=seconds, texts=[f"the sound of {name}"],
        caption_provenance={"rule": "filename"}, text_augment_t5=t5, status=Status.CAPTIONED)


def pcm_sha256(flac: Path) -> str:
    """What the transcode stage records as ``audio_sha256``: a hash of the output PCM."""
    return hashlib.sha256(sf.read(str(flac), dtype="int16")[0].tobytes()).hexdigest()


@pytest.fixture()
def records(debian_flacs) -> list[Record]:
    """Two datasets; one has T5 captions on every other record and the transcode stage's PCM
    hash (the other comes without it, as records imported from elsewhere may)."""
    out = []
    for i, (src, flac, sec) in enumerate(debian_flacs):
        if i % 3 == 0:
            out.append(make_record("freedesktop", src, flac, sec))
        else:
            rec = make_record("colobot", src, flac, sec,
                              t5=f"a short {src.stem} sound" if i % 2 else None)
            rec.audio_sha256 = pcm_sha256(flac)
            out.append(rec)
    return out
