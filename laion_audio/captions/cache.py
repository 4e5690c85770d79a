"""A persistent caption cache: each distinct keyword set is generated once per model.

AudioSet repeats label combinations (a third of the balanced set shares one with another clip)
and a refresh re-captions the same sets, so the stage looks every set up here first. The key is
sha256 of (captioner identity: weights hash, input format, generation parameters; normalised
keywords in order). Values are the *raw* model output: de-biasing runs after the cache, so a new
de-bias list never needs regeneration. Storage is one SQLite file (safe across processes: each
write is its own transaction; concurrent writers wait on SQLite's lock).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError


def cache_key(identity: dict, keywords: Sequence[str]) -> str:
    blob = json.dumps([identity, list(keywords)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CaptionCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"caption cache {path} is a folder; it names the cache file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._damaged():
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS captions (key TEXT PRIMARY KEY, "
                             "keywords TEXT NOT NULL, caption TEXT NOT NULL)")
            self._db.commit()
        self.hits = 0
        self.misses = 0

    @contextmanager
    def _damaged(self):
        """A file that is not a caption cache (another file, a truncated copy) is the user's to
        remove: one line naming it instead of sqlite3's error from inside a run. A locked
        database stays an OperationalError of its own (it is not damage)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise UserError(f"caption cache {self.path.name} is damaged, not a caption cache or not openable "
                            f"({exc}); delete it (it only saves regeneration) or give another "
                            "--cache") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        with self._lock, self._damaged():
            for s in range(0, len(keys), 500):
                part = keys[s:s + 500]
                q = f"SELECT key, caption FROM captions WHERE key IN ({','.join('?' * len(part))})"
                found.update(self._db.execute(q, part).fetchall())
        return found

    def put_many(self, items: Iterable[tuple[str, Sequence[str], str]]) -> None:
        rows = [(k, json.dumps(list(kw), ensure_ascii=False), c) for k, kw, c in items]
        with self._lock, self._damaged(), self._db:
            self._db.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM captions").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "CaptionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
