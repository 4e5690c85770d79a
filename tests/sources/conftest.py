"""Fixtures for the sources area: a replay server per test and fast, polite-enough clients."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from crawlers.replay import serve
from laion_audio.http import HttpClient

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def replay_request(method: str, url: str, **kwargs) -> requests.Response:
    """One request through the HTTP layer's session (its User-Agent) with no retries or checks:
    these tests look at the replay server's raw answers, faults included. A fresh session per
    call, as a bare ``requests`` call opens."""
    client = HttpClient(retries=0)
    try:
        return client.session.request(method, url, **{"timeout": 10, **kwargs})
    finally:
        client.close()


@pytest.fixture
def replay():
    """``(app, base_url)`` of a fresh replay server (real sample values when ../shared is there)."""
    with serve(seed=0, shared=SHARED_DATA if SHARED_DATA.is_dir() else None) as pair:
        yield pair


@pytest.fixture
def fast():
    """HttpClient options for tests: no rate limit, short backoff, seeded jitter."""
    return {"rate": 0, "backoff": 0.01, "max_backoff": 0.05, "seed": 1}


@pytest.fixture
def freesound_env(monkeypatch):
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    monkeypatch.delenv("FREESOUND_OAUTH_TOKEN", raising=False)
