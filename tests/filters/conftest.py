"""Fixtures for the filter tests: ../shared/data served over HTTP on 127.0.0.1 as an eval-set
mirror; benchmarks/ on the path for the measurement helpers the tests share with the benchmarks
(``robustness``, ``distinct_clips``)."""
from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="session")
def mirror_url(shared_data):
    """A real HTTP server (http.server in a thread) serving ../shared/data read-only."""
    handler = functools.partial(_QuietHandler, directory=str(shared_data))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def evalsets_cache(mirror_url, tmp_path_factory):
    """The eval-set cache filled through the real download-and-verify path from the mirror."""
    from laion_audio.filters import evalsets

    cache = tmp_path_factory.mktemp("evalsets")
    results = evalsets.fetch(cache, mirror=mirror_url)
    return cache, results
