"""The build pipeline end to end on real Debian sound files: inline, local Ray, a two-node Ray
cluster, and kill -9 + rerun. Shards and ledgers are compared byte for byte."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from laion_audio.ledger import Ledger
from laion_audio.records import Status
from laion_audio.shards.members import audio_in_shards, open_audio
from pipelines.build import BuildConfig, run_build

REPO = Path(__file__).resolve().parents[2]


def _corpus(debian_sounds: list[Path], root: Path, n: int = 14) -> Path:
    """A folder like a user's: sub-folders, a caption table, a LAION sidecar, odd names, junk."""
    src = root / "in"
    (src / "alerts").mkdir(parents=True)
    (src / "games").mkdir()
    short = sorted(debian_sounds, key=lambda p: p.stat().st_size)[:n]
    for i, p in enumerate(short):
        sub = "alerts" if i % 2 else "games"
        name = p.name if i != 3 else f"it's a \"quoted\" ünïcode name{p.suffix}"
        shutil.copy(p, src / sub / name)
    # the same file name in two folders: two records
    shutil.copy(short[0], src / "alerts" / "same.ogg" if short[0].suffix == ".ogg" else src / "alerts" / f"same{short[0].suffix}")
    shutil.copy(short[1], src / "games" / f"same{short[0].suffix}")
    (src / "captions.csv").write_text(f"file_name,caption\nalerts/{short[1].name},a short alert chime\n")
    # two long tracks that sort last: the kill -9 test needs a transcode still running
    (src / "zz-long").mkdir()
    for p in sorted(debian_sounds, key=lambda p: p.stat().st_size)[-2:]:
        shutil.copy(p, src / "zz-long" / p.name)
    (src / "games" / "broken.wav").write_bytes(b"this is not audio at all")
    (src / "games" / "empty.flac").write_bytes(b"")
    return src


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _config(src: Path, out: Path, **kw) -> BuildConfig:
    base = dict(out=out, sources={"local": {"input": str(src)}}, samples_per_shard=4, batch_size=2,
                workers=2)
    base.update(kw)
    return BuildConfig(**base)


@pytest.fixture(scope="module")
def corpus(debian_sounds, tmp_path_factory) -> Path:
    return _corpus(debian_sounds, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def inline_build(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("inline") / "out"
    summary = run_build(_config(corpus, out, inline=True))
    return out, summary


def test_inline_build_accounts_for_every_file(inline_build, corpus):
    out, summary = inline_build
    files = [p for p in corpus.rglob("*") if p.is_file() and p.suffix != ".csv"]
    assert summary["records"] == len(files)
    assert summary["accounting_closes"]
    by_status = summary["by_status"]
    assert by_status.get(Status.FAILED, 0) == 2
    assert by_status.get(Status.SHARDED, 0) == len(files) - 2 - by_status.get(Status.DROPPED, 0)
    failures = summary["failures"]
    assert sum(failures.values()) == 2 and all(k.startswith("transcode:") for k in failures)
    with Ledger(out / "ledger", lock=False) as led:
        recs = {r.source_id: r for r in led.records()}
    assert recs["games/empty.flac"].failure_code and recs["games/broken.wav"].failure_code
    # the same sound under two names: one copy is kept, the other dropped with the kept id
    # (Debian ships some identical sounds under two names too: those are found as well)
    exact = [r for r in recs.values() if r.filter_reason == "duplicate_exact"]
    planted = {k for k in recs if k.endswith("/same" + Path(k).suffix)}
    assert len(planted) == 2 and len(exact) >= 2
    assert all(r.status == Status.DROPPED for r in exact)
    assert all(any(k in (r.source_id, r.duplicate_of.split("/", 1)[1]) for r in exact) for k in planted)
    for r in exact:
        kept = recs[r.duplicate_of.split("/", 1)[1]]
        assert kept.status == Status.SHARDED and kept.audio_sha256 == r.audio_sha256
    for r in recs.values():
        if r.status == Status.SHARDED:
            assert not os.path.isabs(r.flac_path)            # work folder is relocatable
            # the keep policy deleted the FLAC once its tar was published: read it there
            assert not (out / r.flac_path).exists()
            info = sf.info(open_audio(audio_in_shards(str(out / r.flac_path), str(out / "shards"),
                                                      r.shard, r.source, r.source_id)))
            assert info.samplerate == 48000 and info.channels == 1
    tars = sorted((out / "shards").rglob("*.tar"))
    assert tars and (out / "shards" / "local").is_dir()
    # the published stats name no folder of this machine (the input folder, the work folder)
    tmp_root = str(out.parent.parent)
    for name in ("build.json", "summary.json", "rot.json"):
        text = (out / "stats" / name).read_text()
        assert tmp_root not in text and str(corpus) not in text, (name, text[:2000])
    assert '"shards": "shards"' in (out / "stats" / "summary.json").read_text()


def test_rerun_is_a_noop(inline_build, corpus):
    out, _ = inline_build
    before = _tree_digest(out / "shards")
    ledger_before = (out / "ledger" / "ledger.parquet").read_bytes()
    summary = run_build(_config(corpus, out, inline=True))
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["transcode"]["inputs"] == 0 and stages["fetch:local"]["inputs"] == 0
    assert _tree_digest(out / "shards") == before
    assert (out / "ledger" / "ledger.parquet").read_bytes() == ledger_before


@pytest.mark.slow
def test_local_ray_gives_the_same_shards_and_ledger(inline_build, corpus, tmp_path):
    out, _ = inline_build
    ray_out = tmp_path / "out"
    summary = run_build(_config(corpus, ray_out, workers=2))
    assert summary["accounting_closes"]
    assert _tree_digest(ray_out / "shards") == _tree_digest(out / "shards")
    assert (ray_out / "ledger" / "ledger.parquet").read_bytes() == (out / "ledger" / "ledger.parquet").read_bytes()


def _cli(args: list[str], env: dict | None = None) -> subprocess.Popen:
    env = dict(env or os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "laion_audio", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_kill9_mid_transcode_then_rerun_equals_uninterrupted(inline_build, corpus, tmp_path):
    out, _ = inline_build
    killed = tmp_path / "out"
    args = ["build", "--source", "local", "--input", str(corpus), "--out", str(killed),
            "--samples-per-shard", "4", "--batch-size", "1", "--workers", "1", "--inline",
            "--skip-eval-filter"]   # like the run_build reference: no eval sets in this test
    proc = _cli(args)
    journal = killed / "ledger.journal"   # beside the ledger folder (docs/ledger.md)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_dir() and len(list(journal.glob("*transcode*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "build finished before it could be killed: " + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from laion_audio.ledger import Ledger
    done_before = Ledger(killed / "ledger", lock=False).count(status="transcoded")
    assert done_before >= 3
    assert not (killed / "shards").exists() or not list((killed / "shards").rglob("*.tar"))
    proc = _cli(args)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert _tree_digest(killed / "shards") == _tree_digest(out / "shards")
    assert (killed / "ledger" / "ledger.parquet").read_bytes() == (out / "ledger" / "ledger.parquet").read_bytes()
    # finished work was not redone: the rerun transcoded only what the killed run had not
    import json
    stats = {s["stage"]: s for s in json.loads((killed / "stats" / "build.json").read_text())}
    total = sum(1 for p in corpus.rglob("*") if p.is_file() and p.suffix != ".csv")
    assert stats["transcode"]["inputs"] <= total - done_before
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(ray_bin: Path, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """One Ray node of our own: `ray start --block` in its own session, so the test stops
    exactly the processes it started (SIGTERM to it tears its node down), never other
    people's Ray on a shared machine."""
    fh = log.open("w")
    proc = subprocess.Popen([str(ray_bin), "start", "--block", *args], env=env, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    _stop_node(proc)
    pytest.fail("ray node did not start: " + log.read_text(errors="replace")[-2000:])


def _stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()                       # Ray's SIGTERM handler stops its node
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)    # anything of that node's session still alive
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.slow
def test_two_node_ray_cluster_gives_the_same_shards(inline_build, corpus, tmp_path):
    """Two nodes sharing one filesystem (the supported multi-node layout, docs/quickstart.md):
    the work folder is at the same path on every node."""
    out, _ = inline_build
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray CLI not installed next to this python")
    port = _free_port()
    # a throwaway loopback cluster: no token (real clusters share one: `ray get-auth-token`)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    import tempfile
    tmp_ray = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_ray_node(ray_bin, ["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                                         "--include-dashboard=false", f"--temp-dir={tmp_ray}",
                                         *common], env, tmp_path / "head.log"))
        nodes.append(_ray_node(ray_bin, [f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                         *common], env, tmp_path / "worker.log"))
        cluster_out = tmp_path / "out"
        proc = _cli(["build", "--source", "local", "--input", str(corpus), "--out", str(cluster_out),
                     "--samples-per-shard", "4", "--batch-size", "2", "--workers", "2",
                     "--ray-address", f"127.0.0.1:{port}", "--skip-eval-filter"], env=env)
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output
        assert _tree_digest(cluster_out / "shards") == _tree_digest(out / "shards")
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        shutil.rmtree(tmp_ray, ignore_errors=True)
    assert all(n.poll() is not None for n in nodes)


def test_reports_written_by_the_standalone_commands_name_no_folder_of_this_machine(
        inline_build, corpus, tmp_path):
    """``shard --report``, ``filter --report`` and ``verify --json`` are published beside the
    shards: like the build's stats, they name the work folder ``.`` and a shard root by its name."""
    import json

    from laion_audio.cli import main

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    evalset = tmp_path / "eval-clips"
    evalset.mkdir()
    shutil.copy(next(p for p in sorted(corpus.rglob("*.ogg"))), evalset / "clip.ogg")
    shards_elsewhere = tmp_path / "published"
    reports = tmp_path / "reports"
    reports.mkdir()
    assert main(["filter", "--out", str(out), "--eval-audio", f"mine={evalset}",
                 "--evalsets-cache", str(tmp_path / "no-cache"),
                 "--report", str(reports / "filter.json")]) == 0
    assert main(["shard", "--out", str(out), "--shards-to", str(shards_elsewhere),
                 "--report", str(reports / "shard.json")]) == 0
    assert main(["verify", "--shards-to", str(shards_elsewhere),
                 "--json", str(reports / "verify.json")]) == 0
    for name in ("filter.json", "shard.json", "verify.json"):
        text = (reports / name).read_text()
        json.loads(text)
        assert str(tmp_path) not in text and str(corpus) not in text, (name, text[:1500])
    verified = json.loads((reports / "verify.json").read_text())
    assert verified["out"] == "published" and verified["ok"]
    # the keep policy had released every FLAC into out/shards: they were copied back (each
    # checked) and the new root holds every sharded clip, not a requeue of the whole corpus
    sharded = [r for r in Ledger(out / "ledger").records() if r.status == Status.SHARDED]
    assert sharded and verified["totals"]["samples"] == len(sharded)
    assert all((out / r.flac_path).is_file() for r in sharded)
    assert not (out / "audio" / "RELEASED_TO").exists()


def test_shard_to_a_new_root_when_the_old_tars_are_gone_requeues_and_exits_1(
        inline_build, tmp_path, capsys):
    """Released FLACs whose tars were deleted cannot be re-sharded: the records go back to be
    fetched (nothing is marked failed) and the command does not claim success."""
    from laion_audio.cli import main

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    shutil.rmtree(out / "shards")
    assert (out / "audio" / "RELEASED_TO").read_text().strip() == "shards"
    assert main(["shard", "--out", str(out), "--shards-to", str(tmp_path / "elsewhere")]) == 1
    assert "no record was sharded" in capsys.readouterr().err
    recs = Ledger(out / "ledger").records()
    assert not any(r.status in (Status.SHARDED, Status.FAILED) and r.failure_stage == "shard"
                   for r in recs)
    assert sum(r.status == Status.NEW and r.failure_code == "clip_lost" for r in recs) >= 10


def _swap_in_decoy_tars(out: Path, decoy: Path) -> None:
    """Replace the work folder's shards with tars of the same member names whose FLACs are
    each another clip's, and point ``audio/RELEASED_TO`` at them."""
    import tarfile

    decoy.mkdir()
    tars = sorted(p.relative_to(out / "shards") for p in (out / "shards").rglob("*.tar"))
    members = {}
    for t in tars:
        with tarfile.open(out / "shards" / t) as tf:
            members[t] = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    flacs = [data for t in tars for m, data in members[t] if m.name.endswith(".flac")]
    assert len(flacs) >= 10 and len(set(flacs)) == len(flacs)
    rotated = iter(flacs[1:] + flacs[:1])          # every FLAC is another clip's
    for t in tars:
        (decoy / t).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(decoy / t, "w") as tf:
            for m, data in members[t]:
                data = next(rotated) if m.name.endswith(".flac") else data
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
    shutil.rmtree(out / "shards")
    (out / "audio" / "RELEASED_TO").write_text(str(decoy) + "\n")


def test_readers_of_released_clips_refuse_tars_that_are_not_the_released_clips(
        inline_build, corpus, tmp_path):
    """The build's fingerprint fill and the filter read released clips from the tars
    ``audio/RELEASED_TO`` names. With decoy tars there and no fingerprint store, no
    fingerprint of other audio is filed under a sharded record's hash: those clips are left
    out of the near-duplicate index, and the filter counts them."""
    from laion_audio.filters.fpstore import FingerprintStore
    from laion_audio.shards.members import extract, flac_member

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    with Ledger(out / "ledger") as led:
        sharded = [r for r in led.records() if r.status == Status.SHARDED]
        fresh, published = sharded[0], sharded[1:]
        # one clip back before the filter (its FLAC from the real tar): the filter compares
        # it with every published clip
        extract(out / "shards" / fresh.shard, flac_member(fresh.source, fresh.source_id),
                out / fresh.flac_path)
        fresh.status, fresh.shard = Status.CAPTIONED, ""
        led.write([fresh], tag="test")
    _swap_in_decoy_tars(out, tmp_path / "decoy")
    shutil.rmtree(out / "fingerprints")
    assert published and not any((out / r.flac_path).exists() for r in published)
    summary = run_build(_config(corpus, out, inline=True, stages=("filter",)))
    store = FingerprintStore(str(out / "fingerprints"))
    assert fresh.audio_sha256 in store          # the clip on disk is fingerprinted
    assert not any(r.audio_sha256 in store or store.has_near(r.audio_sha256) for r in published)
    [table] = [s["table"] for s in summary["stages"] if s["stage"] == "filter"]
    assert f"sharded clips not compared (unreadable or not the clip hashed) {len(published)}" in table
    after = Ledger(out / "ledger", lock=False).records()
    assert sum(r.status == Status.SHARDED for r in after) == len(published)   # still published


def test_re_root_refuses_tars_that_are_not_the_released_clips(inline_build, tmp_path, capsys):
    """``audio/RELEASED_TO`` naming a folder whose tars have our member names but other audio
    (shards of another build, a hand-edited note): no clip is restored from them, because each
    restored FLAC must have the samples the transcode hashed; the records go back to be
    fetched and nothing wrong reaches the new root."""

    from laion_audio.cli import main

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    _swap_in_decoy_tars(out, tmp_path / "decoy")
    sharded = [r for r in Ledger(out / "ledger", lock=False).records() if r.status == Status.SHARDED]
    assert main(["shard", "--out", str(out), "--shards-to", str(tmp_path / "new")]) == 1
    assert "no record was sharded" in capsys.readouterr().err
    recs = Ledger(out / "ledger", lock=False).records()
    assert sum(r.status == Status.NEW and r.failure_code == "clip_lost" for r in recs) == len(sharded)
    assert not list((tmp_path / "new").rglob("*.tar"))
    assert not any((out / r.flac_path).exists() for r in sharded)


def test_a_damaged_released_note_falls_back_to_the_work_folders_shards(inline_build, tmp_path):
    """``audio/RELEASED_TO`` that is not UTF-8 (a damaged file) reads as the default root,
    ``shards/``, and the re-root restores every clip from there (each checked)."""
    from laion_audio.cli import main
    from laion_audio.workdir import WorkDir

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    (out / "audio" / "RELEASED_TO").write_bytes(b"\xff\xfe\x00shards\n")
    assert WorkDir(out).released_root() == str(out / "shards")
    assert main(["shard", "--out", str(out), "--shards-to", str(tmp_path / "new")]) == 0
    assert main(["verify", "--shards-to", str(tmp_path / "new")]) == 0
    assert not (out / "audio" / "RELEASED_TO").exists()


def test_re_root_resumes_from_the_state_a_killed_restore_leaves(inline_build, tmp_path):
    """What a kill -9 during the restore before a re-root leaves: some FLACs copied back, one
    half-written temp file, the RELEASED_TO note still there (it goes only when every clip is
    back). The next ``shard`` finishes the restore and writes every sharded clip."""
    from laion_audio import atomic
    from laion_audio.cli import main
    from laion_audio.shards.members import extract, flac_member

    out = tmp_path / "work"
    shutil.copytree(inline_build[0], out)
    sharded = [r for r in Ledger(out / "ledger", lock=False).records() if r.status == Status.SHARDED]
    for r in sharded[:3]:
        extract(out / "shards" / r.shard, flac_member(r.source, r.source_id), out / r.flac_path)
    half = atomic.temp_name(out / sharded[3].flac_path)
    half.write_bytes((out / sharded[0].flac_path).read_bytes()[:100])
    assert (out / "audio" / "RELEASED_TO").exists()
    assert main(["shard", "--out", str(out), "--shards-to", str(tmp_path / "new")]) == 0
    assert main(["verify", "--shards-to", str(tmp_path / "new")]) == 0
    again = [r for r in Ledger(out / "ledger", lock=False).records() if r.status == Status.SHARDED]
    assert len(again) == len(sharded) and not (out / "audio" / "RELEASED_TO").exists()
    assert all((out / r.flac_path).is_file() for r in again)
    assert not half.exists()                   # the killed copy's temp file is swept
