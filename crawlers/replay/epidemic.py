"""Replay of Epidemic Sound's sound-effect search: ``/json/search/sfx/?genres=&order=&page=``.

Tracks (``entities.tracks`` keyed by id, ``meta.totalPages``) carry the fields LAION's parquet
kept (title, id, added, length, bpm, isSfx, hasVocals, energyLevel, genres, metadataTags) and the
preview URL under ``stems.full.lqMp3Url``, served as real MP3. About one track in eight is listed
in a second category; some have one tag or none (the template edge cases)."""
from __future__ import annotations

from urllib.parse import quote

from ._audio import make_audio
from ._server import Catalogue, Reply, ReplayApp, Request

#: The site's 43 categories, kept apart from ``crawlers.epidemic.CATEGORIES`` on purpose: the
#: replay plays the site, so a typo in the crawler's list shows up as a missing category in tests.
CATEGORIES = (
    "Aircraft", "Ambience", "Animals", "Birds", "Boats", "Body", "Chairs", "Crashes", "Crowds",
    "Debris", "Doors", "Electric", "Fight", "Fire", "Foley", "Glass", "Gore", "Guns", "Household",
    "Industrial", "Insects", "Lasers", "Machines", "Materials", "Mechanical", "Metal", "Musical",
    "Noise", "Robots", "Rocks", "Storytelling", "Technology", "Telephone", "Tools", "Trains",
    "Vehicles", "Voices", "Water", "Weapons", "Weather", "Whistles", "Whoosh", "Wood",
)
#: (title stem, category, metadataTags); the first is the reference's real example.
SAMPLES = [
    ("Wrestling Crowd", "Crowds", ["wrestling crowd", "mezzanine level", "huge crowd", "p.a.", "loop"]),
    ("Door Slam Heavy", "Doors", ["door", "slam", "heavy", "wood"]),
    ("Rain On Tent", "Weather", ["rain", "tent", "outdoor"]),
    ("Jet Flyby", "Aircraft", ["jet", "flyby"]),
    ("Glass Shatter", "Glass", ["glass"]),
    ("Forest Birds Morning", "Birds", ["birds", "forest", "morning", "chirp"]),
    ("Laser Blast", "Lasers", []),
    ("Train Passing Station", "Trains", ["train", "station", "passing", "horn"]),
    ("Footsteps Gravel", "Foley", ["footsteps", "gravel", "walking"]),
    ("Fire Crackle Campfire", "Fire", ["fire", "crackle"]),
]


class EpidemicCatalogue(Catalogue):
    name = "epidemic"
    default_size = 40
    page_size = 3

    def make_item(self, rng, index: int) -> dict:
        stem, category, tags = SAMPLES[index % len(SAMPLES)]
        ident = 10000 + index * 7 + rng.randrange(7)
        cats = [category]
        if rng.random() < 0.125:
            cats.append(rng.choice([c for c in CATEGORIES[:12] if c != category]))
        seconds = round(rng.uniform(0.5, 1.5), 3)
        return {
            "id": ident, "title": f"{stem} {index // len(SAMPLES) + 1}",
            "added": f"20{18 + index % 5}-0{1 + index % 9}-1{index % 10}T10:00:00",
            "length": seconds, "bpm": 0, "isSfx": True, "hasVocals": False,
            "energyLevel": rng.choice(["low", "medium", "high"]),
            "genres": [{"slug": category.lower(), "displayTag": category}],
            "metadataTags": list(tags), "categories": cats, "seconds": seconds,
        }

    def change_item(self, rng, item: dict) -> None:
        item["metadataTags"] = item["metadataTags"] + ["remastered"]


def register(app: ReplayApp) -> None:
    cat = app.add_catalogue(EpidemicCatalogue)

    def audio_url(req: Request, item: dict) -> str:
        slug = quote(item["title"].replace(" ", "_"))
        rev = f"?v={item['rev']}" if item["rev"] else ""
        return f"{req.base_url}/ES_ITUNES/{slug}/ES_{slug}.mp3{rev}"

    def search(req: Request) -> Reply:
        genre = req.query.get("genres", "")
        page = max(1, int(req.query.get("page") or 1))
        with app.lock:
            items = [i for i in cat.listing() if genre in i["categories"]]
        items.sort(key=lambda i: i["added"], reverse=req.query.get("order") == "desc")
        size = cat.page_size
        chunk = items[(page - 1) * size: page * size]
        tracks = {}
        for item in chunk:
            public = {k: v for k, v in item.items() if k not in ("categories", "seconds", "rev")}
            public["stems"] = {"full": {"lqMp3Url": audio_url(req, item)}}
            tracks[str(item["id"])] = public
        return Reply.json({"entities": {"tracks": tracks},
                           "meta": {"totalPages": -(-len(items) // size), "page": page,
                                    "totalHits": len(items)}})

    def audio(req: Request) -> Reply:
        slug = req.match.group("slug")
        with app.lock:
            match = [i for i in cat.listing() if quote(i["title"].replace(" ", "_")) == slug]
        if not match:
            return Reply.json({"message": "not found"}, 404)
        item = match[0]
        body, ctype = make_audio(f"epidemic/{item['id']}/{item['rev']}", "mp3", item["seconds"],
                                 44100, 1)
        return Reply(200, body, ctype)

    app.route("GET", r"^/json/search/sfx/?$", search)
    app.route("GET", r"^/ES_ITUNES/(?P<slug>[^/]+)/ES_[^/]+\.mp3$", audio)
