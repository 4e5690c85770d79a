"""The one atomic write: build a file (or folder) under a temporary name beside its destination,
then publish it with one ``os.replace``, so a reader or a killed run sees the old bytes or the new
ones, never half of them.

Temporary names are ``.<name>.tmp-<pid>-<random>.part``: hidden, recognisable by every clean-up
rule in the package (``.tmp-`` and ``.part``), and unique per writer, so two processes writing
the same destination never share a temporary file.
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".tmp-"
TEMP_SUFFIX = ".part"


def temp_name(dest: str | os.PathLike) -> Path:
    """A fresh temporary path in ``dest``'s folder (same filesystem, so the rename is atomic)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name[:80]}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
                          f"{TEMP_SUFFIX}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of ours in flight (left behind only by a killed process)."""
    return name.startswith(".") and TEMP_MARK in name


def publish(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a complete file or folder onto ``dest`` in one step (replacing a file there)."""
    os.replace(src, dest)


@contextmanager
def atomic_path(dest: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``dest``, on any error it is
    removed. ``fsync`` flushes a file to disk before the rename (for files a crash must not
    leave empty: checkpoints, receipts)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        publish(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(dest: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    with atomic_path(dest, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    write_bytes(dest, text.encode("utf-8"), fsync=fsync)
