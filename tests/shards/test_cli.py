"""``laion-audio shard`` over a ledger: ledger updates, and kill -9 in the middle then resume."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laion_audio.commands._checks import parse_bytes
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

from .conftest import make_record
from .test_verify import REPO, cli
from .test_writer import tree_bytes


def ledger_with(path: Path, records: list[Record]) -> Path:
    with Ledger(path) as ledger:
        ledger.write(records, tag="test")
        ledger.compact()
    return path


def test_shard_command_updates_the_ledger(debian_flacs, tmp_path):
    work = tmp_path / "work"
    (work / "audio").mkdir(parents=True)
    records = []
    for i, (src, flac, sec) in enumerate(debian_flacs[:30]):
        rel = Path("audio") / f"{i}.flac"            # build stores paths relative to its work dir
        (work / rel).write_bytes(flac.read_bytes())
        rec = make_record("demo", src, work / rel, sec)
        rec.flac_path = rel.as_posix()
        if i == 0:
            rec.texts = []                           # transcoded, not captioned yet: left out
            rec.status = Status.TRANSCODED
        if i == 1:
            rec.status = Status.FETCHED              # not ready at all
        records.append(rec)
    ledger_with(work / "ledger", records)

    done = cli("shard", str(work / "ledger"), str(tmp_path / "shards"), "--samples-per-shard", "8")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo/train" in done.stdout and "28 sharded" in done.stdout
    assert "1 transcoded records have no caption yet" in done.stdout

    with Ledger(work / "ledger") as ledger:
        assert not list(ledger.journal_dir.glob("*.parquet"))   # compacted
        by_id = {r.source_id: r for r in ledger.records()}
    for i, rec in enumerate(records):
        now = by_id[rec.source_id]
        assert now.flac_path == rec.flac_path                            # still relative
        if i < 2:
            assert now.status == rec.status and not now.shard
        else:
            assert now.status == Status.SHARDED and now.split in ("train", "test")
            assert (tmp_path / "shards" / now.shard).is_file()
    assert cli("verify", str(tmp_path / "shards")).returncode == 0


def test_kill_9_during_shard_run_then_rerun_equals_an_uninterrupted_run(debian_flacs, tmp_path):
    # Many one-sample tars so the run is still going when the first tar appears.
    records = [make_record("colobot", src, flac, sec, n=n)
               for n in range(4) for src, flac, sec in debian_flacs]
    args = ["--samples-per-shard", "1", "--workers", "1"]
    clean = ledger_with(tmp_path / "clean-ledger", records)
    killed = ledger_with(tmp_path / "killed-ledger", records)

    done = cli("shard", str(clean), str(tmp_path / "clean"), *args)
    assert done.returncode == 0, done.stdout + done.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "laion_audio", "shard", str(killed), str(out),
                             *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/*/*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    partial = len(list(out.glob("*/*/*.tar")))
    assert 0 < partial < len(records)
    assert not (out / "colobot" / "train" / "sizes.json").exists()     # split not committed yet
    with Ledger(killed) as ledger:
        assert all(r.status == Status.CAPTIONED for r in ledger.records())

    done = cli("shard", str(killed), str(out), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already complete" in done.stdout
    kept = int(done.stdout.split(" written, ")[1].split(" already complete")[0])
    assert kept >= partial - 1        # the tar renamed just before the kill may lack its receipt

    a, b = tree_bytes(tmp_path / "clean"), tree_bytes(out)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    with Ledger(clean) as l1, Ledger(killed) as l2:
        assert l1.table().equals(l2.table())
    assert (clean / "ledger.parquet").read_bytes() == (killed / "ledger.parquet").read_bytes()
    assert cli("verify", str(out)).returncode == 0


def test_byte_sizes_on_the_command_line():
    assert [parse_bytes(t) for t in ("4096", "500M", "1G", "1GiB", "2.5MB")] == [
        4096, 500_000_000, 1_000_000_000, 2**30, 2_500_000]
    for bad in ("abc", "0", "-5M"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)
