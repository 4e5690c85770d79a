"""A full disk (issue 10 item 3) on a real, small tmpfs: records that could not be written fail
``no_space`` (not ``internal_error``), the run exits non-zero, and the next run retries them by
itself (no ``--retry-failed``) once there is room. Skips where mounting is not permitted."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status, is_out_of_space

REPO = Path(__file__).resolve().parents[2]


def _mount(mnt: Path, size: str) -> None:
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounts():
    """Mount small tmpfs folders on demand; all are unmounted at the end."""
    done: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        _mount(path, size)
        done.append(path)
        return path
    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path, mounts):
    return mounts(tmp_path / "small", "3m")


def _inputs(folder: Path, n: int = 24, seconds: float = 2.0) -> None:
    """Noise compresses badly: each FLAC is about as big as its PCM (~190 KB)."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        data = (rng.standard_normal(int(48000 * seconds)) * 0.2).clip(-1, 1).astype("float32")
        sf.write(folder / f"noise {i:02d}.wav", data, 48000, subtype="PCM_16")


def _build(out: Path, inputs: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "laion_audio", "build", "--source", "local",
                           "--input", str(inputs), "--out", str(out), "--inline",
                           "--stages", "crawl,fetch,transcode,caption,shard", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _records(out: Path):
    with Ledger(out / "ledger", lock=False) as led:
        return led.records()


def test_is_out_of_space_reads_libsndfiles_errno(tmpfs):
    noise = np.random.default_rng(0).standard_normal(48000 * 60).astype("float32") * 0.2
    with pytest.raises(Exception) as err:
        sf.write(tmpfs / "full.flac", noise, 48000, format="FLAC")
    assert type(err.value).__name__ == "LibsndfileError"
    assert is_out_of_space(err.value)
    with pytest.raises(OSError) as err2:
        (tmpfs / "full.bin").write_bytes(bytes(8 << 20))
    assert is_out_of_space(err2.value)
    assert not is_out_of_space(ValueError("System error."))


@pytest.mark.slow
def test_disk_full_is_no_space_and_the_next_run_retries_it(mounts, tmp_path):
    """The FLAC folder (``OUT/audio``) and then the shard folder on small tmpfs mounts; the
    ledger lives on a disk with room (a ledger that cannot be written stops the run)."""
    inputs = tmp_path / "in"
    _inputs(inputs)
    out = tmp_path / "out"
    audio = mounts(out / "audio", "2m")
    shards = mounts(tmp_path / "shards", "1m")
    first = _build(out, inputs, "--shards-to", str(shards))
    assert first.returncode != 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    assert "disk full" in first.stdout
    recs = _records(out)
    codes = {(r.failure_stage, r.failure_code) for r in recs if r.status == Status.FAILED}
    assert codes == {("transcode", FailureCode.NO_SPACE)}
    done = [r for r in recs if r.status != Status.FAILED]
    assert done and all(r.status == Status.CAPTIONED for r in done)   # shards did not fit either

    subprocess.run(["mount", "-o", "remount,size=64m", str(audio)], check=True, timeout=30)
    subprocess.run(["mount", "-o", "remount,size=64m", str(shards)], check=True, timeout=30)
    second = _build(out, inputs, "--shards-to", str(shards))   # the same command, no --retry-failed
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    recs = _records(out)
    assert len(recs) == 24 and {r.status for r in recs} == {Status.SHARDED}


def _tar_digests(root: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.tar"))}


@pytest.mark.slow
def test_disk_full_while_a_reshard_copies_clips_out_of_their_tars_loses_nothing(mounts, tmp_path):
    """The keep policy released every FLAC; new clips make a re-shard copy clips back out of the
    published tars into ``OUT/audio``, which is full. No tar changes, no traceback, a non-zero
    exit; once there is room the same command finishes with every clip sharded."""
    inputs = tmp_path / "in"
    _inputs(inputs, n=8, seconds=1.0)                    # ~96 KB FLACs
    out = tmp_path / "out"
    audio = mounts(out / "audio", "2m")
    first = _build(out, inputs, "--samples-per-shard", "3")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert not list(audio.rglob("*.flac"))               # released: the tars hold them
    before = _tar_digests(out / "shards")
    rng = np.random.default_rng(8)
    for i in range(8, 12):                               # sorts first: every tar's members move
        data = (rng.standard_normal(48000) * 0.2).clip(-1, 1).astype("float32")
        sf.write(inputs / f"a-noise {i:02d}.wav", data, 48000, subtype="PCM_16")
    subprocess.run(["mount", "-o", "remount,size=700k", str(audio)], check=True, timeout=30)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    refresh = [sys.executable, "-m", "laion_audio", "refresh", "--source", "local", "--input", str(inputs),
               "--out", str(out), "--inline", "--samples-per-shard", "3"]
    second = subprocess.run(refresh, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "disk full" in second.stdout + second.stderr
    assert "Traceback" not in second.stderr, second.stderr[-3000:]
    assert _tar_digests(out / "shards") == before        # nothing published was touched
    subprocess.run(["mount", "-o", "remount,size=64m", str(audio)], check=True, timeout=30)
    third = subprocess.run(refresh, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-2000:]
    recs = _records(out)
    assert len(recs) == 12 and {r.status for r in recs} == {Status.SHARDED}


def test_disk_full_while_the_filter_fingerprints_in_threads(mounts, tmp_path):
    """``filter`` fingerprints clips the store lacks in up to 4 threads; the store on a full
    tmpfs: exit 3 with the one disk-full line, no partial entry left, and the same command
    finishes once there is room."""
    inputs = tmp_path / "in"
    _inputs(inputs)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    built = _build(out, inputs, "--stages", "crawl,fetch,transcode,caption")   # the last --stages wins
    assert built.returncode == 0, built.stderr[-2000:]
    store = out / "fingerprints"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    mounts(store, "40k")                       # room for a few entries, not for 24

    def filter_run():
        return subprocess.run([sys.executable, "-m", "laion_audio", "filter", "--ledger", str(out / "ledger")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    def partial():
        return [p for p in store.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.endswith(".part"))]

    first = filter_run()
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stderr.strip().splitlines() == [
        "laion-audio filter: error: disk full: free some space (or choose another --out) and rerun "
        "the same command; finished work is kept"]
    assert not partial()
    assert {r.status for r in _records(out)} == {Status.CAPTIONED}        # nothing decided
    subprocess.run(["mount", "-o", "remount,size=8m", str(store)], check=True, timeout=30)
    second = filter_run()
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "24 in = 24 ok" in second.stdout and not partial()
