"""Hostile answers for safety tests: lying sizes, endless bodies, enormous pages.

``/hostile/claim-2gb.wav`` claims a 2 GB Content-Length (and hangs up after a few bytes),
``/hostile/endless.wav`` streams audio bytes with no length until the client gives up,
``/hostile/huge-page.json`` and ``/hostile/huge-page.html`` stream a page of ~64 MB."""
from __future__ import annotations

from typing import Iterator

from ._audio import make_audio
from ._server import Reply, ReplayApp, Request

CHUNK = 1 << 16


def _repeat(head: bytes, fill: bytes, total: int) -> Iterator[bytes]:
    yield head
    sent = len(head)
    block = (fill * (CHUNK // max(1, len(fill)) + 1))[:CHUNK]
    while sent < total:
        yield block
        sent += len(block)


def register(app: ReplayApp) -> None:
    def claim(req: Request) -> Reply:
        body, ctype = make_audio("hostile/claim", "wav", 0.1, 16000, 1)
        return Reply(200, body, ctype, {"Content-Length": str(2 * 1024**3)})

    def endless(req: Request) -> Reply:
        head, ctype = make_audio("hostile/endless", "wav", 0.1, 16000, 1)
        return Reply(200, _repeat(head, b"\x00\x01", 1 << 40), ctype)

    def huge_json(req: Request) -> Reply:
        return Reply(200, _repeat(b'{"results": ["', b"x", 64 << 20), "application/json")

    def huge_html(req: Request) -> Reply:
        return Reply(200, _repeat(b"<html><body>", b"<div>", 64 << 20), "text/html")

    app.route("GET", r"^/hostile/claim-2gb\.wav$", claim)
    app.route("GET", r"^/hostile/endless\.wav$", endless)
    app.route("GET", r"^/hostile/huge-page\.json$", huge_json)
    app.route("GET", r"^/hostile/huge-page\.html$", huge_html)
