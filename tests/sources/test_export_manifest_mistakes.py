"""export-manifest against what its author did not plan for: secrets and local paths in every
free-text field (the T5 caption and the licence went out verbatim), and output paths that are
folders or cannot be written (tracebacks after the work, a temp file left behind)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]


def _work(tmp_path: Path) -> Path:
    from laion_audio.ledger import Ledger

    work = tmp_path / "work"
    private = tmp_path / "private" / "secret_dir"
    private.mkdir(parents=True)
    recs = [Record(source="freesound", source_id="1", status=Status.SHARDED, texts=["Rain."],
                   url="https://alice:s3cr3tpw@cdn.example/1.mp3", audio_duration=1.0,
                   text_augment_t5=f"rain from {private}/x.wav https://u:pw12345@h.example/",
                   license="CC0 https://x.example/terms?access_token=zzz999", split="train",
                   shard="freesound/train/0.tar"),
            Record(source="freesound", source_id="2", status=Status.SHARDED, texts=["x"])]
    with Ledger(work / "ledger") as led:
        led.write(recs)
    return work


def _export(work: Path, target: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laion_audio", "export-manifest", "--out", str(work),
                           str(target)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_no_secret_or_local_path_in_t5_caption_or_licence(tmp_path):
    work = _work(tmp_path)
    for name in ("m.csv", "m.parquet"):
        proc = _export(work, tmp_path / "rel" / name, tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "rel" / name
        raw = out.read_bytes() + out.with_suffix(".md").read_bytes()
        for bad in (b"s3cr3tpw", b"pw12345", b"zzz999", str(tmp_path).encode()):
            assert bad not in raw, (name, bad)


def test_an_output_that_is_a_folder_or_unwritable_is_one_line_before_the_work(tmp_path):
    work = _work(tmp_path)
    (tmp_path / "isdir.csv").mkdir()
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "m.md").mkdir()          # the data card's place is a folder
    for target in (tmp_path / "isdir.csv", "/proc/m.csv", tmp_path / "card" / "m.csv"):
        proc = _export(work, target, tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not (tmp_path / "card" / "m.csv").exists()
