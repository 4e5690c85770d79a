"""Output roots that may be a local folder or object storage (``s3://...``), through fsspec.

Shards are always built in a local file first. :func:`commit_file` then publishes it in one
step: the atomic rename of :mod:`laion_audio.atomic` on a local root, a single upload (an S3
PUT is atomic: readers see the old object or the whole new one, never a part) on a remote
root. So no reader ever sees half a shard.

S3 endpoints and credentials come from the usual places (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``...) or from ``storage_options`` (e.g. ``{"endpoint_url": ...}``), which are
passed to fsspec unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from . import atomic


class Root:
    """A folder on some filesystem: ``Root("s3://bucket/shards")`` or ``Root("/data/shards")``."""

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        url = str(url)
        self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.path = self.path.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.url = url.rstrip("/")

    def join(self, *parts: str) -> str:
        """A path on ``self.fs`` (not a URL) below the root."""
        return "/".join([self.path, *[p.strip("/") for p in parts if p]])

    def display(self, path: str) -> str:
        """A path as the user should see it (with the ``s3://`` prefix for remote roots)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def size(self, path: str) -> int | None:
        try:
            return int(self.fs.size(path))
        except FileNotFoundError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Small files (sizes.json, index, receipts): temp name + rename locally, one PUT remotely."""
        if self.is_local:
            atomic.write_bytes(path, data, fsync=True)
        else:
            self.fs.pipe_file(path, data)

    def commit_file(self, local_tmp: Path, path: str) -> None:
        """Publish a complete local file at ``path`` in one step, then drop the local copy."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic.publish(local_tmp, path)
        else:
            self.fs.put_file(str(local_tmp), path)
            local_tmp.unlink(missing_ok=True)

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def listdir(self, path: str) -> list[str]:
        """Base names directly inside ``path`` (empty when it does not exist)."""
        try:
            entries = self.fs.ls(path, detail=False, refresh=True) if not self.is_local \
                else self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def find(self, name: str) -> list[str]:
        """Every file called ``name`` below the root, sorted."""
        if not self.is_local:
            self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        return sorted(p for p in found if p.rsplit("/", 1)[-1] == name)

    def open(self, path: str, mode: str = "rb"):
        return self.fs.open(path, mode)
