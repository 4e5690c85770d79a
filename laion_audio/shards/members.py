"""A sample's FLAC read straight out of its published tar, so the work folder need not keep a
second copy of every sharded clip (the keep policy: docs/quickstart.md, "Disk").

Our tars are uncompressed USTAR, so a member is a contiguous byte range of the tar: reading it
is a seek, and a reader (soundfile, the shard writer) gets a bounded window over those bytes,
never the whole clip in memory. Paths that flow as strings (the filter's path columns, a
fingerprint task's record) name a member as ``<tar path>::<member name>`` (a *member path*);
:func:`open_audio` turns either form into something soundfile opens.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import tarfile
from pathlib import Path

from .. import atomic
from ..records import sample_key

SEP = "::"


def member_path(tar: str | os.PathLike, member: str) -> str:
    return f"{tar}{SEP}{member}"


def split_member_path(path: str) -> tuple[str, str] | None:
    """(tar, member) of a member path, None for an ordinary path."""
    tar, sep, member = str(path).rpartition(".tar" + SEP)
    return (tar + ".tar", member) if sep and member else None


def flac_member(source: str, source_id: str) -> str:
    """The name of a record's FLAC inside its tar (``<key>.flac``, as the writer names it)."""
    return f"{sample_key(source, source_id)}.flac"


@functools.lru_cache(maxsize=64)
def _members(tar: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size), read from the tar's headers (one per member); cached
    per tar version (a rewritten tar has a new size or mtime). A damaged tar (cut short, a
    garbled header) still yields every member before the damage whose bytes are all there; a
    member cut short is not listed, so no reader ever gets part of a clip."""
    out = {}
    with open(tar, "rb") as fh:
        try:
            tf = tarfile.open(fileobj=fh, mode="r:")
        except tarfile.TarError:
            return out
        members = iter(tf)
        while True:
            try:
                info = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError):
                break                       # the rest of the tar is unreadable
            if info.isfile() and info.offset_data + info.size <= size:
                out[info.name] = (info.offset_data, info.size)
    return out


def locate(tar: str | os.PathLike, member: str) -> tuple[int, int] | None:
    """(offset, size) of ``member`` in the local tar ``tar``; None when either is missing."""
    try:
        st = os.stat(tar)
        return _members(str(tar), st.st_size, st.st_mtime_ns).get(member)
    except (OSError, tarfile.TarError):
        return None


class MemberReader(io.RawIOBase):
    """A read-only, seekable window over ``size`` bytes at ``offset`` of a file."""

    def __init__(self, path: str | os.PathLike, offset: int, size: int):
        super().__init__()
        self._f = open(path, "rb")
        self._start, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self._size - self._pos))
        if not n:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_member(tar: str | os.PathLike, member: str) -> MemberReader:
    where = locate(tar, member)
    if where is None:
        raise FileNotFoundError(f"{member} is not in {tar}")
    return MemberReader(tar, *where)


def open_audio(path: str):
    """What soundfile should open for ``path``: the path itself, or a reader over a member."""
    parts = split_member_path(path)
    return open_member(*parts) if parts else path


def audio_exists(path: str) -> bool:
    """An ordinary file that exists, or a member path whose tar holds the member."""
    if not path:
        return False
    parts = split_member_path(path)
    return locate(*parts) is not None if parts else os.path.isfile(path)


@functools.lru_cache(maxsize=4096)
def released_clip_intact(path: str, pcm_sha256: str) -> bool:
    """Whether ``path``, when it is a member path, holds the samples the transcode hashed
    (``pcm_sha256``); an ordinary file is taken as it is. The tar a released clip is read
    from is found through ``audio/RELEASED_TO``, a note anyone can edit, and a tar there may be
    another corpus's with the same member names: a reader that fingerprints such a member would
    file other audio under this record's hash. Checked once per process and clip."""
    if not split_member_path(path) or not pcm_sha256:
        return True
    from ..transcode.audio import pcm_sha256_of_file

    try:
        with open_audio(path) as f:
            return pcm_sha256_of_file(f) == pcm_sha256
    except Exception:  # noqa: BLE001 - a cut or damaged member is not intact either
        return False


def audio_in_shards(path: str, shard_root: str | None, shard: str, source: str,
                    source_id: str) -> str:
    """``path`` when that file exists, else the member path of the record's FLAC in its local
    tar ``shard_root/shard`` (the keep policy deleted the file once the tar was published)."""
    if not path or os.path.isfile(path) or not shard or not shard_root or "://" in shard_root:
        return path
    return member_path(Path(shard_root) / shard, flac_member(source, source_id))


def extract(tar: str | os.PathLike, member: str, dest: str | os.PathLike) -> None:
    """Copy a member out to ``dest`` (atomic: a killed copy leaves no half file)."""
    with open_member(tar, member) as src, atomic.atomic_path(dest, fsync=True) as tmp:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
