"""kill -9 in the middle of `laion-audio filter` (while it fills the fingerprint store), then a
rerun: the ledger ends byte-identical to an uninterrupted run, the store holds no partial
entry, and the rerun only fingerprints what the killed run had not stored. The run compares
against a local eval set with the warp pass on, and one record is a sped-up copy of an eval
clip, so the rerun's warp verdicts must equal the uninterrupted run's too."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from laion_audio.transcode.audio import pcm_sha256_of_file as pcm_sha256
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]



def _work(tmp_path: Path, name: str, files: list[Path]) -> Path:
    work = tmp_path / name
    with Ledger(work / "ledger") as ledger:
        ledger.write([Record("local", f"{i:03d}", flac_path=str(p), audio_sha256=pcm_sha256(p),
                             audio_duration=sf.info(str(p)).duration, status=Status.CAPTIONED)
                      for i, p in enumerate(files)])
        ledger.compact()
    return work


def _filter(work: Path, eval_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "laion_audio", "filter", str(work / "ledger"),
                             "--evalsets-cache", str(work / "no-evalsets"),
                             "--eval-audio", f"myeval={eval_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_kill9_mid_filter_then_rerun_equals_uninterrupted(tmp_path, debian_sounds):
    short = [p for p in debian_sounds if p.suffix in (".wav", ".ogg", ".oga")
             and sf.info(str(p)).duration < 10]
    files = short[:80]
    # a local eval set of clips that are not records, and a record that is one of them sped up
    # by 4 % (pitch and tempo together): only the warp pass finds it
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    eval_clips = [p for p in short[80:] if sf.info(str(p)).duration >= 3][:3]
    assert len(eval_clips) == 3
    for p in eval_clips:
        shutil.copy(p, eval_dir / p.name)
    data, sr = sf.read(str(eval_clips[0]))
    sped = tmp_path / "sped-up-eval-clip.wav"
    sf.write(str(sped), data, int(round(sr * 1.04)))
    files.append(sped)
    # a copy of one file under another name: the run has a real duplicate to find
    dup = tmp_path / "copy-of-a-wav.wav"
    shutil.copy(next(p for p in files if p.suffix == ".wav"), dup)
    files.append(dup)
    clean, killed = _work(tmp_path, "clean", files), _work(tmp_path, "killed", files)

    proc = _filter(clean, eval_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    store = killed / "fingerprints"
    proc = _filter(killed, eval_dir)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.is_dir() and len(list(store.rglob("*.npz"))) >= 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "filter finished before it could be killed: " + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stored_before = {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")}
    assert 20 <= len(stored_before) < len(files)

    proc = _filter(killed, eval_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert (killed / "ledger" / "ledger.parquet").read_bytes() == \
        (clean / "ledger" / "ledger.parquet").read_bytes()
    with Ledger(killed / "ledger", lock=False) as led:
        assert led.get("local", f"{len(files) - 1:03d}").duplicate_of
        warped = led.get("local", f"{len(files) - 2:03d}")
    assert warped.status == Status.DROPPED and warped.filter_reason == "eval_overlap_content", warped
    assert warped.filter_match["matched_id"] == eval_clips[0].name
    assert abs(warped.filter_match["time_factor"] - 1 / 1.04) < 0.01 or \
        abs(warped.filter_match["time_factor"] - 1.04) < 0.01, warped.filter_match
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")}
    assert {p: after[p] for p in stored_before} == stored_before      # not fingerprinted again
    assert not [p for p in store.rglob("*") if p.name.startswith(".tmp-")]
