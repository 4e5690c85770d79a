"""A folder of audio files as a source: the user's own sounds, or the README's demo corpus.

Captions, first match wins per file:
1. a caption table at the folder root (``captions.csv``/``metadata.csv`` with a file column
   ``file_name``/``file``/``path``/``audio`` and caption columns ``caption``/``text``/
   ``caption_1``..``caption_5``; or ``captions.json``/``metadata.jsonl`` with the same keys);
2. a sidecar ``<stem>.json`` in LAION's processed format (``text`` str or list, ``tag``,
   ``original_data``) or ``<stem>.txt`` (one caption per line);
3. the cleaned file name ("dog_bark_03.wav" -> "dog bark").

Caption files of public sets can be named with ``--captions-file`` (repeatable, anywhere on disk):
- AudioCaps style CSV (``audiocap_id,youtube_id,start_time,caption``; one row per caption):
  rows are grouped per clip (``youtube_id`` + ``start_time``) into one record with all its
  captions; the audio file is found by stem ``<youtube_id>``, ``Y<youtube_id>``,
  ``<youtube_id>_<start>`` or ``<audiocap_id>``; ``original_data["youtube_id"]`` is set so the
  eval-overlap filter sees it (no trim window: AudioCaps downloads are already cut);
- Clotho style CSV (``file_name,caption_1..caption_5``), or any CSV with a file and caption columns;
- WavCaps/Clotho JSON (``{"data": [{"id", "caption" | "caption_1".., "wav"/"audio"}, ...]}``),
  matched by file name or by stem ``<id>``.
A listed clip whose audio is not in the folder becomes a ``missing_file`` failed record, so a
partial download is counted rather than silently smaller.

The id is the file's path relative to the folder, so two files with the same name in
different sub-folders are two records (LAION's filename scripts overwrote one with the other).
The record's ``url`` is that relative path too (percent-encoded bytes, so any file name round-trips),
never the folder's absolute path: moving the input folder changes no record, and no path of the
user's machine reaches a shard. A name that is not valid UTF-8 (``caf\xe9.wav`` from a Latin-1
system) reads its other bytes as Latin-1 (``café.wav``); should that equal a real UTF-8 name in
the folder, ``~`` and 8 hex digits of the name's bytes are added before the extension.
Captions, tags and titles pass the one text rule of every source (``crawlers.base.clean_record``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import logging
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import quote, unquote_to_bytes

from laion_audio import defaults
from laion_audio import atomic
from laion_audio.archives import utf8_name

from laion_audio.errors import UserError
from laion_audio.records import Failure, FailureCode, Record, Status

from .base import Source

log = logging.getLogger(__name__)

_FILE_COLUMNS = ("file_name", "file", "filename", "path", "audio", "audio_filename", "fname")
_CAPTION_COLUMNS = ("caption", "text", "description") + tuple(f"caption_{i}" for i in range(1, 6))


def caption_from_filename(name: str) -> str:
    """'Dog_Bark-Large_03.wav' -> 'Dog Bark Large'. Drops the extension, turns separators into
    spaces, removes trailing take numbers; keeps everything else (no guessing)."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    text = re.sub(r"[_\-]+", " ", stem)
    text = re.sub(r"(\s+(take\s*)?#?\d+[a-z]?)+\s*$", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+", " ", text).strip()
    return text or stem


def is_bare_stem(text: str, path: Path) -> bool:
    """A caption that says nothing but the file's name: the stem itself ("sound000"), or one
    word glued to digits or an id ("take_12", "a1b2c3")."""
    t = text.strip().rstrip(".")
    if not t:
        return True
    if t.lower() in (path.stem.lower(), path.name.lower(), caption_from_filename(path.name).lower()) \
            and " " not in t:
        return True
    return bool(re.fullmatch(r"[A-Za-z]*[_\-]?\d+[A-Za-z0-9_\-]*", t))


def _read_caption_table(root: Path) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for name in ("captions.csv", "metadata.csv"):
        path = root / name
        if path.is_file():
            with path.open(newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    _add_row(table, row)
    for name in ("captions.json", "metadata.json", "metadata.jsonl", "captions.jsonl"):
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = data if isinstance(data, list) else [dict(v, file_name=k) for k, v in data.items()]
        for row in rows:
            _add_row(table, row)
    return table


def _read_caption_file(path: Path) -> list[dict]:
    """Entries ``{"keys": [names/stems], "texts", "tags", "extra", "row_id"}`` of one caption file."""
    entries: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
        if rows and {"youtube_id", "caption"} <= set(rows[0]):
            return _audiocaps_entries(rows)
    else:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]                       # WavCaps / Clotho-derived JSON
            rows = data if isinstance(data, list) else [dict(v, file_name=k) for k, v in data.items()]
    for row in rows:
        table: dict[str, dict] = {}
        _add_row(table, dict(row))
        for key, info in table.items():
            keys = [key, Path(key).name, Path(key).stem]
            if row.get("id") not in (None, ""):
                keys.append(str(row["id"]))
            entries.append(dict(info, keys=keys, row_id=key))
        if not table and row.get("id") not in (None, ""):   # WavCaps rows name no file: by id
            texts = [str(row[c]).strip() for c in _CAPTION_COLUMNS if row.get(c)]
            extra = {k: v for k, v in row.items() if k not in _CAPTION_COLUMNS and k != "audio"}
            entries.append({"keys": [str(row["id"])], "texts": texts, "tags": [], "extra": extra,
                            "row_id": str(row["id"])})
    return entries


def _audiocaps_entries(rows: list[dict]) -> list[dict]:
    clips: dict[tuple[str, str], dict] = {}
    for row in rows:
        ytid = (row.get("youtube_id") or "").strip()
        start_raw = (row.get("start_time") or "0").strip()
        if not ytid:
            continue
        try:
            start = float(start_raw)
        except ValueError:
            start = 0.0
        clip = clips.setdefault((ytid, start_raw), {
            "keys": [ytid, f"Y{ytid}", f"{ytid}_{start_raw}", f"{ytid}_{int(start)}",
                     f"{ytid}_{int(start * 1000)}", f"Y{ytid}_{start:.3f}"],
            "texts": [], "tags": [], "row_id": f"{ytid}_{int(start * 1000)}",
            "extra": {"youtube_id": ytid, "start_seconds": start, "audiocap_ids": []}})
        cap_id = (row.get("audiocap_id") or "").strip()
        if cap_id:
            clip["extra"]["audiocap_ids"].append(cap_id)
            clip["keys"].append(cap_id)
        caption = (row.get("caption") or "").strip()
        if caption:
            clip["texts"].append(caption)
    return list(clips.values())


def _add_row(table: dict[str, dict], row: dict) -> None:
    file_col = next((c for c in _FILE_COLUMNS if row.get(c)), None)
    if file_col is None:
        return
    texts = []
    for col in _CAPTION_COLUMNS:
        value = row.get(col)
        if isinstance(value, list):
            texts.extend(str(v).strip() for v in value if str(v).strip())
        elif value and str(value).strip():
            texts.append(str(value).strip())
    tags = row.get("tags") or row.get("tag") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    extra = {k: v for k, v in row.items() if k not in _CAPTION_COLUMNS and k != file_col}
    table[str(row[file_col]).replace("\\", "/")] = {"texts": texts, "tags": list(tags), "extra": extra}


def _sidecar(path: Path) -> dict | None:
    js = path.with_suffix(".json")
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
        text = data.get("text")
        texts = [text] if isinstance(text, str) else [str(t) for t in (text or [])]
        return {"texts": [t for t in texts if t.strip()], "tags": list(data.get("tag") or []),
                "extra": data.get("original_data") or {}}
    txt = path.with_suffix(".txt")
    if txt.is_file():
        lines = [ln.strip() for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines()]
        return {"texts": [ln for ln in lines if ln], "tags": [], "extra": {}}
    return None


class LocalSource(Source):
    name = "local"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--input", help="folder of audio files (local source)")
        parser.add_argument("--dataset-name", default=None,
                            help="shard folder name for the local source (default: local)")
        parser.add_argument("--captions-file", action="append", default=None, metavar="CSV_OR_JSON",
                            help="AudioCaps/Clotho/WavCaps-style caption file for the local source "
                                 "(repeatable)")

    def __init__(self, input: str | Path | None = None, dataset_name: str | None = None,
                 captions_file: list[str] | str | None = None, **options):
        super().__init__(**options)
        if input is None:
            raise UserError("the local source needs --input DIR (a folder of audio files)")
        self.root = Path(input).resolve()
        if not self.root.is_dir():
            raise UserError(f"--input {input} is not a folder"
                            + ("" if self.root.exists() else " (it does not exist)"))
        self.dataset = dataset_name or self.name
        if isinstance(captions_file, (str, Path)):
            captions_file = [captions_file]
        self.caption_files = [Path(p) for p in (captions_file or [])]
        for p in self.caption_files:
            if not p.is_file():
                raise UserError(f"--captions-file {p} does not exist")

    def check(self) -> None:
        """Each --captions-file must parse and name files with captions; one whose columns
        match nothing would silently leave every caption to the file name."""
        for p in self.caption_files:
            try:
                entries = _read_caption_file(p)
            except (ValueError, UnicodeDecodeError, csv.Error) as exc:
                raise UserError(f"--captions-file {p} cannot be read: {exc}")
            if not entries:
                raise UserError(
                    f"--captions-file {p}: no row names a file; want a column "
                    f"{'/'.join(_FILE_COLUMNS[:4])} (or AudioCaps' youtube_id) and "
                    f"{'/'.join(_CAPTION_COLUMNS[:3])}")
            if not any(e["texts"] for e in entries):
                raise UserError(f"--captions-file {p}: no caption text in any row; want a column "
                                + "/".join(_CAPTION_COLUMNS[:3]))

    def crawl(self, state: dict) -> Iterator[Record]:
        table = _read_caption_table(self.root)
        entries = [e for p in self.caption_files for e in _read_caption_file(p)]
        by_key: dict[str, dict] = {}
        for entry in entries:
            for key in entry["keys"]:
                by_key.setdefault(key, entry)
        used: set[int] = set()
        stems = 0
        # keyed by the parts tuple: Path's own ordering, without Path.__lt__ (a Python-level
        # comparison that made the sort ~15% of the crawl at 64k files, growing as n log n)
        files = sorted((p for p in self.root.rglob("*")
                        if p.suffix.lower() in defaults.AUDIO_EXTENSIONS and p.is_file() and not p.is_symlink()),
                       key=lambda p: p.parts)
        valid = {p.relative_to(self.root).as_posix() for p in files}
        valid = {r for r in valid if utf8_name(r) == r}
        for path in files:
            raw_rel = path.relative_to(self.root).as_posix()
            rel = local_id(raw_rel, valid)
            name, stem = PurePosixPath(rel).name, PurePosixPath(rel).stem
            entry = by_key.get(rel) or by_key.get(name) or by_key.get(stem)
            if entry is not None:
                used.add(id(entry))
            info = entry or table.get(rel) or table.get(name) or _sidecar(path)
            if info and info["texts"]:
                texts, rule = info["texts"], "caption table or sidecar"
            else:
                texts, rule = [caption_from_filename(name)], "cleaned file name"
            provenance = {"rule": rule, "source": "local"}
            if all(is_bare_stem(t, path) for t in texts):
                provenance["warning"] = "caption_is_file_name"     # counted in the build summary
                stems += 1
            tags = list(info["tags"]) if info else []
            if not tags and len(PurePosixPath(rel).parts) > 1:
                tags = list(PurePosixPath(rel).parts[:-1])
            yield Record(
                source=self.dataset, source_id=rel, url=local_url(raw_rel), title=stem,
                tags=tags, texts=texts, caption_provenance=provenance,
                original_data={"file_path": rel, **(info["extra"] if info else {})},
            )
        if stems:
            log.warning("local: %d of %d captions are only a file name (e.g. 'sound000'); add a "
                        "--captions-file or sidecar .txt/.json files", stems, len(files))
        for entry in entries:          # listed in a caption file, audio not in the folder
            if id(entry) not in used:
                yield Record(source=self.dataset, source_id=f"missing:{entry['row_id']}",
                             texts=list(entry["texts"]), original_data=dict(entry["extra"]),
                             status=Status.FAILED, failure_stage="crawl",
                             failure_code=FailureCode.MISSING_FILE,
                             failure_message=f"{entry['row_id']} is listed but its audio is not "
                                             "in the input folder")

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        path = self.path_of(record)
        if path is None or not path.is_file():
            raise Failure(FailureCode.MISSING_FILE,
                          f"{record.source_id} is no longer in the input folder")
        if utf8_name(str(path)) != str(path):
            # the ledger stores audio_path as UTF-8 text (and resolves symlinks): a name that is
            # not UTF-8 is reached through a hard link (a copy across file systems) with our
            # own name in the raw folder
            link = Path(dest_dir) / (hashlib.sha1(os.fsencode(str(path))).hexdigest()[:20]
                                     + utf8_name(path.suffix).lower()[:12])
            link.parent.mkdir(parents=True, exist_ok=True)
            if not (link.is_file() and os.path.samefile(link, path)):
                tmp = link.with_name(f".{link.name}.partial")
                tmp.unlink(missing_ok=True)
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
                atomic.publish(tmp, link)
            return link
        return path

    def path_of(self, record: Record) -> Path | None:
        """The file a record names, inside ``--input`` (records of older versions stored the
        absolute path; those are still honoured when they lie inside the folder)."""
        url = record.url
        if url.startswith("/"):
            path = Path(url)
        else:
            path = self.root / os.fsdecode(unquote_to_bytes(url))
        try:
            if not path.resolve().is_relative_to(self.root):
                return None
        except (OSError, ValueError):
            return None
        return path


def local_url(raw_rel: str) -> str:
    """The relative path as a relative URL: its bytes percent-encoded, so names that are not
    UTF-8 round-trip exactly (``unquote_to_bytes``)."""
    return quote(os.fsencode(raw_rel), safe="/")


def local_id(raw_rel: str, valid: set[str]) -> str:
    """The record id of a file: its relative path as valid UTF-8 (see the module doc)."""
    rel = utf8_name(raw_rel)
    if rel == raw_rel or rel not in valid:
        return rel
    digest = hashlib.sha1(os.fsencode(raw_rel)).hexdigest()[:8]
    p = PurePosixPath(rel)
    return p.with_name(f"{p.stem}~{digest}{p.suffix}").as_posix()


SOURCE = LocalSource
