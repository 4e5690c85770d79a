"""Replay of YouTube for AudioSet, in a shape yt-dlp's generic extractor downloads.

- ``GET /youtube/watch?v=<id>``: an HTML page with an HTML5 ``<video><source type="video/webm">``
  pointing at the media URL (what the generic extractor parses); a private video answers 403
  ("Private video"), a removed one 410 ("This video has been removed by the uploader"), an
  unknown id 404 ("Video unavailable"), as YouTube's own pages say it.
- ``GET /youtube/media/<id>.webm``: real WebM/Opus made with ffmpeg from a seeded clip as long
  as the video (window end + 2 s), cached per id and revision.
- ``GET /audioset/balanced_train_segments.csv``, ``/audioset/class_labels_indices.csv``: the
  catalogue as Google's segments CSV (3 comment lines) and its label table, so the demo needs no
  other file.

Items are real AudioSet training rows (windows ending by 40 s, to keep media small): a seeded
sample of ``balanced_train_segments.csv`` when ``../shared/data`` is given, else the built-in
rows below. Training rows, because a build's eval filter drops every ``eval_segments.csv`` id.
Set ``item["status"]`` to ``"private"`` or ``"removed"`` (or ``app.settings["youtube"]``) for
failure tests.
"""
from __future__ import annotations

import csv
import functools
import html
import subprocess

from ._audio import make_audio
from ._server import Catalogue, Reply, ReplayApp, Request

#: Real balanced_train_segments.csv rows and their real label names (class_labels_indices.csv).
#: Training rows, not eval rows: the demo build's eval filter would drop every eval segment.
BUILTIN_ROWS = [
    ("ezmX7g3gflY", 30.0, 40.0, ["/m/013y1f", "/m/03xq_f"]),
    ("hNtB9IeBxCw", 30.0, 40.0, ["/m/07qh7jl", "/m/0l7xg", "/t/dd00077"]),
    ("bxDj6JhIjSo", 30.0, 40.0, ["/m/04rlf", "/m/07q4ntr", "/m/07rwj3x", "/m/09x0r"]),
    ("eYSt2gEcnp8", 30.0, 40.0, ["/m/04rlf", "/m/0b9m1"]),
    ("mUE-IlUrLr8", 30.0, 40.0, ["/m/02dgv", "/m/07mzm6", "/m/09x0r", "/t/dd00125"]),
    ("hb3g7R1jgnA", 10.0, 20.0, ["/m/06hps"]),
    ("7vVUuo4k2X8", 20.0, 30.0, ["/m/015p6", "/m/04rlf", "/m/04s8yn", "/m/07s02z0", "/m/09x0r"]),
]
BUILTIN_LABELS = {
    "/m/013y1f": "Organ", "/m/03xq_f": "Electronic organ", "/m/07qh7jl": "Creak",
    "/m/0l7xg": "Gears", "/t/dd00077": "Mechanisms", "/m/04rlf": "Music", "/m/07q4ntr": "Bellow",
    "/m/07rwj3x": "Whoop", "/m/09x0r": "Speech", "/m/0b9m1": "Harmonic", "/m/02dgv": "Door",
    "/m/07mzm6": "Wheeze", "/t/dd00125": "Inside, small room", "/m/06hps": "Rodents, rats, mice",
    "/m/015p6": "Bird", "/m/04s8yn": "Crow", "/m/07s02z0": "Squeal",
}
#: the CSV the replay serves: a training CSV, the AudioSet source's default kind
SEGMENTS_CSV = "balanced_train_segments.csv"
MAX_END = 40.0


class YouTubeCatalogue(Catalogue):
    name = "youtube"
    default_size = 7

    def setup(self) -> None:
        self.rows = list(BUILTIN_ROWS)
        self.labels = dict(BUILTIN_LABELS)
        base = self.shared / "audioset" if self.shared else None
        if base is not None and (base / SEGMENTS_CSV).is_file():
            from crawlers.audioset import load_label_names, parse_segments
            with open(base / SEGMENTS_CSV, newline="", encoding="utf-8") as fh:
                rows = [r for r in parse_segments(fh) if r[2] <= MAX_END]
            self.rng("rows").shuffle(rows)
            self.rows = rows
            if (base / "class_labels_indices.csv").is_file():
                self.labels = load_label_names(base / "class_labels_indices.csv")

    def make_item(self, rng, index: int) -> dict:
        ytid, start, end, mids = self.rows[index % len(self.rows)]
        if index >= len(self.rows):
            ytid = f"{ytid[:9]}{index // len(self.rows):02d}"
        return {"id": ytid, "title": f"video {ytid}", "start": start, "end": end, "mids": list(mids),
                "seconds": end + 2.0, "status": "public"}

    def change_item(self, rng, item: dict) -> None:
        item["title"] = item["title"] + " (edited)"


@functools.lru_cache(maxsize=64)
def webm_opus(key: str, seconds: float) -> bytes:
    """A real WebM/Opus body (ffmpeg encodes a seeded WAV clip from stdin)."""
    wav, _ = make_audio(key, "wav", seconds, 16000, 1)
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
                           "-c:a", "libopus", "-b:a", "24k", "-f", "webm", "pipe:1"],
                          input=wav, capture_output=True, check=True)
    return done.stdout


def _status(app: ReplayApp, item: dict | None) -> str:
    if item is None:
        return "unknown"
    forced = app.settings.get("youtube", {})
    for status in ("private", "removed"):
        if item["id"] in forced.get(status, ()):
            return status
    return item.get("status", "public")


_ERRORS = {
    "private": (403, "Private video", "Sign in if you've been granted access to this video"),
    "removed": (410, "Video unavailable", "This video has been removed by the uploader"),
    "unknown": (404, "Video unavailable", "This video isn't available anymore"),
}


def register(app: ReplayApp) -> None:
    cat = app.add_catalogue(YouTubeCatalogue)

    def watch(req: Request) -> Reply:
        ytid = req.query.get("v", "")
        with app.lock:
            item = cat.items.get(ytid)
            status = _status(app, item)
        if status != "public":
            code, title, reason = _ERRORS[status]
            return Reply.html(f"<html><head><title>{title} - YouTube</title></head><body>"
                              f"<h1>{title}</h1><p>{html.escape(reason)}</p></body></html>", code)
        media = f"{req.base_url}/youtube/media/{ytid}.webm?rev={item['rev']}"
        return Reply.html(
            f"<!DOCTYPE html><html><head><title>{html.escape(item['title'])} - YouTube</title>"
            f'<meta property="og:title" content="{html.escape(item["title"])}"></head><body>'
            f'<video controls><source src="{media}" type="video/webm"></video></body></html>')

    def media(req: Request) -> Reply:
        ytid = req.match.group("id")
        with app.lock:
            item = cat.items.get(ytid)
            status = _status(app, item)
        if status != "public":
            return Reply.text("", _ERRORS[status][0])
        body = webm_opus(f"youtube/{ytid}/{item['rev']}", float(item["seconds"]))
        return Reply(200, body, "video/webm")

    def segments(req: Request) -> Reply:
        with app.lock:
            items = cat.listing()
        labels = sorted({m for i in items for m in i["mids"]})
        lines = ["# Segments csv created by the laion-audio replay server",
                 f"# num_ytids={len(items)}, num_segs={len(items)}, num_unique_labels={len(labels)}, "
                 f"num_positive_labels={sum(len(i['mids']) for i in items)}",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        lines += [f'{i["id"]}, {i["start"]:.3f}, {i["end"]:.3f}, "{",".join(i["mids"])}"' for i in items]
        return Reply(200, ("\n".join(lines) + "\n").encode(), "text/csv; charset=utf-8")

    def label_table(req: Request) -> Reply:
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["index", "mid", "display_name"])
        for n, (mid, name) in enumerate(sorted(cat.labels.items())):
            writer.writerow([n, mid, name])
        return Reply(200, buf.getvalue().encode(), "text/csv; charset=utf-8")

    app.route("GET", r"^/youtube/watch$", watch)
    app.route("GET", r"^/youtube/media/(?P<id>[A-Za-z0-9_-]+)\.webm$", media)
    app.route("GET", r"^/audioset/balanced_train_segments\.csv$", segments)
    app.route("GET", r"^/audioset/class_labels_indices\.csv$", label_table)
