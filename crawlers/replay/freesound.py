"""Replay of Freesound APIv2: text search (token), previews, and OAuth2 original downloads.

``GET /apiv2/search/text/`` answers ``{"count", "next", "previous", "results"}`` with the
requested ``fields`` only, and 401 without ``Authorization: Token <key>`` (or ``token=``).
Previews live under ``/data/previews/<id // 1000>/<id>_<user id>-hq.mp3`` (also ``-lq.mp3``,
``-hq.ogg``); ``/apiv2/sounds/<id>/download/`` needs ``Authorization: Bearer <oauth token>`` and
serves the original in its own format. The catalogue mixes the cases the caption rule must
handle: HTML descriptions, an empty description, names with dots and brackets, markup in a
name, clips over 3 minutes and clips under 16 kHz."""
from __future__ import annotations

from urllib.parse import urlencode

from ._audio import make_audio
from ._server import Catalogue, Reply, ReplayApp, Request

TOKEN = "replay-freesound-key"
OAUTH_TOKEN = "replay-freesound-oauth"
LICENSES = ["http://creativecommons.org/publicdomain/zero/1.0/",
            "https://creativecommons.org/licenses/by/4.0/",
            "http://creativecommons.org/licenses/by-nc/3.0/",
            "http://creativecommons.org/licenses/sampling+/1.0/"]
#: (name, description, tags)
SAMPLES = [
    ("futuresoundfx-795.mp3", "A short digital glitch.<br>Made with a modular synth.",
     ["glitch", "digital", "synth"]),
    ("Rain_on_window.wav", "Heavy rain on a window pane. Recorded with a Zoom H4n.",
     ["rain", "window", "field-recording"]),
    ("Sample & Hold Me-71-127.wav)", "Sample and hold patch, velocity 71.", ["synth", "modular"]),
    ("dog_bark_close", "", ["dog", "bark", "animal"]),
    ("Kitchen ambience.flac", 'Morning kitchen, <a href="https://example.org">kettle</a> and '
     "radio in the background. More info on my page.", ["kitchen", "ambience"]),
    ("<b>Door</b> creak<script>alert(1)</script>.wav", "<p>Old wooden door &amp; hinge.</p>",
     ["door", "creak"]),
    ("bicycle bell 2.ogg", "Bell of a city bike!", ["bicycle", "bell"]),
    ("thunder_far_away.wav", "Distant thunder during a summer storm. 2 kHz hum removed.",
     ["thunder", "storm", "weather"]),
]


class FreesoundCatalogue(Catalogue):
    name = "freesound"
    default_size = 30

    def make_item(self, rng, index: int) -> dict:
        name, description, tags = SAMPLES[index % len(SAMPLES)]
        ident = 282776 + index * 13
        seconds = round(rng.uniform(0.5, 1.5), 3)
        rate = rng.choice([44100, 48000, 22050])
        if index % 11 == 5:
            rate = 8000                       # under LAION's 16 kHz floor
        if index % 17 == 9:
            seconds = 200.0                   # over LAION's 3-minute cap
        kind = {"mp3": "mp3", "ogg": "ogg", "flac": "flac"}.get(name.rsplit(".", 1)[-1], "wav")
        user = ["ERH", "InspectorJ", "klankbeeld", "Setuniman"][index % 4]
        return {"id": ident, "name": name, "description": description, "tags": list(tags),
                "username": user, "user_id": 1000 + index % 4,
                "license": LICENSES[index % len(LICENSES)], "duration": seconds,
                "samplerate": rate, "channels": 1 + index % 2, "type": kind,
                "created": f"2015-0{1 + index % 9}-1{index % 10}T12:00:00"}

    def change_item(self, rng, item: dict) -> None:
        item["tags"] = item["tags"] + ["edited"]
        item["description"] = (item["description"] + " Updated.").strip()


def _authorised(req: Request, scheme: str, token: str) -> bool:
    header = req.headers.get("Authorization", "")
    return header == f"{scheme} {token}" or (scheme == "Token" and req.query.get("token") == token)


def register(app: ReplayApp) -> None:
    cat = app.add_catalogue(FreesoundCatalogue)
    app.settings.setdefault("freesound_token", TOKEN)
    app.settings.setdefault("freesound_oauth", OAUTH_TOKEN)

    def public(req: Request, item: dict, fields: list[str]) -> dict:
        rev = f"?v={item['rev']}" if item["rev"] else ""
        stem = f"{req.base_url}/data/previews/{item['id'] // 1000}/{item['id']}_{item['user_id']}"
        full = {k: v for k, v in item.items() if k not in ("user_id", "rev")}
        full.update({
            "previews": {"preview-hq-mp3": f"{stem}-hq.mp3{rev}", "preview-lq-mp3": f"{stem}-lq.mp3{rev}",
                         "preview-hq-ogg": f"{stem}-hq.ogg{rev}"},
            "download": f"{req.base_url}/apiv2/sounds/{item['id']}/download/",
            "url": f"{req.base_url}/people/{item['username']}/sounds/{item['id']}/",
            "filesize": int(item["duration"] * item["samplerate"] * 2 * item["channels"]),
        })
        return {k: full[k] for k in fields if k in full}

    def search(req: Request) -> Reply:
        if (refusal := api_refusal(app, req, "Token")) is not None:
            return refusal
        page = max(1, int(req.query.get("page") or 1))
        size = min(150, max(1, int(req.query.get("page_size") or 15)))
        fields = (req.query.get("fields") or "id,name,tags,username,license").split(",")
        q = (req.query.get("query") or "").lower()
        with app.lock:
            items = [i for i in cat.listing()
                     if not q or q in i["name"].lower() or q in " ".join(i["tags"])]
        chunk = items[(page - 1) * size: page * size]
        keep = {k: v for k, v in req.query.items() if k not in ("page", "token")}

        def link(p: int) -> str | None:
            if p < 1 or (p - 1) * size >= len(items):
                return None
            return f"{req.base_url}/apiv2/search/text/?{urlencode({**keep, 'page': p})}"

        return Reply.json({"count": len(items), "next": link(page + 1),
                           "previous": link(page - 1),
                           "results": [public(req, i, fields) for i in chunk]})

    def find(ident: str) -> dict | None:
        with app.lock:
            return cat.items.get(ident)

    def preview(req: Request) -> Reply:
        item = find(req.match.group("id"))
        if item is None:
            return Reply.json({"detail": "Not found."}, 404)
        ext = req.match.group("ext")
        body, ctype = make_audio(f"freesound/{item['id']}/{item['rev']}/preview", ext,
                                 item["duration"], 44100, 1)
        return Reply(200, body, ctype)

    def download(req: Request) -> Reply:
        if (refusal := api_refusal(app, req, "Bearer")) is not None:
            return refusal
        item = find(req.match.group("id"))
        if item is None:
            return Reply.json({"detail": "Not found."}, 404)
        body, ctype = make_audio(f"freesound/{item['id']}/{item['rev']}/original", item["type"],
                                 item["duration"], item["samplerate"], item["channels"])
        return Reply(200, body, ctype,
                     {"Content-Disposition": f'attachment; filename="{item["id"]}.{item["type"]}"'})

    app.route("GET", r"^/apiv2/search/text/?$", search)
    app.route("GET", r"^/data/previews/\d+/(?P<id>\d+)_\d+-(hq|lq)\.(?P<ext>mp3|ogg)$", preview)
    app.route("GET", r"^/apiv2/sounds/(?P<id>\d+)/download/?$", download)
    register_by_id(app, cat, public)


# ---------------------------------------------------------------------------------------------
# Sound instances by id (``GET /apiv2/sounds/<id>/``) and Freesound's request quota.
#
# ``app.settings["freesound_quota"] = {"per_minute": N | None, "per_day": M | None,
# "minute_seconds": 60}`` limits every ``/apiv2/`` request (search, sound, download; previews are
# CDN files and do not count). Over a limit the answer is Freesound's: 429 with a JSON
# ``detail`` naming the rate ("... (20/day)"). The day is simulated: ``next_day(app)`` or
# ``POST /_freesound/next_day`` starts a fresh one; ``POST /_freesound/quota`` sets the limits.

def set_quota(app: ReplayApp, per_minute: int | None = None, per_day: int | None = None,
              minute_seconds: float = 60.0) -> dict:
    with app.lock:
        app.settings["freesound_quota"] = {"per_minute": per_minute, "per_day": per_day,
                                           "minute_seconds": float(minute_seconds)}
        usage = app.settings.setdefault("freesound_usage", _fresh_usage())
        return {**app.settings["freesound_quota"], "day": usage["day"]}


def next_day(app: ReplayApp) -> dict:
    """Simulated midnight: the daily count starts again."""
    with app.lock:
        usage = app.settings.setdefault("freesound_usage", _fresh_usage())
        usage["day"] += 1
        usage["day_count"] = 0
        return dict(usage)


def _fresh_usage() -> dict:
    import time

    return {"day": 0, "day_count": 0, "minute_start": time.monotonic(), "minute_count": 0,
            "throttled_day": 0, "throttled_minute": 0, "served": 0}


def quota_check(app: ReplayApp) -> Reply | None:
    """Count one API request; the 429 Freesound sends when a limit is exceeded, else None."""
    import time

    with app.lock:
        cfg = app.settings.get("freesound_quota") or {}
        usage = app.settings.setdefault("freesound_usage", _fresh_usage())
        now = time.monotonic()
        window = float(cfg.get("minute_seconds") or 60.0)
        if now - usage["minute_start"] >= window:
            usage["minute_start"], usage["minute_count"] = now, 0
        per_day, per_minute = cfg.get("per_day"), cfg.get("per_minute")
        if per_day is not None and usage["day_count"] >= int(per_day):
            usage["throttled_day"] += 1
            reply = Reply.json({"detail": "Request was throttled because of exceeding a request "
                                          f"limit rate ({int(per_day)}/day)"}, 429)
            reply.headers["Retry-After"] = "86400"
            return reply
        if per_minute is not None and usage["minute_count"] >= int(per_minute):
            usage["throttled_minute"] += 1
            wait = max(1, int(round(window - (now - usage["minute_start"]) + 0.5)))
            unit = {60.0: "minute", 1.0: "second"}.get(window, f"{window:g}s")  # a test's short "minute"
            reply = Reply.json({"detail": "Request was throttled because of exceeding a request "
                                          f"limit rate ({int(per_minute)}/{unit})"}, 429)
            reply.headers["Retry-After"] = str(wait)
            return reply
        usage["day_count"] += 1
        usage["minute_count"] += 1
        usage["served"] += 1
        return None


def api_refusal(app: ReplayApp, req: Request, scheme: str) -> Reply | None:
    """Freesound's answer before any work: the 429 of a quota (the request counts), else the
    401 without the right credentials (``Token`` API key or OAuth2 ``Bearer``); None: go on."""
    throttled = quota_check(app)
    if throttled is not None:
        return throttled
    token = app.settings["freesound_token" if scheme == "Token" else "freesound_oauth"]
    if not _authorised(req, scheme, token):
        return Reply.json({"detail": "Authentication credentials were not provided."}, 401)
    return None


def register_by_id(app: ReplayApp, cat: "FreesoundCatalogue", public) -> None:
    """``GET /apiv2/sounds/<id>/?fields=...`` (Token) and the quota control routes."""

    def sound(req: Request) -> Reply:
        if (refusal := api_refusal(app, req, "Token")) is not None:
            return refusal
        with app.lock:
            item = cat.items.get(req.match.group("id"))
        if item is None:
            return Reply.json({"detail": "Not found."}, 404)
        fields = (req.query.get("fields") or
                  "id,name,tags,description,username,license,duration,previews,download,type").split(",")
        return Reply.json(public(req, item, fields))

    def control_next_day(req: Request) -> Reply:
        return Reply.json(next_day(app))

    def control_quota(req: Request) -> Reply:
        body = req.json() or {}
        if not isinstance(body, dict):
            return Reply.json({"detail": "JSON object expected"}, 400)
        try:
            return Reply.json(set_quota(app, body.get("per_minute"), body.get("per_day"),
                                        float(body.get("minute_seconds") or 60.0)))
        except (TypeError, ValueError) as e:
            return Reply.json({"detail": str(e)}, 400)

    def control_usage(req: Request) -> Reply:
        with app.lock:
            return Reply.json(dict(app.settings.setdefault("freesound_usage", _fresh_usage())))

    app.route("GET", r"^/apiv2/sounds/(?P<id>\d+)/?$", sound)
    app.route("POST", r"^/_freesound/next_day$", control_next_day)
    app.route("POST", r"^/_freesound/quota$", control_quota)
    app.route("GET", r"^/_freesound/usage$", control_usage)
