"""``verify``: passes good shards (ours and LAION's own layout) and names every kind of damage."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from laion_audio.shards import verify, write_shards

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "laion_audio", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_verify_reads_laions_own_layout(shared_data, tmp_path):
    """LAION's tars: members named by absolute path, ``text`` sometimes a plain string, some
    samples without ``tag``, no index.json."""
    pairs = sorted(p for p in (shared_data / "laion_pairs").glob("*.flac"))
    assert len(pairs) >= 3
    split = tmp_path / "laion" / "WavText5K" / "train"
    split.mkdir(parents=True)
    prefix = "mnt/audio_clip/processed_datasets/WavText5K/train"
    with tarfile.open(split / "0.tar", "w") as tar:
        for i, flac in enumerate(pairs, start=1):
            doc = json.loads(flac.with_suffix(".json").read_text())
            if i == 2:
                doc.pop("tag", None)
            add_bytes(tar, f"{prefix}/{i}.flac", flac.read_bytes())
            add_bytes(tar, f"{prefix}/{i}.json", json.dumps(doc).encode())
    (split / "sizes.json").write_text(json.dumps({"0.tar": len(pairs)}))
    assert any(isinstance(json.loads(p.with_suffix(".json").read_text())["text"], str)
               for p in pairs)

    report = verify(tmp_path / "laion")
    assert report.ok, report.problems
    assert report.splits["WavText5K/train"]["samples"] == len(pairs)
    assert report.splits["WavText5K/train"]["indexed"] is False
    assert report.totals["seconds"] > 9.0
    assert any("LAION" in n for n in report.notes)
    done = cli("verify", str(tmp_path / "laion"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no index.json" in done.stdout

    # The same reader rejects a LAION tar whose sizes.json overstates it.
    (split / "sizes.json").write_text(json.dumps({"0.tar": len(pairs) + 1}))
    assert any("sizes.json says" in p for p in verify(tmp_path / "laion").problems)


def test_verify_names_each_problem(records, tmp_path):
    out = tmp_path / "out"
    write_shards(records, out, samples_per_shard=6)
    assert verify(out).ok
    train = out / "colobot" / "train"

    # 1. a flipped byte inside a FLAC: checksum and decode both fail
    data = bytearray((train / "0.tar").read_bytes())
    data[3000] ^= 0xFF
    (train / "0.tar").write_bytes(bytes(data))
    # 2. a missing tar, 3. a tar nobody lists
    (train / "1.tar").unlink()
    (train / "99.tar").write_bytes((train / "2.tar").read_bytes())
    # 4. members of two samples interleaved, one JSON with an empty text, one lone FLAC
    flac = (Path(records[0].flac_path)).read_bytes()
    with tarfile.open(train / "3.tar", "w") as tar:
        add_bytes(tar, "a.flac", flac)
        add_bytes(tar, "b.flac", flac)
        add_bytes(tar, "a.json", b'{"text": ["x"]}')
        add_bytes(tar, "b.json", b'{"text": ["x"]}')
        add_bytes(tar, "c.flac", flac)
        add_bytes(tar, "c.json", b'{"text": []}')
        add_bytes(tar, "d.flac", flac)
    # 5. a truncated tar, 6. a temp file a killed run left
    data = (train / "4.tar").read_bytes()
    (train / "4.tar").write_bytes(data[: len(data) // 3])
    (train / ".colobot.train.5.tar.tmp-123").write_bytes(b"partial")

    report = verify(out)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "0.tar: sha256 is" in text
    assert "1.tar: listed in sizes.json but missing" in text
    assert "99.tar: not listed in sizes.json" in text
    assert "members are not adjacent" in text
    assert "'text' is an empty list" in text
    assert "sample d: no .json member" in text
    assert "4.tar: tar is damaged" in text or "4.tar: bytes is" in text
    assert "temporary file left by an unfinished run" in text
    assert "freedesktop" not in text          # the other dataset is untouched

    done = cli("verify", str(out))
    assert done.returncode == 1
    assert "PROBLEMS" in done.stdout and "99.tar" in done.stdout


def test_verify_on_a_folder_without_shards(tmp_path):
    assert not verify(tmp_path / "nothing").ok
    (tmp_path / "empty").mkdir()
    assert "no sizes.json" in verify(tmp_path / "empty").problems[0]


def test_a_long_sample_is_checked_in_bounded_memory(tmp_path):
    """20 minutes of 48 kHz silence is a tiny FLAC but 230 MB of float32 decoded whole; verify
    decodes it in blocks (every frame still decoded, the length still counted)."""
    import soundfile as sf
    from _peak import in_child

    path = tmp_path / "long.flac"
    with sf.SoundFile(str(path), "w", 48000, 1, "PCM_16", format="FLAC") as fh:
        for _ in range(20):
            fh.write(np.zeros(48000 * 60, dtype=np.int16))
    frames, rate, channels, peak_kb = in_child(
        "from laion_audio.shards.verify import _decode_all;"
        "print(*_decode_all(open(sys.argv[1], 'rb').read()), peak_kb())", path)
    assert (frames, rate, channels) == (20 * 60 * 48000, 48000, 1)
    assert peak_kb < 200 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_an_empty_split_is_a_problem_and_reports_are_reproducible(tmp_path):
    """sizes.json {} (or shards of 0 samples) passed as OK; an undecodable FLAC's problem named
    a memory address, so two reports of the same shards differed."""
    empty = tmp_path / "root" / "ds" / "train"
    empty.mkdir(parents=True)
    (empty / "sizes.json").write_text("{}")
    report = verify(tmp_path / "root")
    assert not report.ok and any("holds no sample" in p for p in report.problems)
    bad = tmp_path / "root" / "ds" / "test"
    bad.mkdir()
    with tarfile.open(bad / "0.tar", "w") as tar:
        add_bytes(tar, "k.flac", b"not a flac")
        add_bytes(tar, "k.json", json.dumps({"text": "x"}).encode())
    (bad / "sizes.json").write_text(json.dumps({"0.tar": 1}))
    first, second = verify(tmp_path / "root").problems, verify(tmp_path / "root").problems
    assert first == second and any("FLAC does not decode" in p for p in first)
    assert not any(" at 0x" in p for p in first)


def test_credentials_in_the_shard_root_url_are_not_printed_or_published(tmp_path):
    url = "https://user:pw12345@127.0.0.1:9/shards?token=abcdef99"
    proc = cli("verify", "--shards-to", url, "--json", str(tmp_path / "v.json"))
    assert proc.returncode == 1, proc.stderr
    published = (tmp_path / "v.json").read_text()
    for secret in ("pw12345", "abcdef99"):
        assert secret not in proc.stdout + proc.stderr and secret not in published
    assert "127.0.0.1:9/shards" in published


def test_a_record_in_two_splits_of_a_dataset_is_a_problem(records, tmp_path):
    """One sample name (= one (source, source_id)) in train and test: trained on and tested on,
    and verify said OK as long as each split was consistent in itself."""
    import shutil

    out = tmp_path / "out"
    write_shards(records, out, samples_per_shard=6)
    assert verify(out).ok
    dataset = next(d for d in sorted(out.iterdir()) if (d / "train").is_dir() and (d / "test").is_dir())
    train, test = dataset / "train", dataset / "test"
    # a consistent test split (index.json and sizes.json rewritten) that holds a train shard
    shutil.copy(train / "0.tar", test / "0.tar")
    for name in ("sizes.json", "index.json"):
        doc = json.loads((train / name).read_text())
        if name == "sizes.json":
            doc = {"0.tar": doc["0.tar"]}
        else:
            doc["shards"] = [e for e in doc["shards"] if e["name"] == "0.tar"]
            doc["samples"] = doc["shards"][0]["samples"]
        (test / name).write_text(json.dumps(doc))
    for extra in test.glob("*.tar"):
        if extra.name != "0.tar":
            extra.unlink()
    problems = verify(out).problems
    assert any("in both splits" in p for p in problems), problems
