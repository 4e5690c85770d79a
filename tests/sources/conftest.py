"""Fixtures for the sources area: a replay server per test and fast, polite-enough clients."""
from __future__ import annotations

from pathlib import Path

import pytest

from crawlers.replay import serve

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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
