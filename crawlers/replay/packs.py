"""Replay of the pack downloads: ``GET /packs/<source>.zip`` and ``/packs/<source>.tar.gz``.

Each archive is built in memory from real decodable clips (``_audio.make_audio``) in several
formats, under real folder names from reference/sources.md; file names are real ones from the
public GDC 2016 bundle listing and Free To Use Sounds' keyword-list style. Paramount Motion and
We Sound Effects publish no file lists, so their names are made up in the same style.
``/packs/hostile.zip`` adds members with ``../``, absolute paths, a symlink and a zip bomb next
to two good ones.
"""
from __future__ import annotations

import functools
import io
import stat
import tarfile
import zipfile

from ._audio import make_audio
from ._server import Reply, ReplayApp, Request

PACKS = {
    "sonniss_game_effects": ("Sonniss.com - GDC 2016 - Game Audio Bundle", [
        "Audionym - The Fly/Insect, Fly - 02 - take off, flying away, landing.wav",
        "Soundmorph - Rupture/Rupture - Concrete_Impact_B02.flac",
        "Soundmorph - Future Weapons 2/Future Weapons 2 - Bio Gun - reload_4.ogg",
        "Ambiences Amsterdam/003_Amb_External_Amsterdam_Amusementparkt.mp3",
    ]),
    "free_to_use_sounds": ("All In One Bundle", [
        "Sounds Of Vietnam/Traffic, Busy, Close Pass By, Motorbikes, Cars, Honking, Hanoi, Vietnam, Zoom F8n.wav",
        "Sounds Of Malaysia/Ocean, Soft Waves, Splashing, Rocks, Sunset Ambience, Low Tide, Penang, Malaysia.flac",
        "Sounds Of Portugal/Train, Pass By RL, Slow, Accelerate, Railway Clicks, Lisbon, Portugal.mp3",
    ]),
    "paramount_motion": ("Paramount Motion - Odeon Cinematic Sound Effects Pack", [
        "Impacts/Cinematic_Impact_Heavy_01.wav",
        "Whooshes/Cinematic_Whoosh_Fast_03.wav",
        "Risers/Riser_Tension_Long_02.ogg",
    ]),
    "wesoundeffects": ("WeSoundEffects", [
        "Foley/Glass_Break_Small_01.wav",
        "Vehicles/Car_Door_Close_02.flac",
    ]),
}


def _clip(name: str) -> bytes:
    ext = name.rsplit(".", 1)[-1].lower()
    return make_audio(f"packs/{name}", ext, 0.5, 44100, 1)[0]


@functools.lru_cache(maxsize=16)
def pack_archive(source: str, kind: str) -> bytes:
    """The pack as a zip or tar.gz; members live under the pack's top folder."""
    top, names = PACKS[source]
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                zf.writestr(f"{top}/{name}", _clip(name))
            zf.writestr(f"{top}/Licence.txt", "Licence text (not audio)\n")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name in names:
                data = _clip(name)
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def hostile_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Pack/Good_Hit_01.wav", _clip("Good_Hit_01.wav"))
        zf.writestr("../../escape.wav", _clip("escape.wav"))
        zf.writestr("/tmp/absolute.wav", _clip("absolute.wav"))
        link = zipfile.ZipInfo("Pack/link.wav")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("Pack/bomb.wav", bytes(24 << 20))
        zf.writestr("Pack/Good_Whoosh_02.ogg", _clip("Good_Whoosh_02.ogg"))
    return buf.getvalue()


def register(app: ReplayApp) -> None:
    def archive(req: Request) -> Reply:
        source, kind = req.match.group("source"), req.match.group("kind")
        if source == "hostile" and kind == "zip":
            return Reply(200, hostile_zip(), "application/zip")
        if source not in PACKS:
            return Reply.text("no such pack", 404)
        ctype = "application/zip" if kind == "zip" else "application/gzip"
        return Reply(200, pack_archive(source, kind), ctype)

    app.route("GET", r"^/packs/(?P<source>[a-z_]+)\.(?P<kind>zip|tar\.gz)$", archive)
