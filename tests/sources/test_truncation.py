"""Media cut off in transit (issue 10 item 2): a download shorter than its window is a
retryable fetch failure whose partial file is discarded; nothing short reaches a shard;
``--retry-failed`` fetches a cut file again instead of re-transcoding it; ``verify`` names a
sample shorter than its record promised."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from crawlers.replay import serve
from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status
from laion_audio.shards import verify
from laion_audio.commands.build import exit_code as verdict
from pipelines.build import BuildConfig, run_build

from .conftest import replay_request

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
STAGES = ("crawl", "fetch", "transcode", "caption", "shard")


def audioset_cfg(out: Path, base: str, **kw) -> BuildConfig:
    opts = {"csv": [f"{base}/audioset/balanced_train_segments.csv"],
            "labels": f"{base}/audioset/class_labels_indices.csv",
            "youtube_base": f"{base}/youtube/watch?v=", "cache_dir": str(out / "cache"),
            "caption": "template", "limit": 7}
    return BuildConfig(out=out, sources={"audioset": opts}, inline=True, stages=STAGES,
                       samples_per_shard=4, **kw)


def rows(out: Path) -> dict:
    with Ledger(out / "ledger", lock=False) as led:
        return {r.source_id: r for r in led.records(source="audioset")}


def window(r) -> float:
    return r.trim_end - r.trim_start


@pytest.mark.slow
def test_cut_media_never_reaches_a_shard_and_a_rerun_completes(tmp_path):
    out = tmp_path / "out"
    with serve(seed=0, sizes={"youtube": 7}) as (app, base):
        replay_request("POST", f"{base}/_replay/faults",
                       json={"rate": 1, "kinds": ["truncate"], "paths": "^/youtube/media/"})
        first = run_build(audioset_cfg(out, base))
        got = rows(out)
        assert len(got) == 7 and app.faulted["truncate"] >= 14     # each clip tried again
        assert {(r.status, r.failure_stage, r.failure_code) for r in got.values()} == \
            {(Status.FAILED, "fetch", FailureCode.TRUNCATED)}
        assert verdict(first)[0] == 1
        assert [p for p in (out / "raw" / "audioset").iterdir()] == []  # partial files discarded

        replay_request("POST", f"{base}/_replay/faults", json={"rate": 0})
        second = run_build(audioset_cfg(out, base, retry_failed=True))
    assert verdict(second)[0] == 0, second["problems"]
    got = rows(out)
    assert {r.status for r in got.values()} == {Status.SHARDED}
    for r in got.values():                       # every sample holds its whole window
        assert r.audio_duration == pytest.approx(window(r), abs=0.02), r.source_id
    report = verify(out / "shards")
    assert report.ok, report.problems


@pytest.mark.slow
def test_retry_failed_fetches_a_cut_file_again_instead_of_transcoding_it(tmp_path):
    """A raw file that was cut (left by an older version that did not check) fails transcode;
    --retry-failed must download it again, not transcode the same cut file forever."""
    out = tmp_path / "out"
    with serve(seed=0, sizes={"youtube": 7}) as (app, base):
        cfg = audioset_cfg(out, base)
        cfg.stages = ("crawl", "fetch")
        run_build(cfg)
        late = [r for r in rows(out).values() if r.trim_start >= 20]
        assert late
        for r in late:                            # cut each raw file to a fifth
            raw = out / r.audio_path
            data = raw.read_bytes()
            raw.write_bytes(data[: len(data) // 5])
        cfg.stages = ("transcode",)
        run_build(cfg)
        failed = {k: r for k, r in rows(out).items() if r.status == Status.FAILED}
        assert set(failed) == {r.source_id for r in late}
        assert {r.failure_stage for r in failed.values()} == {"transcode"}
        media_hits = sum(n for p, n in app.ok.items() if p.startswith("/youtube/media/"))

        again = audioset_cfg(out, base, retry_failed=True)
        summary = run_build(again)
        refetched = sum(n for p, n in app.ok.items() if p.startswith("/youtube/media/")) - media_hits
    assert refetched >= len(late)
    assert verdict(summary)[0] == 0, summary["problems"]
    for r in rows(out).values():
        assert r.status == Status.SHARDED
        assert r.audio_duration == pytest.approx(window(r), abs=0.02)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_verify_names_a_sample_shorter_than_its_window(tmp_path):
    split = tmp_path / "shards" / "audioset" / "train"
    split.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(split / "0.tar", "w") as tar:
        for key, seconds in (("good", 10.0), ("cut", 6.5)):
            buf = io.BytesIO()
            sf.write(buf, (rng.standard_normal(int(48000 * seconds)) * 0.1).astype("float32"),
                     48000, format="FLAC", subtype="PCM_16")
            doc = {"text": ["The sound of a dog"], "tag": ["Dog"], "duration": seconds,
                   "original_data": {"youtube_id": key, "start_seconds": 30.0,
                                     "end_seconds": 40.0}}
            _add(tar, f"{key}.flac", buf.getvalue())
            _add(tar, f"{key}.json", json.dumps(doc).encode())
    (split / "sizes.json").write_text(json.dumps({"0.tar": 2}))
    report = verify(tmp_path / "shards")
    assert not report.ok
    assert [p for p in report.problems if "cut" in p and "window" in p]
    assert not [p for p in report.problems if "good" in p]
