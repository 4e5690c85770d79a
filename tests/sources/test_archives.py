"""Hostile archives: every bad member is rejected with a typed code, good members still come
through, and nothing is written outside the extraction folder."""
from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile

import pytest

from laion_audio.archives import ArchiveLimits, extract_archive, extract_one, safe_member_path
from laion_audio.records import Failure, FailureCode

GOOD = b"RIFF" + bytes(range(256)) * 16   # content does not matter to extraction


def codes(result):
    return {r.name: r.code for r in result.rejected}


def patch_zip_sizes(data: bytes, name: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in the central directory (a lying size claim)."""
    idx = data.index(b"PK\x01\x02")
    while True:
        idx = data.index(b"PK\x01\x02", idx)
        name_len = struct.unpack("<H", data[idx + 28:idx + 30])[0]
        if data[idx + 46:idx + 46 + name_len] == name:
            return data[:idx + 24] + struct.pack("<I", size) + data[idx + 28:]
        idx += 4


@pytest.mark.parametrize("name", ["../evil.wav", "a/../../evil.wav", "/etc/evil.wav", "C:\\evil.wav",
                                  "..\\..\\evil.wav", "", "a/\x00.wav", "a/\x1b[2J.wav"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(Failure) as exc:
        safe_member_path(name)
    assert exc.value.code == FailureCode.UNSAFE_PATH


def test_safe_names_are_normalised():
    assert safe_member_path("./Pack\\Sub/./x.wav").as_posix() == "Pack/Sub/x.wav"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_zip(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Pack/good one.wav", GOOD)
        zf.writestr("../slip.wav", GOOD)
        zf.writestr("/abs.wav", GOOD)
        link = zipfile.ZipInfo("Pack/link.wav")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../../../etc/passwd")
        zf.writestr("Pack/claims 2GB.wav", GOOD)
        zf.writestr("Pack/bomb.wav", bytes(20 << 20))          # 20 MB of zeros -> ~20 KB
        zf.writestr("Pack/good two.flac", GOOD)
        zf.writestr("Pack/good one.wav", GOOD)                  # duplicate name
    data = patch_zip_sizes(buf.getvalue(), b"Pack/claims 2GB.wav", 2 * 1024 ** 3)
    archive = tmp_path / "hostile.zip"
    archive.write_bytes(data)
    result = extract_archive(archive, tmp_path / "out")
    assert sorted(m.name for m in result.members) == ["Pack/good one.wav", "Pack/good two.flac"]
    assert (tmp_path / "out" / "Pack" / "good one.wav").read_bytes() == GOOD
    assert codes(result) == {"../slip.wav": FailureCode.UNSAFE_PATH, "/abs.wav": FailureCode.UNSAFE_PATH,
                             "Pack/link.wav": FailureCode.UNSAFE_PATH,
                             "Pack/claims 2GB.wav": FailureCode.TOO_LARGE,
                             "Pack/bomb.wav": FailureCode.TOO_LARGE,
                             "Pack/good one.wav": FailureCode.UNSAFE_PATH}   # the duplicate, not the first
    assert not (tmp_path / "slip.wav").exists() and not (tmp_path / "out" / "Pack" / "link.wav").exists()


def test_hostile_tar(tmp_path):
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tf:
        def add(name, data=GOOD, **attrs):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
        add("Pack/good.wav")
        add("../slip.wav")
        add("/abs/evil.wav")
        add("Pack/sym.wav", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("Pack/hard.wav", b"", type=tarfile.LNKTYPE, linkname="Pack/good.wav")
        add("Pack/dev.wav", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("Pack/fifo.wav", b"", type=tarfile.FIFOTYPE)
        add("Pack/good2.ogg")
        # last: a header claiming 2 GB with only a little data behind it
        huge = tarfile.TarInfo("Pack/huge.wav")
        huge.size = 2 * 1024 ** 3
        tf.fileobj.write(huge.tobuf(tarfile.GNU_FORMAT))
        tf.fileobj.write(GOOD)
    result = extract_archive(archive, tmp_path / "out")
    assert sorted(m.name for m in result.members) == ["Pack/good.wav", "Pack/good2.ogg"]
    got = codes(result)
    for name in ("../slip.wav", "/abs/evil.wav", "Pack/sym.wav", "Pack/hard.wav", "Pack/dev.wav",
                 "Pack/fifo.wav"):
        assert got[name] == FailureCode.UNSAFE_PATH, name
    assert got["Pack/huge.wav"] == FailureCode.TOO_LARGE
    assert not (tmp_path / "slip.wav").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


def test_tar_member_cut_short_is_truncated_not_kept(tmp_path):
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tf:
        info = tarfile.TarInfo("Pack/first.wav")
        info.size = len(GOOD)
        tf.addfile(info, io.BytesIO(GOOD))
        info = tarfile.TarInfo("Pack/cut.wav")
        info.size = len(GOOD) * 4
        tf.addfile(info, io.BytesIO(GOOD * 4))
    archive = tmp_path / "cut.tar"
    archive.write_bytes(full.getvalue()[:512 + 4608 + 512 + 1000])   # ends inside cut.wav
    result = extract_archive(archive, tmp_path / "out")
    assert [m.name for m in result.members] == ["Pack/first.wav"]
    assert not (tmp_path / "out" / "Pack" / "cut.wav").exists()
    assert result.rejected and all(r.code in (FailureCode.TRUNCATED, FailureCode.UNDECODABLE)
                                   for r in result.rejected)


def test_member_count_and_total_size_bounds(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(6):
            zf.writestr(f"Pack/{i}.wav", GOOD)
    few = extract_archive(archive, tmp_path / "few", limits=ArchiveLimits(max_members=3))
    assert len(few.members) == 3 and [r.code for r in few.rejected] == [FailureCode.TOO_LARGE]
    small = extract_archive(archive, tmp_path / "small", limits=ArchiveLimits(max_total_bytes=len(GOOD) * 2))
    assert len(small.members) == 2 and len(small.rejected) == 4
    assert {r.code for r in small.rejected} == {FailureCode.TOO_LARGE}


def test_not_an_archive_and_reuse(tmp_path):
    junk = tmp_path / "x.zip"
    junk.write_bytes(b"not an archive at all" * 50)
    with pytest.raises(Failure) as exc:
        extract_archive(junk, tmp_path / "out")
    assert exc.value.code == FailureCode.UNDECODABLE

    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("a/b.wav")
        info.size = len(GOOD)
        tf.addfile(info, io.BytesIO(GOOD))
    first = extract_archive(archive, tmp_path / "ok")
    marker = tmp_path / "ok" / "a" / "b.wav"
    mtime = marker.stat().st_mtime_ns
    again = extract_archive(archive, tmp_path / "ok")
    assert again.to_json() == first.to_json() and marker.stat().st_mtime_ns == mtime
    assert extract_one(archive, "a/b.wav", tmp_path / "one").read_bytes() == GOOD
    with pytest.raises(Failure) as exc:
        extract_one(archive, "a/missing.wav", tmp_path / "one")
    assert exc.value.code == FailureCode.MISSING_FILE


def test_killed_extraction_leaves_nothing_half_done(tmp_path):
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Pack/a.wav", GOOD)
    stale = tmp_path / ".out.tmp-12345"             # what a kill -9 mid-extraction leaves
    (stale / "Pack").mkdir(parents=True)
    (stale / "Pack" / "half.wav").write_bytes(b"RIFF")
    result = extract_archive(archive, tmp_path / "out")
    assert [m.name for m in result.members] == ["Pack/a.wav"]
    assert not stale.exists() and not (tmp_path / "out" / "Pack" / "half.wav").exists()


# --- issue 10 items 7, 8, 12: a file used as a folder, non-UTF-8 names, expansion bounds -------
def _tar_with(archive, members, mode="w", encoding="utf-8"):
    with tarfile.open(archive, mode, encoding=encoding, format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_member_under_a_member_file_is_rejected_not_a_crash(tmp_path, kind):
    names = ["Pack/a.wav", "Pack/a.wav/b.wav", "Pack/d/x.wav", "Pack/d", "Pack/ok.wav"]
    archive = tmp_path / f"tree.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for n in names:
                zf.writestr(n, GOOD)
    else:
        _tar_with(archive, [(n, GOOD) for n in names])
    result = extract_archive(archive, tmp_path / "out")
    assert sorted(m.name for m in result.members) == ["Pack/a.wav", "Pack/d/x.wav", "Pack/ok.wav"]
    assert codes(result) == {"Pack/a.wav/b.wav": FailureCode.UNSAFE_PATH,
                             "Pack/d": FailureCode.UNSAFE_PATH}
    assert (tmp_path / "out" / "Pack" / "a.wav").read_bytes() == GOOD


def test_latin1_tar_member_names_become_valid_utf8(tmp_path):
    archive = tmp_path / "latin1.tar"
    _tar_with(archive, [("Pack/café.wav", GOOD), ("Pack/ok.wav", GOOD)], encoding="latin-1")
    assert b"caf\xe9.wav" in archive.read_bytes()
    result = extract_archive(archive, tmp_path / "out")
    names = sorted(m.name for m in result.members)
    assert names == ["Pack/café.wav", "Pack/ok.wav"]
    for n in names:
        n.encode("utf-8")                                  # strict: no lone surrogates
    again = extract_archive(archive, tmp_path / "out")     # the manifest was written and reused
    assert sorted(m.name for m in again.members) == names
    assert extract_one(archive, "Pack/café.wav", tmp_path / "one").read_bytes() == GOOD


def test_tar_gz_expansion_is_bounded_by_the_archive_size(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    big = bytes(64 << 20)                                  # 64 MiB of zeros -> ~65 KB compressed
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        for name, data in [("Pack/small.wav", GOOD), ("Pack/bomb.wav", big)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert archive.stat().st_size < 1 << 20
    result = extract_archive(archive, tmp_path / "out")
    assert [m.name for m in result.members] == ["Pack/small.wav"]
    assert codes(result) == {"Pack/bomb.wav": FailureCode.TOO_LARGE}
    assert not (tmp_path / "out" / "Pack" / "bomb.wav").exists()


def test_zip_of_many_small_compressible_members_is_bounded(tmp_path):
    archive = tmp_path / "junk.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Pack/real.wav", GOOD)
        for i in range(40):                              # each 512 KiB of zeros, ratio ~1000
            zf.writestr(f"Pack/ratio{i:02d}.wav", bytes(512 << 10))
        for i in range(700):                             # 60 KiB each: under the member check
            zf.writestr(f"Pack/small{i:03d}.wav", bytes(60 << 10))
    size = archive.stat().st_size
    limits = ArchiveLimits()
    result = extract_archive(archive, tmp_path / "out")
    got = codes(result)
    assert all(got[f"Pack/ratio{i:02d}.wav"] == FailureCode.TOO_LARGE for i in range(40))
    expanded = sum(m.size for m in result.members)
    assert expanded <= limits.max_ratio * size + limits.ratio_floor_bytes
    assert "Pack/real.wav" in {m.name for m in result.members}
    # every member is either extracted or rejected (one row each), none silently dropped
    assert len(result.members) + len(result.rejected) == 741
    assert {r.code for r in result.rejected} == {FailureCode.TOO_LARGE}
