"""The build and refresh pipelines against the replay server: refresh diffs, the demo main job,
and kill -9 in the middle of a demo build."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crawlers.replay import serve
from laion_audio.ledger import Ledger
from laion_audio.records import Status
from pipelines.build import BuildConfig, run_build

REPO = Path(__file__).resolve().parents[2]


def _audio_hits(app) -> int:
    return sum(n for p, n in app.ok.items() if p.endswith((".mp3", ".ogg", ".wav")))


def test_refresh_pipeline_diff_downloads_and_shards(tmp_path):
    with serve(seed=0, sizes={"epidemic": 40}) as (app, base):
        cfg = BuildConfig(out=tmp_path / "out", sources={"epidemic": {"base": base, "rate": 0,
                                                                      "backoff": 0.01}},
                          inline=True, samples_per_shard=8)
        first = run_build(cfg)
        ep = first["sources"]["epidemic"]
        # (the replay's synthetic tones can be near duplicates of each other: those are dropped)
        assert first["accounting_closes"] and ep["sharded"] == 40 - ep["dropped"]
        diff = app.mutate("epidemic", add=0.10, remove=0.05, change=0.05, change_audio=0.05, seed=3)
        app.ok.clear()
        second = run_build(cfg, refresh=True)
    crawl = next(s for s in second["stages"] if s["stage"] == "crawl:epidemic")
    assert crawl["added"] == len(diff["added"]) == 4
    assert crawl["changed"] == len(diff["changed"])            # audio_changed is a subset
    assert crawl["audio_changed"] == len(diff["audio_changed"])
    assert crawl["vanished"] == len(diff["removed"]) == 2
    # only new and changed audio was downloaded again
    assert _audio_hits(app) == len(diff["added"]) + len(diff["audio_changed"])
    with Ledger(tmp_path / "out" / "ledger", lock=False) as led:
        status = {r.source_id: r.status for r in led.records()}
    assert sorted(k for k, v in status.items() if v == Status.VANISHED) == sorted(diff["removed"])
    ep = second["sources"]["epidemic"]
    assert ep["sharded"] == 40 + 4 - 2 - ep["dropped"]
    assert second["accounting_closes"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _demo(out: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               LAION_AUDIO_REPLAY_PORT=str(port), LAION_AUDIO_CACHE=str(out.parent / "cache"))
    return subprocess.Popen([sys.executable, "-m", "laion_audio", "build", "--out", str(out),
                             "--inline", "--batch-size", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_demo_build_killed_mid_fetch_then_rerun_equals_uninterrupted(tmp_path):
    port = _free_port()
    clean = tmp_path / "clean" / "out"
    clean.parent.mkdir()
    out, _ = _demo(clean, port).communicate(timeout=600)
    assert "accounting closes at every stage" in out, out
    for name in ("bbc", "epidemic", "freesound", "audiostock", "free_to_use_sounds",
                 "paramount_motion", "sonniss_game_effects", "wesoundeffects", "audioset"):
        assert name in out
    # default keep policy: raw downloads are gone once transcoded; only failed ones stay
    with Ledger(clean / "ledger", lock=False) as led:
        kept_raw = {r.audio_path for r in led.records() if r.audio_path.startswith("raw/")}
        assert all(r.status == Status.FAILED for r in led.records() if r.audio_path in kept_raw)
        assert led.select(status=Status.SHARDED).num_rows > 0
    left = {p.relative_to(clean).as_posix() for p in (clean / "raw").rglob("*") if p.is_file()}
    assert left <= kept_raw, sorted(left - kept_raw)[:5]
    assert "disk: " in out and "raw/" in out

    killed = tmp_path / "killed" / "out"
    killed.parent.mkdir()
    proc = _demo(killed, port)
    journal = killed / "ledger.journal"   # beside the ledger folder (docs/ledger.md)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.is_dir() and any("fetch" in p.name for p in journal.glob("*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out, _ = _demo(killed, port).communicate(timeout=600)
    assert "accounting closes at every stage" in out, out
    assert _digest(killed / "shards") == _digest(clean / "shards")
    assert (killed / "ledger" / "ledger.parquet").read_bytes() == (clean / "ledger" / "ledger.parquet").read_bytes()
