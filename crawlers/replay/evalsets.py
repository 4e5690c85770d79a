"""Replay of an eval-set mirror: ``GET /evalsets/<registry path>`` serves the registry's files
from ../shared/data (the layout ``laion-audio evalsets fetch --mirror`` expects), so the demo
build fetches real eval lists over HTTP, checksums included. Only paths the registry names are
served; without ../shared every path is 404 (the demo then says the eval filter is skipped).
"""
from __future__ import annotations

from ._server import Reply, ReplayApp, Request


def _registry_paths() -> set[str]:
    from laion_audio.filters.evalsets import load_registry

    paths = set()
    for es in load_registry():
        for chain in es.files:
            paths.update(spec.path for spec in chain)
    return paths


def register(app: ReplayApp) -> None:
    allowed = _registry_paths()

    def serve_file(req: Request) -> Reply:
        rel = req.match.group("path")
        if app.shared is None or rel not in allowed or not (app.shared / rel).is_file():
            return Reply(404, b"not in this mirror", "text/plain")
        kind = "application/json" if rel.endswith(".json") else "text/csv; charset=utf-8"
        return Reply(200, (app.shared / rel).read_bytes(), kind)

    app.route("GET", r"^/evalsets/(?P<path>[A-Za-z0-9_./-]+)$", serve_file)
