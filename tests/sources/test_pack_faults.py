"""Pack inputs under adversarial use (issue 10 items 5, 6, 9): same-named inputs, duplicate
members, credentials in archive URLs, and two builds sharing one pack cache."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import soundfile as sf

import crawlers
from crawlers.replay import serve
from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status
from laion_audio.commands.build import exit_code as verdict
from pipelines.build import BuildConfig, run_build

from .packfixtures import clip, write_audio  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SECRETS = ("S3cr3tT0ken", "deadbeefSIG", "AKIAEXAMPLE", "azSASsig")


def _zip(path: Path, members: list[tuple[str, Path]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, src in members:
            zf.write(src, name)
    return path


def _ledger(out: Path) -> dict:
    with Ledger(out / "ledger", lock=False) as led:
        return {(r.source, r.source_id): r for r in led.records()}


# ------------------------------------------------------------------ item 5
def test_same_named_inputs_and_duplicate_members_each_get_one_row(tmp_path, clip):
    wav = tmp_path / "s.wav"
    write_audio(wav, clip)
    a = _zip(tmp_path / "a" / "bundle.zip", [("x.wav", wav), ("y.wav", wav)])
    b = _zip(tmp_path / "b" / "bundle.zip", [("x.wav", wav), ("z.wav", wav)])
    dup = tmp_path / "c" / "dup.zip"
    dup.parent.mkdir()
    with zipfile.ZipFile(dup, "w") as zf:          # the same member name twice
        zf.write(wav, "d.wav")
        zf.write(wav, "d.wav")
    cfg = BuildConfig(out=tmp_path / "out", inline=True, stages=("crawl",),
                      sources={"wesoundeffects": {"inputs": [str(a), str(b), str(dup)],
                                                  "cache_dir": str(tmp_path / "cache")}})
    summary = run_build(cfg)
    rows = _ledger(cfg.out)
    ids = sorted(sid for _, sid in rows)
    # 2 + 2 + 2 input members = 6 rows; the second bundle gets its own prefix
    assert ids == ["bundle/x.wav", "bundle/y.wav", "bundle~2/x.wav", "bundle~2/z.wav",
                   "dup/d.wav", "dup/d.wav#2"]
    crawl = next(s for s in summary["stages"] if s["stage"] == "crawl:wesoundeffects")
    assert crawl["inputs"] == 6 and crawl["succeeded"] == 5 and crawl["failed"] == 1
    rejected = rows[("wesoundeffects", "dup/d.wav#2")]
    assert rejected.status == Status.FAILED and rejected.failure_code == FailureCode.UNSAFE_PATH
    ok = rows[("wesoundeffects", "bundle~2/x.wav")]
    assert ok.status == Status.NEW and Path(ok.audio_path).is_file()
    assert rows[("wesoundeffects", "bundle/x.wav")].audio_path != ok.audio_path


def test_same_named_urls_get_distinct_prefixes(tmp_path):
    with serve(plugins=["packs"]) as (_, base):
        urls = [f"{base}/packs/wesoundeffects.zip", f"{base}/packs/wesoundeffects.zip?mirror=2"]
        src = crawlers.get_source("wesoundeffects")(inputs=urls, cache_dir=tmp_path / "c",
                                                    http=None)
        records = list(src.crawl({}))
    first = {r.source_id.split("/", 1)[1] for r in records if r.source_id.startswith("wesoundeffects/")}
    second = {r.source_id.split("/", 1)[1] for r in records if r.source_id.startswith("wesoundeffects~2/")}
    assert first and first == second and len(records) == 2 * len(first)


# ------------------------------------------------------------------ item 6
def _grep_tree(root: Path, needles) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return hits


def test_credentials_in_pack_urls_are_never_written_or_logged(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               LAION_AUDIO_CACHE=str(tmp_path / "cache"))
    with serve(plugins=["packs"]) as (_, base):
        url = (f"{base}/packs/wesoundeffects.zip?token={SECRETS[0]}&X-Amz-Signature={SECRETS[1]}"
               f"&X-Amz-Credential={SECRETS[2]}%2F20260101&sig={SECRETS[3]}&part=1")
        args = [sys.executable, "-m", "laion_audio", "-v", "build", "--source", "wesoundeffects",
                "--wesoundeffects-input", url, "--inline", "--out", str(out),
                "--stages", "crawl,fetch,transcode,caption,shard"]
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "/packs/wesoundeffects.zip" in done.stderr          # urllib3's debug line ran
        logged = done.stdout + done.stderr
        assert not [s for s in SECRETS if s in logged]
        assert not _grep_tree(out, SECRETS)                        # ledger, shards, stats
        rows = _ledger(out)
        assert rows and all("token=***" in r.url and "X-Amz-Signature=***" in r.url
                            for r in rows.values())
        assert all(r.original_data["archive_url"].endswith("sig=***&part=1") for r in rows.values())
        assert all(r.status == Status.SHARDED for r in rows.values())

        # resume on a machine without the cache: the real URL comes from the input again
        import shutil
        shutil.rmtree(tmp_path / "cache")
        for r in rows.values():
            src = crawlers.get_source("wesoundeffects")(inputs=[url], cache_dir=tmp_path / "c2")
            assert src.fetch(r, tmp_path / "raw").stat().st_size > 0
            stale = crawlers.get_source("wesoundeffects")(inputs=[], cache_dir=tmp_path / "c3")
            try:
                stale.fetch(r, tmp_path / "raw2")
            except Exception as e:   # a typed failure that says what to do
                assert getattr(e, "code", None) == FailureCode.MISSING_FILE
                assert "pass the same input URL" in str(e)
            else:
                raise AssertionError("fetched without credentials")
            break
    assert not _grep_tree(tmp_path / "c2", SECRETS)


# ------------------------------------------------------------------ item 9
def test_two_builds_sharing_a_pack_cache(tmp_path, clip):
    """Two builds with different --out and one --pack-cache-dir, started while the first is
    extracting: neither deletes the other's extraction, both list every member."""
    wav = tmp_path / "s.wav"
    write_audio(wav, clip)
    n = 1500
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(n):
            zf.write(wav, f"folder{i % 7}/sound {i:04d}.wav")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")

    def start(out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "laion_audio", "build", "--source",
                                 "wesoundeffects", "--wesoundeffects-input", str(archive),
                                 "--pack-cache-dir", str(cache), "--inline", "--out",
                                 str(tmp_path / out), "--stages", "crawl"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("one")
    extracted = cache / "wesoundeffects" / "extracted"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if extracted.is_dir() and any(p.name.startswith(".big-") and ".tmp-" in p.name
                                      for p in extracted.iterdir()):
            break
        time.sleep(0.02)
    second = start("two")
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    for out in ("one", "two"):
        rows = _ledger(tmp_path / out)
        assert len(rows) == n
        assert all(r.status == Status.NEW and Path(r.audio_path).is_file() for r in rows.values())
    assert sf.info(next(iter(_ledger(tmp_path / "two").values())).audio_path).frames > 0


def test_local_pack_paths_never_reach_shards_and_a_moved_archive_is_found(tmp_path, clip):
    wav = tmp_path / "s.wav"
    write_audio(wav, clip)
    home = tmp_path / "home" / "someone" / "Downloads"
    archive = _zip(home / "bundle.zip", [("Doors/Door Slam 01.wav", wav)])
    folder = home / "Unpacked Pack"
    (folder / "Wind").mkdir(parents=True)
    write_audio(folder / "Wind" / "Gust 02.wav", clip)
    cfg = BuildConfig(out=tmp_path / "out", inline=True,
                      stages=("crawl", "fetch", "transcode", "caption", "shard"),
                      sources={"wesoundeffects": {"inputs": [str(archive), str(folder)],
                                                  "cache_dir": str(tmp_path / "cache")}})
    assert verdict(run_build(cfg))[0] == 0
    assert not _grep_tree(tmp_path / "out" / "shards", [str(home), str(tmp_path)])
    urls = sorted(r.url for r in _ledger(cfg.out).values())
    assert urls == ["Unpacked Pack/Wind/Gust 02.wav", "bundle.zip#Doors/Door Slam 01.wav"]

    moved = tmp_path / "elsewhere"                 # the pack moved; the cache is gone
    moved.mkdir()
    import shutil
    shutil.move(str(archive), moved / "bundle.zip")
    shutil.move(str(folder), moved / "Unpacked Pack")
    shutil.rmtree(tmp_path / "cache")
    src = crawlers.get_source("wesoundeffects")(
        inputs=[str(moved / "bundle.zip"), str(moved / "Unpacked Pack")], cache_dir=tmp_path / "c")
    for rec in _ledger(cfg.out).values():
        rec.audio_path = ""
        assert sf.info(str(src.fetch(rec, tmp_path / "raw"))).frames > 0
