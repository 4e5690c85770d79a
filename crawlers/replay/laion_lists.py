"""LAION's released lists for the replay catalogues, and link rot on demand.

``GET /laion/<file>`` serves the replay's items in the exact column layout of LAION's released
files (reference/sources.md): ``Epidemic_all_debiased.csv`` (url, caption1, caption2,
caption_t5, epidemic_id), ``audiostock_all.csv`` (url, caption), ``freesound_meta.csv``
(audio_filename, caption_1, caption_2, freesound_id, username, freesound_url, license),
``freesound_drive.csv`` (url, caption1, caption2, freesound_id; url empty like ids-only lists)
and ``BBCSoundEffects.csv`` (location, description, secs, category, CDNumber, CDName, tracknum).

A list is a *release*: a snapshot of the catalogue taken the first time any list (or the rot
control) is used, so items that rot away later stay listed, as in LAION's files.

``POST /laion/rot`` with ``{"dead": 0.1, "changed": 0.05, "seed": 1, "sources": [...],
"ids": {source: [ids]}}`` makes exactly ``round(dead * n)`` of each source's released items
answer 404 (removed from the site) and ``round(changed * n)`` others serve different audio at
the same URL (a new audio revision), ``n`` being the released items (or the given ids). The
answer is the ground truth: ``{source: {"population", "dead": [...], "changed": [...]}}``.
"""
from __future__ import annotations

import copy
import csv
import io
import re
from urllib.parse import quote

from ._server import Reply, ReplayApp, Request

FILES = {
    "Epidemic_all_debiased.csv": "epidemic",
    "audiostock_all.csv": "audiostock",
    "freesound_meta.csv": "freesound",
    "freesound_drive.csv": "freesound",
    "BBCSoundEffects.csv": "bbc",
}
_TRAILING_NUMBER = re.compile(r"[\d\s]+$")


def release(app: ReplayApp) -> dict[str, dict[str, dict]]:
    """The released snapshot of every catalogue (taken once)."""
    with app.lock:
        snap = app.settings.get("laion_release")
        if snap is None:
            snap = {name: {k: copy.deepcopy(v) for k, v in cat.items.items()}
                    for name, cat in app.catalogues.items()}
            app.settings["laion_release"] = snap
        return snap


def rot(app: ReplayApp, dead: float = 0.0, changed: float = 0.0, seed: int = 1,
        sources: list[str] | None = None, ids: dict[str, list[str]] | None = None) -> dict:
    """Kill and change exact fractions of the released items; returns the ground truth."""
    snap = release(app)
    out = {}
    with app.lock:
        for name in sources or sorted(FILES.values()):
            if name not in app.catalogues:
                raise KeyError(f"no catalogue {name!r}")
            cat = app.catalogues[name]
            population = sorted(str(i) for i in (ids or {}).get(name, snap.get(name, {})))
            rng = cat.rng("laion-rot", seed)
            rng.shuffle(population)
            n_dead, n_changed = round(dead * len(population)), round(changed * len(population))
            gone, new_audio = population[:n_dead], population[n_dead:n_dead + n_changed]
            for ident in gone:
                cat.items.pop(ident, None)
            for ident in new_audio:
                if ident in cat.items:
                    cat.items[ident]["rev"] = cat.items[ident].get("rev", 0) + 1
            out[name] = {"population": len(population), "dead": sorted(gone),
                         "changed": sorted(new_audio)}
        app.settings.setdefault("laion_rot", []).append(out)
    return out


def _csv(header: list[str], rows: list[list]) -> Reply:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return Reply(200, buf.getvalue().encode("utf-8"), "text/csv; charset=utf-8")


def _sounds_of(tags: list[str]) -> str:
    # LAION's template as released (one tag gives "the sounds of , and X.", a known quirk)
    if not tags:
        return ""
    return f"the sounds of {', '.join(tags[:-1])}, and {tags[-1]}."


def register(app: ReplayApp) -> None:
    def epidemic(base: str, items: list[dict]) -> Reply:
        rows = []
        for it in items:
            slug = quote(it["title"].replace(" ", "_"))
            title = _TRAILING_NUMBER.sub("", it["title"]).strip()
            t5 = (f"A person hears {title.lower()} with {', '.join(it['metadataTags'][:2])}."
                  if it["length"] >= 1.0 and it["metadataTags"] else "")
            rows.append([f"{base}/ES_ITUNES/{slug}/ES_{slug}.mp3", title,
                         _sounds_of(it["metadataTags"]), t5, it["id"]])
        return _csv(["url", "caption1", "caption2", "caption_t5", "epidemic_id"], rows)

    def audiostock(base: str, items: list[dict]) -> Reply:
        rows = [[f"{base}/audio/{it['id']}/play", it["title"].split(" ", 1)[-1]] for it in items]
        return _csv(["url", "caption"], rows)

    def freesound_meta(base: str, items: list[dict]) -> Reply:
        rows = []
        for n, it in enumerate(items):
            name = it["name"].rsplit(".", 1)[0].replace("_", " ") + "."
            first = it["description"].split(".")[0]
            second = f"{first}." if first and "<" not in first and ">" not in first else ""
            licence = it["license"]
            rows.append([f"{n}.flac", name, second, it["id"], it["username"],
                         f"{base}/people/{it['username']}/sounds/{it['id']}/", licence])
        return _csv(["audio_filename", "caption_1", "caption_2", "freesound_id", "username",
                     "freesound_url", "license"], rows)

    def freesound_drive(base: str, items: list[dict]) -> Reply:
        rows = [["", it["name"].rsplit(".", 1)[0].replace("_", " ") + ".", "", it["id"]]
                for it in items]
        return _csv(["url", "caption1", "caption2", "freesound_id"], rows)

    def bbc(base: str, items: list[dict]) -> Reply:
        rows = []
        for n, it in enumerate(items):
            meta = it["additionalMetadata"]
            rows.append([f"{it['id']}.wav", it["description"], f"{it['seconds']:.1f}",
                         meta["originalCategory"], f"EC{n // 20 + 1}", meta["cdName"], n % 20 + 1])
        return _csv(["location", "description", "secs", "category", "CDNumber", "CDName",
                     "tracknum"], rows)

    writers = {"Epidemic_all_debiased.csv": epidemic, "audiostock_all.csv": audiostock,
               "freesound_meta.csv": freesound_meta, "freesound_drive.csv": freesound_drive,
               "BBCSoundEffects.csv": bbc}

    def listing(req: Request) -> Reply:
        name = req.match.group("name")
        source = FILES.get(name)
        if source is None or source not in app.catalogues:
            return Reply.text("not found", 404)
        items = list(release(app)[source].values())
        return writers[name](req.base_url, items)

    def control_rot(req: Request) -> Reply:
        body = req.json() or {}
        if not isinstance(body, dict):
            return Reply.json({"detail": "JSON object expected"}, 400)
        try:
            return Reply.json(rot(app, float(body.get("dead", 0)), float(body.get("changed", 0)),
                                  int(body.get("seed", 1)), body.get("sources"), body.get("ids")))
        except (KeyError, TypeError, ValueError) as e:
            return Reply.json({"detail": str(e)}, 400)

    app.route("GET", r"^/laion/(?P<name>[A-Za-z_]+\.csv)$", listing)
    app.route("POST", r"^/laion/rot$", control_rot)
