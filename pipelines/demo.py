"""The README's main job: a small corpus from all eight LAION-Audio-630K sources plus AudioSet,
crawled from the bundled replay server on 127.0.0.1, end to end on local Ray.

The replay serves each site's real formats (JSON APIs, HTML pages, archives, a YouTube-like
media page for yt-dlp), so this is the real code path of every crawler, only pointed at
127.0.0.1 instead of the sites.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

#: the demo's sources, in build order, and the items the replay lists for each (small: the
#: demo should take a minute or two)
DEMO_SIZES = {"bbc": 12, "epidemic": 12, "freesound": 12, "audiostock": 10,
              "free_to_use_sounds": 8, "paramount_motion": 8, "sonniss_game_effects": 8,
              "wesoundeffects": 8, "audioset": 8}
#: our own server on loopback: no need to be polite to it
REPLAY_RATE = 200.0
#: a fixed port: record URLs contain it, so a rerun (resume) must see the same URLs
DEFAULT_PORT = 48765


def shared_data() -> Path | None:
    """``../shared/data`` beside a checkout, when present: real sample values for catalogues."""
    env = os.environ.get("LAION_AUDIO_SHARED")
    candidates = [Path(env) / "data"] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((p for p in candidates if p.is_dir()), None)


def demo_sources(base: str, work: Path) -> dict[str, dict]:
    """Constructor options of every demo source, pointed at the replay server at ``base`` (each
    source says how: ``Source.demo_options``)."""
    from crawlers import get_source

    http = {"rate": REPLAY_RATE, "burst": 20}
    return {name: {**get_source(name).demo_options(base, work, items), **http}
            for name, items in DEMO_SIZES.items()}


@contextlib.contextmanager
def replay_for_demo() -> Iterator[str]:
    """Start the replay server (with the Freesound key it expects) and yield its base URL."""
    from crawlers.replay import serve

    old_key = os.environ.get("FREESOUND_API_KEY")
    os.environ.setdefault("FREESOUND_API_KEY", "replay-freesound-key")
    try:
        port = int(os.environ.get("LAION_AUDIO_REPLAY_PORT", DEFAULT_PORT))
        try:
            server = serve(port, seed=0, sizes=DEMO_SIZES, shared=shared_data())
            app_base = server.__enter__()
        except OSError as exc:
            from laion_audio.errors import UserError

            raise UserError(f"cannot start the replay server on 127.0.0.1:{port} ({exc}); "
                            "set LAION_AUDIO_REPLAY_PORT to a free port") from exc
        try:
            yield app_base[1]
        finally:
            server.__exit__(None, None, None)
    finally:
        if old_key is None:
            os.environ.pop("FREESOUND_API_KEY", None)
