"""Rebuilding a published corpus, offline against the replay server:

- round trip: build the four web sources, ``export-manifest``, ``build --source manifest`` from
  that file alone into a new folder with the same seed -> byte-identical shards; the manifest
  holds no local path and no secret;
- rot: 10% of the links dead and 5% of the audio changed -> the rot report says exactly that per
  source, and changed items are not sharded;
- Freesound ids paced to a daily quota set on the replay, resuming the next simulated day.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crawlers.replay import serve
from crawlers.replay.freesound import next_day, set_quota
from crawlers.replay.laion_lists import rot
from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status
from pipelines.build import BuildConfig, run_build

from .conftest import replay_request

REPO = Path(__file__).resolve().parents[2]
WEB = ("bbc", "epidemic", "freesound", "audiostock")
SIZES = {"bbc": 20, "epidemic": 20, "freesound": 20, "audiostock": 20}
FAST = {"rate": 0, "backoff": 0.01, "max_backoff": 0.05}
KEY = "replay-freesound-key"


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laion_audio", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _sharded_ids(shards: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for tar in shards.rglob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    doc = json.loads(tf.extractfile(m).read())
                    out.setdefault(doc["source"], set()).add(doc["source_id"])
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A replay server, a build of the four web sources from it, and its exported manifest."""
    tmp = tmp_path_factory.mktemp("published")
    old = os.environ.get("FREESOUND_API_KEY")
    os.environ["FREESOUND_API_KEY"] = KEY
    try:
        with serve(seed=0, sizes=SIZES) as (app, base):
            sources = {"bbc": {"api": base, "media": base, **FAST}, "epidemic": {"base": base, **FAST},
                       "freesound": {"api": f"{base}/apiv2", **FAST},
                       "audiostock": {"base": base, **FAST}}
            first = run_build(BuildConfig(out=tmp / "first", sources=sources, inline=True,
                                          samples_per_shard=8, seed=7))
            manifest = tmp / "release" / "laion-audio-replay.parquet"
            r = _cli("export-manifest", "--out", str(tmp / "first"), str(manifest))
            assert r.returncode == 0, r.stderr
            yield {"app": app, "base": base, "tmp": tmp, "first": first, "manifest": manifest}
    finally:
        if old is None:
            os.environ.pop("FREESOUND_API_KEY", None)
        else:
            os.environ["FREESOUND_API_KEY"] = old


@pytest.mark.slow
def test_round_trip_is_byte_identical_and_the_manifest_is_clean(published):
    tmp, manifest = published["tmp"], published["manifest"]
    assert published["first"]["accounting_closes"]
    raw = manifest.read_bytes() + manifest.with_suffix(".md").read_bytes()
    for secret in (KEY.encode(), str(tmp).encode(), str(Path.home()).encode(), b"/tmp/"):
        assert secret not in raw, secret
    table = pq.read_table(manifest)
    assert {"source", "source_id", "url", "texts", "text_augment_t5", "tags", "license", "author",
            "duration", "audio_sha256", "split", "shard"} <= set(table.column_names)
    assert set(table.column("source").to_pylist()) == set(WEB)
    assert all(len(h) == 64 for h in table.column("audio_sha256").to_pylist())
    card = manifest.with_suffix(".md").read_text()
    for word in ("## Licence mix", "## Caption provenance", "laion-audio build --source manifest",
                 "--seed 7", *WEB):
        assert word in card

    second = run_build(BuildConfig(out=tmp / "second", inline=True, samples_per_shard=8, seed=7,
                                   sources={"manifest": {"files": [str(manifest)], **FAST}}))
    assert second["accounting_closes"]
    first_shards, second_shards = _digest(tmp / "first" / "shards"), _digest(tmp / "second" / "shards")
    assert len([k for k in first_shards if k.endswith(".tar")]) >= 8
    assert second_shards == first_shards
    rot_report = second["rot"]
    for source in WEB:   # nothing rotted: everything available and hash-verified
        n = table.filter(__import__("pyarrow.compute").compute.equal(table.column("source"), source)).num_rows
        assert rot_report[source]["available"]["count"] == rot_report[source]["verified"] == n
    # the same export as CSV parses back to the same rows
    r = _cli("export-manifest", "--out", str(tmp / "second"), str(tmp / "release" / "again.csv"))
    assert r.returncode == 0, r.stderr
    from crawlers.manifest import ManifestSource

    recs = {r.key: r for r in ManifestSource(files=[str(tmp / "release" / "again.csv")]).crawl({})}
    recs_pq = {r.key: r for r in ManifestSource(files=[str(manifest)]).crawl({})}
    assert recs == recs_pq


@pytest.mark.slow
def test_rot_report_counts_dead_and_changed_exactly(published):
    app, tmp, manifest = published["app"], published["tmp"], published["manifest"]
    table = pq.read_table(manifest, columns=["source", "source_id"]).to_pylist()
    ids: dict[str, list[str]] = {}
    for row in table:
        ids.setdefault(row["source"], []).append(row["source_id"])
    truth = rot(app, dead=0.10, changed=0.05, seed=5, sources=list(WEB), ids=ids)
    r = _cli("build", "--source", "manifest", "--manifest", str(manifest), "--manifest-rate", "0",
             "--out", str(tmp / "rotted"), "--inline", "--seed", "7", "--samples-per-shard", "8",
             "--skip-eval-filter")   # offline here: no eval sets to fetch
    assert r.returncode == 0, r.stdout + r.stderr
    assert "link rot" in r.stdout
    report = json.loads((tmp / "rotted" / "stats" / "rot.json").read_text())
    for source in WEB:
        t, got = truth[source], report[source]
        n = t["population"]
        assert len(t["dead"]) == round(0.10 * n) >= 1 and len(t["changed"]) == round(0.05 * n) >= 1
        assert got["records"] == n
        assert got["gone"]["count"] == len(t["dead"])
        assert got["changed"]["count"] == len(t["changed"])
        assert got["available"]["count"] == n - len(t["dead"]) - len(t["changed"])
        assert got["gone"]["percent"] == round(100 * len(t["dead"]) / n, 2)
        assert got["blocked"]["count"] == got["not_tried"]["count"] == got["error"]["count"] == 0
    with Ledger(tmp / "rotted" / "ledger", lock=False) as led:
        recs = {r.key: r for r in led.records()}
    sharded = _sharded_ids(tmp / "rotted" / "shards")
    for source in WEB:
        for ident in truth[source]["changed"]:
            rec = recs[(source, ident)]
            assert rec.status == Status.FAILED and rec.failure_code == FailureCode.AUDIO_CHANGED
            assert ident not in sharded.get(source, set())
        for ident in truth[source]["dead"]:
            assert recs[(source, ident)].failure_code == FailureCode.NOT_FOUND
            assert ident not in sharded.get(source, set())
    # the HTML report has the section
    r = _cli("report", "--out", str(tmp / "rotted"))
    assert r.returncode == 0, r.stderr
    page = (tmp / "rotted" / "report" / "index.html").read_text()
    assert "Link rot" in page and "changed" in page


@pytest.mark.slow
def test_freesound_ids_paced_to_a_daily_quota_resume_next_day(tmp_path):
    with serve(seed=0, sizes={"freesound": 20}) as (app, base):
        listing = replay_request("GET", f"{base}/laion/freesound_meta.csv")
        ids_file = tmp_path / "freesound_meta.csv"
        ids_file.write_bytes(listing.content)
        set_quota(app, per_minute=3, per_day=8, minute_seconds=1.0)
        args = ["build", "--source", "manifest", "--manifest", str(ids_file),
                "--manifest-freesound-api", f"{base}/apiv2", "--manifest-rate", "0",
                "--manifest-freesound-per-minute", "6000", "--out", str(tmp_path / "out"),
                "--inline", "--stages", "crawl,fetch"]
        env = {"FREESOUND_API_KEY": KEY}
        left = 20
        for day in range(3):
            r = _cli(*args, env=env)
            left = max(0, left - 8)
            # records left pending by the quota make the run incomplete: exit 1, rerun to resume
            assert r.returncode == (1 if left else 0), r.stdout + r.stderr
            with Ledger(tmp_path / "out" / "ledger", lock=False) as led:
                counts = led.status_counts()
            assert counts.get(Status.FETCHED, 0) == 20 - left, (day, counts)
            assert counts.get(Status.NEW, 0) == left and Status.FAILED not in counts
            if left:
                days = -(-left // 8)
                assert (f"freesound: daily API quota reached; {left} left, ~{days} day"
                        in r.stdout), r.stdout
                assert "(8 requests/day)" in r.stdout
                assert "daily API quota reached" in r.stderr.strip().splitlines()[-1]
            else:
                assert "daily API quota reached" not in r.stdout
            next_day(app)
        usage = app.settings["freesound_usage"]
        assert usage["served"] == 20                  # no id asked for twice
        assert usage["throttled_day"] <= 2 * 4        # one stop per day (plus threads in flight)
        assert usage["throttled_minute"] >= 1         # the per-minute limit was met and waited out
    assert KEY not in (tmp_path / "out" / "stats" / "summary.json").read_text()


@pytest.mark.slow
def test_build_from_the_replays_laion_lists_with_dead_links(tmp_path):
    """LAION's four released lists (as the replay serves them) -> shards in the sites' dataset
    folders, Freesound by id, captions as released, dead links counted exactly as gone."""
    files = {"Epidemic_all_debiased.csv": "epidemic", "audiostock_all.csv": "audiostock",
             "freesound_meta.csv": "freesound", "BBCSoundEffects.csv": "bbc"}
    with serve(seed=0, sizes={"bbc": 10, "epidemic": 10, "freesound": 10, "audiostock": 10}) as (app, base):
        args = []
        for name in files:
            (tmp_path / name).write_bytes(replay_request("GET", f"{base}/laion/{name}").content)
            args += ["--manifest", str(tmp_path / name)]
        truth = replay_request("POST", f"{base}/laion/rot", json={"dead": 0.1, "seed": 4}).json()
        r = _cli("build", "--source", "manifest", *args, "--manifest-media", base,
                 "--manifest-freesound-api", f"{base}/apiv2", "--manifest-rate", "0",
                 "--out", str(tmp_path / "out"), "--inline", "--samples-per-shard", "4",
                 "--skip-eval-filter", env={"FREESOUND_API_KEY": KEY})
        assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "stats" / "rot.json").read_text())
    sharded = _sharded_ids(tmp_path / "out" / "shards")
    for source in files.values():
        assert report[source]["records"] == 10
        assert report[source]["gone"]["count"] == len(truth[source]["dead"]) == 1
        assert report[source]["available"]["count"] == 9
        assert not set(truth[source]["dead"]) & sharded.get(source, set())
        assert (tmp_path / "out" / "shards" / source).is_dir()
    # captions as released, T5 where the file has it
    with tarfile.open(next((tmp_path / "out" / "shards" / "epidemic").rglob("*.tar"))) as tf:
        docs = [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    assert all(d["caption_provenance"]["rule"] == "released" for d in docs)
    assert any("text_augment_t5" in d for d in docs)
    with Ledger(tmp_path / "out" / "ledger", lock=False) as led:
        fs = [x for x in led.records(source="freesound") if x.status == Status.SHARDED]
    assert fs and all("/data/previews/" in x.url and x.license and x.author for x in fs)
