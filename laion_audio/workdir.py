"""The work folder: where a build keeps its ledger, raw downloads, FLACs and stores.

One object owns the path convention, so stages never switch between relative and absolute
paths themselves: the ledger stores paths inside the work folder relative to it (a work folder
can be moved, copied, or mounted at another path on another node), and :meth:`WorkDir.resolve`
hands a stage a record whose paths are absolute; :meth:`WorkDir.relativize` turns a stage's
result back before it is journaled. A ledger folder's work folder is its parent
(``WORK/ledger``), as ``laion-audio build`` lays it out.

Layout::

    ledger/                 the Parquet ledger
    caption_cache.sqlite    raw T5 captions by model + parameters + keywords
    crawl/<source>.json     crawl checkpoints (paging state)
    raw/<source>/           fetched audio as the site served it (deleted once its FLAC is
                            written and hashed, unless --keep-raw)
    audio/<source>/         48 kHz mono FLAC (deleted once its tar is published, unless
                            --keep-audio; audio/RELEASED_TO names that shard root)
    fingerprints/           fingerprint store (filters)
    shards/                 WebDataset shards (unless --shards-to elsewhere)
    stats/                  build.json (per-stage accounting), summary.json
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from .records import Record

#: folders of a work folder, in flow order (the summary reports disk use of each)
FOLDERS = ("ledger", "crawl", "cache", "raw", "audio", "fingerprints", "shards", "stats")


def _folder(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"``<root>/{name}``")


class WorkDir:
    """Paths of one work folder; records' ``audio_path``/``flac_path`` are stored relative to it."""

    def __init__(self, root: str | os.PathLike, *, create: bool = False):
        self.root = Path(root).resolve()
        if create:
            for sub in ("crawl", "raw", "audio", "stats"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_ledger(cls, ledger_dir: str | os.PathLike,
                  paths_relative_to: str | os.PathLike | None = None) -> "WorkDir":
        """The work folder of a ledger folder: its parent, unless the user says otherwise."""
        return cls(paths_relative_to if paths_relative_to else Path(ledger_dir).resolve().parent)

    # --- folders (``work.audio`` is ``work.root / "audio"``, ...)
    ledger = _folder("ledger")
    raw = _folder("raw")
    audio = _folder("audio")
    fingerprints = _folder("fingerprints")
    stats = _folder("stats")

    def crawl_state(self, source: str) -> Path:
        return self.root / "crawl" / f"{source}.json"

    def crawl_seen(self, source: str) -> Path:
        return self.root / "crawl" / f"{source}.seen"

    @property
    def caption_cache(self) -> Path:
        """The caption cache: one per work folder, shared by `build` and `caption` (beside
        the ledger, not in it: the ledger folder holds only the ledger's own files)."""
        return self.root / "caption_cache.sqlite"

    # --- where the keep policy released FLACs to
    @property
    def _released_note(self) -> Path:
        return self.audio / "RELEASED_TO"

    def released_root(self) -> str | None:
        """The local shard root whose tars hold the FLACs the keep policy deleted from
        ``audio/`` (stored relative to the work folder when inside it, so a moved work folder
        still finds its own shards). Work folders from before this note: ``shards/`` if any."""
        default = str(self.root / "shards") if (self.root / "shards").is_dir() else None
        try:
            root = self._released_note.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return default
        except (UnicodeDecodeError, OSError):
            # a damaged note: the default root (the restore and the fingerprint readers check
            # each member's PCM hash, so a wrong root costs clips, never wrong audio)
            return default
        return self.abs(root) if root else default

    def note_released(self, shard_root: str) -> None:
        """Written once: the release runs tar by tar, and a note already there is not
        rewritten (and fsynced) for each tar."""
        from . import atomic

        text = self.rel(shard_root) + "\n"
        try:
            if self._released_note.read_text(encoding="utf-8") == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        self.audio.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self._released_note, text, fsync=True)

    def forget_released(self) -> None:
        """Every released FLAC is back in ``audio/``: no shard root is needed to read them."""
        self._released_note.unlink(missing_ok=True)

    def remove_partial_files(self) -> int:
        """Delete the temporary files a killed run left in ``raw/`` and ``audio/`` (a download,
        a transcode or a restored FLAC cut by kill -9; see :mod:`laion_audio.atomic`). Only
        while no other run writes this work folder: the caller holds the ledger's lock."""
        from .atomic import is_temp

        removed = 0
        for folder in (self.raw, self.audio):
            for dirpath, _dirs, names in os.walk(folder):
                for name in names:
                    if is_temp(name):
                        try:
                            os.unlink(os.path.join(dirpath, name))
                            removed += 1
                        except FileNotFoundError:
                            pass
        return removed

    # --- path convention
    def rel(self, path: str) -> str:
        """Stored form: relative to the work folder when inside it, else absolute."""
        if not path:
            return path
        p = (Path(path) if os.path.isabs(path) else self.root / path).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def abs(self, path: str) -> str:
        """Absolute form of a stored path (absolute paths are left alone)."""
        if not path:
            return path
        return str(path) if os.path.isabs(path) else str(self.root / path)

    def resolve(self, rec: Record) -> Record:
        """A copy of ``rec`` with absolute paths, for a stage to read and write files."""
        rec = copy.copy(rec)
        rec.audio_path, rec.flac_path = self.abs(rec.audio_path), self.abs(rec.flac_path)
        return rec

    def relativize(self, rec: Record) -> Record:
        """``rec`` with its paths in stored form (in place; returned for chaining)."""
        rec.audio_path, rec.flac_path = self.rel(rec.audio_path), self.rel(rec.flac_path)
        return rec

    def inside(self, path: str, folder: Path) -> bool:
        """True when ``path`` (stored or absolute) lies inside ``folder`` of this work folder."""
        if not path:
            return False
        return Path(self.abs(path)).resolve().is_relative_to(folder.resolve())

    def public(self, text: str, shard_root: str | None = None) -> str:
        """``text`` (a report's JSON) as we publish it: the work folder becomes ``.`` and a path
        in it relative to it, a local shard root outside it its last name, so stats name no
        folder of the user's machine (the terminal still shows the full paths)."""
        places = [(str(self.root), ".")]
        given = str(Path(os.path.abspath(self.root)))
        if given != str(self.root):
            places.append((given, "."))
        if shard_root and "://" not in shard_root:
            sr = Path(shard_root).resolve()
            if not sr.is_relative_to(self.root):
                places.insert(0, (str(sr), sr.name))
        for place, public in places:   # whole path components only (not ``out2`` for ``out``)
            text = re.sub(re.escape(place) + r"(/|(?![\w.-]))",
                          lambda m, p=public: ("" if p == "." else p + "/") if m.group(1) else p, text)
        return text

    # --- disk
    def disk_usage(self, shard_root: str | None = None) -> dict[str, int]:
        """Bytes per folder of the work folder (and of a local shard root outside it)."""
        out = {}
        for name in FOLDERS:
            folder = self.root / name
            if folder.is_dir():
                out[name] = folder_bytes(folder)
        if shard_root and "://" not in shard_root:
            sr = Path(shard_root).resolve()
            if sr.is_dir() and not sr.is_relative_to(self.root):
                out["shards"] = folder_bytes(sr)
        return out


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
