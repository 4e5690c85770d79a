"""Fixtures for the pack/AudioSet/local/report tests (imported by those modules; the shared
conftest.py belongs to the web-sources tests): small real audio in several formats and a
pack tree whose folder and file names are real ones from the GDC bundles and Free To Use Sounds."""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import find_debian_sounds

#: (path inside the pack, expected caption, expected tags). Names from reference/sources.md (folders)
#: and the public GDC 2016 bundle listing (files); the two "Hit 01" share a name in two folders.
PACK_FILES = [
    ("Audionym - The Fly/Insect, Fly - 02 - take off, flying away, landing.wav",
     "Insect, Fly - take off, flying away, landing", ["Audionym - The Fly"]),
    ("Soundmorph - Rupture/Rupture - Concrete_Impact_B02.flac", "Concrete Impact", ["Soundmorph - Rupture"]),
    ("Soundmorph - Rupture/Hit 01.wav", "Hit", ["Soundmorph - Rupture"]),
    ("Soundmorph - Future Weapons 2/Future Weapons 2 - Bio Gun - reload_4.ogg", "Bio Gun - reload",
     ["Soundmorph - Future Weapons 2"]),
    ("Soundmorph - Future Weapons 2/Hit 01.wav", "Hit", ["Soundmorph - Future Weapons 2"]),
    ("Ambiences Amsterdam/003_Amb_External_Amsterdam_Amusementparkt.mp3",
     "Amb External Amsterdam Amusementparkt", ["Ambiences Amsterdam"]),
    ("Sounds Of Vietnam/Traffic, Busy, Close Pass By, Motorbikes, Cars, Honking, Hanoi, Vietnam, Zoom F8n.m4a",
     "Traffic, Busy, Close Pass By, Motorbikes, Cars, Honking, Hanoi, Vietnam", ["Sounds Of Vietnam"]),
    ("DOORWood_Old Barn Door Creak_JDSFX_Farm.aiff", "Old Barn Door Creak", []),
]
PACK_NAME = "Sonniss.com - GDC 2016 - Game Audio Bundle"


@pytest.fixture(scope="session")
def clip() -> tuple[np.ndarray, int]:
    """0.4 s of a real Debian sound (a noise burst only when none is installed)."""
    wavs = [p for p in find_debian_sounds() if p.suffix.lower() in (".wav", ".ogg")]
    if wavs:
        data, sr = sf.read(str(min(wavs, key=lambda p: p.stat().st_size)), dtype="float32", always_2d=True)
        data = data[: int(0.4 * sr)]
        if len(data) >= int(0.1 * sr):
            return data, sr
    rng = np.random.default_rng(0)
    return (rng.standard_normal((17640, 1)) * 0.1).astype("float32"), 44100


def write_audio(path: Path, clip) -> None:
    data, sr = clip
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext == ".m4a":
        wav = path.with_suffix(".tmp.wav")
        sf.write(str(wav), data, sr)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac",
                        "-b:a", "64k", str(path)], check=True)
        wav.unlink()
        return
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3", ".aiff": "AIFF"}[ext]
    sf.write(str(path), data, sr, format=fmt)


@pytest.fixture(scope="session")
def pack_dir(tmp_path_factory, clip) -> Path:
    """An unpacked pack folder named like the real 2016 GDC bundle (plus a non-audio file)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    root = tmp_path_factory.mktemp("packs") / PACK_NAME
    for rel, _, _ in PACK_FILES:
        write_audio(root / rel, clip)
    (root / "Licence.pdf").write_bytes(b"%PDF-1.4 not audio")
    return root


@pytest.fixture(scope="session")
def pack_zip(pack_dir) -> Path:
    out = pack_dir.parent / "zips" / f"{PACK_NAME}.zip"
    out.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(pack_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(pack_dir).as_posix())
    return out


@pytest.fixture(scope="session")
def pack_targz(pack_dir) -> Path:
    out = pack_dir.parent / "tars" / f"{PACK_NAME}.tar.gz"
    out.parent.mkdir(exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(pack_dir.rglob("*")):
            if p.is_file():
                tf.add(p, p.relative_to(pack_dir).as_posix())
    return out
