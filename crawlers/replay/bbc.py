"""Replay of BBC Sound Effects: ``POST /api/sfx/search`` and media ``/wav|mp3/<id>.<ext>``.

Items are real rows of ``BBCSoundEffects.csv`` (a seeded sample) when ``../shared/data`` is
given, else a small built-in list of real rows. The answer shape follows what third-party
clients read (``results[]`` with ``id``, ``description``, ``duration`` in ms,
``categories[].className``, ``additionalMetadata``, ``tags``, ``file``); ``total`` is inferred.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

from ._audio import make_audio
from ._server import Catalogue, Reply, ReplayApp, Request

#: Real rows (location, description, category, CDName) used when shared data is absent.
BUILTIN_ROWS = [
    ("07076051.wav", "Two-stroke petrol engine driving small elevator, start, run, stop.",
     "Engines: Petrol", "Diesel & Petrol Engines"),
    ("07076050.wav", "Single-cylinder Petter engine, start, run stop. (1 1/2 h.p.)",
     "Engines: Diesel", "Diesel & Petrol Engines"),
    ("07062125.wav", "Countryside, March, dusk, 1977 (1B13 ,reprocessed)", "Atmospheres: Dusk",
     "British Rural Backgrounds 1"),
    ("07049094.wav", "City side street, with footsteps, occasional close voices, whistling, dog "
     "barking and passing vehicles.", "Animals: Dogs: Barking", "France - Paris"),
    ("07041107.wav", "Electric Multiple Unit Train passes L-R.", "Trains: Electric Multiple Units",
     "Trains Passing"),
    ("07035066.wav", "100 men, single cheer.", "", "Crowds Cheering (Outdoors)"),
    ("07024224.wav", "Horsedrawn Heavy Cart: One Restless horse. ",
     "Animals: Horses: Horsedrawn Heavy Cart", "Horsedrawn Vehicles: Heavy Cart"),
    ("07008085.wav", "Artillery: Enemy (World War II actuality)", "Guns: Gunfire: Artillery: Enemy",
     "World War II: Ground Warfare"),
]


class BBCCatalogue(Catalogue):
    name = "bbc"
    default_size = 25

    def setup(self) -> None:
        rows = [(r[0], r[1], r[2], r[3]) for r in BUILTIN_ROWS]
        path = self.shared / "bbc" / "BBCSoundEffects.csv" if self.shared else None
        if path is not None and path.is_file():
            rows = _csv_rows(path)
        self.rows = rows
        self.order = list(range(len(rows)))
        self.rng("rows").shuffle(self.order)

    def make_item(self, rng, index: int) -> dict:
        location, description, category, cd_name = self.rows[self.order[index % len(self.rows)]]
        ident = location.rsplit(".", 1)[0]
        if index >= len(self.rows):  # more items asked than rows: make distinct ids
            ident = f"{ident}{index // len(self.rows):02d}"
        seconds = round(rng.uniform(0.8, 3.0), 3)
        return {
            "id": ident, "description": description, "duration": int(seconds * 1000),
            "seconds": seconds, "sample_rate": rng.choice([44100, 48000]),
            "categories": [{"className": category.split(":")[0].strip()}] if category else [],
            "additionalMetadata": {"originalCategory": category, "cdName": cd_name},
            "tags": [w.lower() for w in category.replace(":", " ").split()[:3]],
        }

    def change_item(self, rng, item: dict) -> None:
        item["description"] = item["description"].rstrip() + " (remastered)"


@functools.lru_cache(maxsize=2)
def _csv_rows(path: Path) -> list[tuple[str, str, str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [(r["location"], r["description"], r["category"], r["CDName"])
                for r in csv.DictReader(fh)]


def _public(item: dict) -> dict:
    out = {k: v for k, v in item.items() if k not in ("seconds", "sample_rate", "rev")}
    out["file"] = {"small": {"name": f"{item['id']}.mp3"}, "original": {"name": f"{item['id']}.wav"}}
    return out


def register(app: ReplayApp) -> None:
    cat = app.add_catalogue(BBCCatalogue)

    def search(req: Request) -> Reply:
        body = req.json()
        criteria = body.get("criteria") if isinstance(body, dict) else None
        if not isinstance(criteria, dict):
            return Reply.json({"message": "criteria required"}, 400)
        start, size = int(criteria.get("from") or 0), int(criteria.get("size") or 10)
        query = str(criteria.get("query") or "").lower()
        with app.lock:
            items = [i for i in cat.listing() if query in i["description"].lower()]
        return Reply.json({"total": len(items),
                           "results": [_public(i) for i in items[start:start + size]]})

    def media(req: Request) -> Reply:
        fmt, ident = req.match.group("fmt"), req.match.group("id")
        item = cat.items.get(ident)
        if item is None:
            return Reply.json({"message": "not found"}, 404)
        body, ctype = make_audio(f"bbc/{ident}/{item['rev']}", fmt, item["seconds"],
                                 item["sample_rate"], 2)
        return Reply(200, body, ctype)

    app.route("POST", r"^/api/sfx/search$", search)
    app.route("GET", r"^/(?P<fmt>wav|mp3)/(?P<id>[0-9A-Za-z_-]+)\.(wav|mp3)$", media)
