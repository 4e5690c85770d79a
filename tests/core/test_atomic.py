"""The one atomic write: readers see old or new bytes, errors leave nothing behind."""
import os

import pytest

from laion_audio import atomic


def test_write_replaces_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "sub" / "a.json"
    atomic.write_text(dest, "one")
    atomic.write_bytes(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert os.listdir(dest.parent) == ["a.json"]


def test_error_inside_keeps_old_bytes_and_removes_temp(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_folder_publish_and_temp_names_are_recognised(tmp_path):
    dest = tmp_path / "extracted"
    with atomic.atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "m.wav").write_bytes(b"x")
    assert (dest / "m.wav").read_bytes() == b"x"
    name = atomic.temp_name(tmp_path / "x.tar").name
    assert atomic.is_temp(name) and name.endswith(".part")
    assert atomic.temp_name(tmp_path / "x") != atomic.temp_name(tmp_path / "x")


def test_no_os_replace_outside_the_helper():
    """Issue 15: write-to-temp-then-rename lives in one place."""
    import re
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("laion_audio", "crawlers", "pipelines"):
        for path in (repo / folder).rglob("*.py"):
            if path.name == "atomic.py":
                continue
            if re.search(r"\bos\.replace\(", path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(repo)))
    assert offenders == [], f"a rename outside laion_audio/atomic.py: {offenders}"
