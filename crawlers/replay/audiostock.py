"""Replay of audiostock.net sound effects: robots.txt, HTML listing and detail pages, MP3s.

The markup is ours (LAION's scraper is unpublished), matching what ``crawlers/audiostock.py``
parses. Item values come from the real Audiostock sample in ``../shared/data/laion_pairs``
when present. ``app.settings["audiostock_anticrawl"]`` switches anti-crawl answers on:
``{"kind": "403" | "captcha" | "encrypted", "every": N, "listing": bool}`` blocks every Nth
item's detail page (or the listing itself)."""
from __future__ import annotations

import html
import json

from ._audio import make_audio
from ._server import Catalogue, Reply, ReplayApp, Request

ROBOTS = "User-agent: *\nDisallow: /mypage/\nDisallow: /cart\n"
#: (title, tags, impression, scene, purpose); the first is LAION's real Audiostock sample.
SAMPLES = [
    ("Bubble 02", ["foam", "Bubble sound", "bubble", "air", "water", "liquid", "boiling",
                   "bukubuku", "pokopoko"], "Horror", "", "Video"),
    ("Cartoon jump", ["cartoon", "jump", "comical", "pyon"], "Cute", "Game", "Game"),
    ("Door chime 03", ["chime", "door", "shop", "pinpon"], "Bright", "Store", "Video"),
    ("Sword swing", ["sword", "swing", "battle", "hyun"], "Cool", "Battle", "Game"),
    ("Typing on keyboard", ["typing", "keyboard", "office", "kata kata"], "Calm", "Office", "Video"),
]
PAGE_SIZE = 6


class AudiostockCatalogue(Catalogue):
    name = "audiostock"
    default_size = 18

    def setup(self) -> None:
        self.samples = list(SAMPLES)
        path = self.shared / "laion_pairs" / "Audiostock__1.json" if self.shared else None
        if path is not None and path.is_file():
            real = json.loads(path.read_text(encoding="utf-8"))
            od = real.get("original_data", {})
            text = real.get("text")
            title = text[0] if isinstance(text, list) else str(text)
            self.samples[0] = (title, list(real.get("tag", [])), od.get("impression", ""),
                               od.get("scene", ""), od.get("purpose", ""))

    def make_item(self, rng, index: int) -> dict:
        title, tags, impression, scene, purpose = self.samples[index % len(self.samples)]
        ident = 1150592 + index * 3
        if index % 2 == 0:
            title = f"{ident} {title}"          # a leading number, as in LAION's csv
        return {"id": ident, "title": title, "tags": list(tags), "impression": impression,
                "scene": scene, "purpose": purpose, "seconds": round(rng.uniform(0.8, 2.5), 3),
                "creator": ["sakura", "nomura_sound", "hybrid"][index % 3], "index": index}

    def change_item(self, rng, item: dict) -> None:
        item["tags"] = item["tags"] + ["new"]


def register(app: ReplayApp) -> None:
    cat = app.add_catalogue(AudiostockCatalogue)
    app.settings.setdefault("audiostock_anticrawl", None)

    def blocked(item: dict | None, listing: bool = False) -> str | None:
        cfg = app.settings.get("audiostock_anticrawl")
        if not cfg:
            return None
        if listing:
            return cfg["kind"] if cfg.get("listing") else None
        every = int(cfg.get("every", 1))
        return cfg["kind"] if item is not None and item["index"] % every == 0 else None

    def challenge() -> Reply:
        return Reply.html("<html><head><title>Just a moment...</title></head><body>"
                          '<form id="challenge-form"><div class="g-recaptcha"></div></form>'
                          "</body></html>")

    def robots(req: Request) -> Reply:
        return Reply.text(app.settings.get("audiostock_robots", ROBOTS))

    def listing(req: Request) -> Reply:
        kind = blocked(None, listing=True)
        if kind == "403":
            return Reply.html("<h1>403 Forbidden</h1>", 403)
        if kind == "captcha":
            return challenge()
        page = max(1, int(req.query.get("page") or 1))
        with app.lock:
            items = cat.listing()
        chunk = items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        lis = "".join(f'<li class="item"><a href="/audio/{i["id"]}">{html.escape(i["title"])}</a></li>'
                      for i in chunk)
        nxt = (f'<a rel="next" href="/se?page={page + 1}">next</a>'
               if page * PAGE_SIZE < len(items) else "")
        return Reply.html(f"<html><body><h1>Sound effects</h1><ul class='results'>{lis}</ul>"
                          f"<nav>{nxt}</nav></body></html>")

    def detail(req: Request) -> Reply:
        with app.lock:
            item = cat.items.get(req.match.group("id"))
        if item is None:
            return Reply.html("<h1>Not found</h1>", 404)
        kind = blocked(item)
        if kind == "403":
            return Reply.html("<h1>403 Forbidden</h1>", 403)
        if kind == "captcha":
            return challenge()
        rev = f"?v={item['rev']}" if item.get("rev") else ""
        src = (f"enc:{item['id'] * 7919:x}AbZ==" if kind == "encrypted"
               else f"/audio/{item['id']}/play{rev}")
        tags = "".join(f"<li><a href='/se?tag={html.escape(t)}'>{html.escape(t)}</a></li>"
                       for t in item["tags"])
        secs = int(round(item["seconds"]))
        rows = "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in
                       (("Impression", item["impression"]), ("Scene", item["scene"]),
                        ("Purpose", item["purpose"]), ("Length", f"0:{secs:02d}"),
                        ("Creator", item["creator"])))
        return Reply.html(
            f"<html><head><title>{html.escape(item['title'])} | Audiostock</title></head><body>"
            f"<h1 class='title'>{html.escape(item['title'])}</h1>"
            f"<div class='player'><audio controls><source src='{html.escape(src)}' "
            f"type='audio/mpeg'></audio></div><ul class='tags'>{tags}</ul><dl>{rows}</dl>"
            "</body></html>")

    def play(req: Request) -> Reply:
        with app.lock:
            item = cat.items.get(req.match.group("id"))
        if item is None:
            return Reply.html("<h1>Not found</h1>", 404)
        body, ctype = make_audio(f"audiostock/{item['id']}/{item.get('rev', 0)}", "mp3",
                                 item["seconds"], 44100, 1)
        return Reply(200, body, ctype)

    app.route("GET", r"^/robots\.txt$", robots)
    app.route("GET", r"^/se/?$", listing)
    app.route("GET", r"^/audio/(?P<id>\d+)/?$", detail)
    app.route("GET", r"^/audio/(?P<id>\d+)/play$", play)
