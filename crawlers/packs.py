"""Purchased or bundled sound packs (Free To Use Sounds, Paramount Motion, Sonniss GDC, We Sound
Effects): the shared base. Each pack module is a thin subclass naming the source.

Input, per source, any mix of (``--<source>-input``, repeatable):
- a folder holding the unpacked pack;
- a zip or tar archive (``.zip``, ``.tar``, ``.tar.gz``, ...), extracted safely into the cache
  (:mod:`laion_audio.archives`: no zip slip, no links or devices, bounded sizes, zip-bomb checks);
- an ``http(s)://`` URL of such an archive, downloaded once through :mod:`laion_audio.http`.

Caption rule (LAION's "filename dataset" rule, fixed): LAION took the WAV base name verbatim and
wrote outputs flat, so other formats were ignored and same-named files in different folders
overwrote each other. Here every audio format counts, the id is the path inside the input (two
``Hit 01.wav`` in two folders are two records), and the caption is the *cleaned* file name
(:func:`clean_pack_caption`); the folder names become ``tags``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import unquote, urlsplit

from laion_audio import defaults
from laion_audio.archives import ArchiveLimits, extract_archive, extract_one, printable_name
from laion_audio.http import redact
from laion_audio.records import Failure, FailureCode, Record, Status

from .base import Source, clean_text

CAPTION_RULE = "pack file name, cleaned"
CAPTION_RULE_VERSION = 1

#: UCS (Universal Category System) file names: CatID_FXName_CreatorID_SourceID, e.g.
#: "DOORWood_Old Barn Door Creak_JDSFX_Farm.wav". CatIDs are 2-5 capitals + a Capitalised word.
_UCS = re.compile(r"^(?P<cat>[A-Z]{2,5}[A-Z][a-z]+)_(?P<fx>[^_]+)_(?P<creator>[^_]+)(?:_(?P<src>.+))?$")
#: Field-recorder names that Free To Use Sounds appends to its keyword lists
#: ("..., Hanoi, Vietnam, Zoom F8n"): gear, not sound.
_RECORDER = re.compile(
    r"(?:,\s*|\s+-\s+|\s+)(?:zoom\s*[fh]\d+\w*|tascam\s*[\w-]+|sound\s*devices\s*[\w-]*|mixpre[\w-]*|"
    r"sony\s*pcm[\w-]*|roland\s*r-?\d+\w*|rode\s*nt[\w-]*|sennheiser\s*mkh\s*\d+\w*)"
    r"(?:\s*(?:ms|xy|ab|ortf|stereo|mono))?\s*$", re.IGNORECASE)
#: Numbering segments: " - 02 - ", "_07", " 3", "(2)", "take 4", "#12", and zero-padded take
#: codes such as "B02" (a leading zero marks numbering; "M16" stays).
_NUM_TOKEN = r"(?:take\s*\d+|#\d+|\(\d+\)|\d+[a-z]?|[A-Za-z]0\d+)"
_TRAILING_NUM = re.compile(rf"(?:[\s_\-.,]+{_NUM_TOKEN})+\s*$", re.IGNORECASE)
_LEADING_NUM = re.compile(r"^\d+(?:[\s_.\-]+|$)")
_INNER_NUM = re.compile(r"\s+-\s+\d+[a-z]?\s+-\s+", re.IGNORECASE)


def _squash(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(\s*-\s*){2,}", " - ", text)
    return text.strip(" -_.,;")


def clean_pack_caption(filename: str, parents: tuple[str, ...] = (),
                       vendor_codes: tuple[str, ...] = ()) -> tuple[str, dict]:
    """Caption from a pack file name, plus what was taken out of it (for ``original_data``).

    Examples from the real packs (reference/sources.md, the GDC bundle listings):
    - "Insect, Fly - 02 - take off, flying away, landing.wav" -> "Insect, Fly - take off, flying away, landing"
    - "Future Weapons 2 - Bio Gun - reload_4.wav" in "Soundmorph - Future Weapons 2" -> "Bio Gun - reload"
    - "003_Amb_External_Amsterdam_Amusementparkt.wav" -> "Amb External Amsterdam Amusementparkt"
    - "Traffic, Busy, ..., Hanoi, Vietnam, Zoom F8n.wav" -> "Traffic, Busy, ..., Hanoi, Vietnam"
    """
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    stem = stem.strip()
    removed: dict = {}
    ucs = _UCS.match(stem)
    if ucs and " " in (ucs.group("fx") or ""):
        removed["ucs"] = {k: v for k, v in ucs.groupdict().items() if v}
        stem = ucs.group("fx")
    for code in vendor_codes:
        m = re.match(rf"^{re.escape(code)}(?:[_\s]+|\s*-\s*)", stem, re.IGNORECASE)
        if m and len(stem) > m.end():
            removed["vendor_code"] = code
            stem = stem[m.end():]
            break
    m = _LEADING_NUM.match(stem)
    if m and len(stem) > m.end():
        removed["leading_number"] = stem[:m.end()].strip(" _.-")
        stem = stem[m.end():]
    # a pack-name prefix repeated in every file ("Rupture - Concrete_Impact" in "Soundmorph - Rupture")
    if parents:
        folder = parents[-1].strip()
        for prefix in {folder, folder.rsplit(" - ", 1)[-1].strip()}:
            if len(prefix) >= 3 and stem.lower().startswith(prefix.lower()):
                rest = stem[len(prefix):]
                if re.match(r"^\s*[-_:]\s*\S", rest):
                    removed["pack_prefix"] = prefix
                    stem = re.sub(r"^\s*[-_:]\s*", "", rest)
                    break
    text = stem.replace("_", " ")
    text = re.sub(r"\s+", " ", text).strip()
    gear = _RECORDER.search(text)
    if gear and gear.start() > 0:
        removed["recorder"] = text[gear.start():].strip(" ,-")
        text = text[:gear.start()]
    text = _INNER_NUM.sub(" - ", text)
    trailing = _TRAILING_NUM.search(text)
    if trailing and trailing.start() > 0:
        removed["number"] = text[trailing.start():].strip(" _-.,")
        text = text[:trailing.start()]
    text = _squash(text)
    if not text:   # the name was only a number or a code: keep it rather than caption nothing
        text = _squash(filename.rsplit(".", 1)[0].replace("_", " "))
    return text, removed


def _is_url(value: str) -> bool:
    return str(value).lower().startswith(("http://", "https://"))


def _label_for(value: str) -> str:
    """Stable short name for one input: the folder/archive/URL file name (not its location, so
    ids survive moving the pack)."""
    if _is_url(value):
        name = unquote(PurePosixPath(urlsplit(value).path).name) or urlsplit(value).netloc
    else:
        name = Path(value).name
    name = re.sub(r"(\.tar)?\.(zip|tar|tgz|gz|bz2|xz|tbz2|txz)$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^\w .,()&+-]", "_", name).strip() or "pack"
    return name[:120]


def _labels(inputs: list[str]) -> list[str]:
    """One id prefix per input: its :func:`_label_for`, with ``~2``, ``~3``... for a later
    input of the same name (``a/bundle.zip`` and ``b/bundle.zip``), so no two inputs share
    ids and one never overwrites the other's records."""
    used: set[str] = set()
    out = []
    for value in inputs:
        base = label = _label_for(value)
        n = 1
        while label in used:
            n += 1
            label = f"{base}~{n}"
        used.add(label)
        out.append(label)
    return out


@contextlib.contextmanager
def _cache_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created beside the cache entry it guards): builds
    sharing a ``--pack-cache-dir`` take turns on one archive instead of deleting each other's
    extraction in progress; the second finds the first's finished extraction and reuses it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _default_cache_dir() -> Path:
    base = os.environ.get("LAION_AUDIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "laion-audio")
    return Path(base) / "packs"


def _add_once(parser, *flags, **kwargs) -> None:
    """Pack sources share some options; argparse refuses a flag added twice."""
    if not any(f in getattr(parser, "_option_string_actions", {}) for f in flags):
        parser.add_argument(*flags, **kwargs)


class PackSource(Source):
    """Base for the four pack sources. Subclasses set ``name``, ``paper_samples``, ``license``,
    ``site`` and optionally ``vendor_codes`` (file-name prefixes that name the vendor)."""

    license: str = ""
    site: str = ""
    vendor_codes: tuple[str, ...] = ()

    @classmethod
    def add_arguments(cls, parser) -> None:
        flag = f"--{cls.name.replace('_', '-')}-input"
        _add_once(parser, flag, action="append", default=None, metavar="PATH_OR_URL",
                  help=f"{cls.name}: a folder, zip/tar archive or archive URL (repeatable)")
        _add_once(parser, "--pack-cache-dir", default=None,
                  help="where pack archives are downloaded and extracted "
                       "(default $LAION_AUDIO_CACHE/packs or ~/.cache/laion-audio/packs; "
                       "shared storage on a cluster)")
        _add_once(parser, "--pack-max-member-mb", type=float, default=None,
                  help="largest archive member accepted (default 1024 MB)")
        _add_once(parser, "--pack-max-total-gb", type=float, default=None,
                  help="largest total extracted size per archive (default 256 GB)")

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"inputs": [f"{base}/packs/{cls.name}.zip"], "cache_dir": str(work / "cache" / "packs")}

    def __init__(self, inputs: list[str] | str | None = None, cache_dir: str | Path | None = None,
                 limits: ArchiveLimits | None = None, http=None, **options):
        super().__init__(**options)
        if inputs is None:   # CLI dest name, or the prefix-stripped name (HttpSource convention)
            inputs = options.get(f"{self.name}_input") or options.get("input")
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        self.inputs = [str(i) for i in (inputs or [])]
        self.cache_dir = Path(cache_dir or options.get("pack_cache_dir") or _default_cache_dir())
        if limits is None:
            kw = {}
            if options.get("pack_max_member_mb"):
                kw["max_member_bytes"] = int(options["pack_max_member_mb"] * (1 << 20))
            if options.get("pack_max_total_gb"):
                kw["max_total_bytes"] = int(options["pack_max_total_gb"] * (1 << 30))
            limits = ArchiveLimits(**kw)
        self.limits = limits
        self._http = http

    # ------------------------------------------------------------------ inputs
    @property
    def http(self):
        if self._http is None:
            from laion_audio.http import HttpClient
            self._http = HttpClient(max_bytes=self.limits.max_total_bytes)
        return self._http

    def _download(self, url: str, label: str) -> Path:
        """Download an archive URL once (atomic rename by the HTTP layer, so a file that exists
        is complete). The file name is ours, never the server's."""
        # keyed by the redacted URL: a fresh signature on the same object is the same archive
        digest = hashlib.sha1(redact(url).encode("utf-8")).hexdigest()[:12]
        dest = self.cache_dir / self.name / "downloads" / f"{digest}.archive"
        with _cache_lock(dest.with_name(f".{dest.name}.lock")):
            if not dest.is_file():
                self.http.download(url, dest, expect=None, max_bytes=self.limits.max_total_bytes)
        return dest

    def _real_url(self, stored: str) -> str | None:
        """The URL to fetch for a stored (redacted) archive URL: credentials are never stored,
        so they come from the user's input again (the same ``--<source>-input``)."""
        for value in self.inputs:
            if _is_url(value) and redact(value) == stored:
                return value
        return None if "***" in stored else stored

    def _audio_wanted(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in defaults.AUDIO_EXTENSIONS

    def _members(self, value: str) -> Iterator[tuple[str, Path | None, dict, Failure | None]]:
        """(relative name, local path, extra original_data, failure) for one input."""
        archive_url = redact(value) if _is_url(value) else None
        if archive_url:
            archive = self._download(value, _label_for(value))
        else:
            archive = Path(value).expanduser().resolve()
            if archive.is_dir():
                yield from self._folder_members(archive)
                return
            if not archive.is_file():
                raise Failure(FailureCode.MISSING_FILE, f"pack input {value} does not exist")
        # named after the input as given (URL or path), so the work folder's location never
        # changes a record (resumed and fresh builds compare byte for byte)
        label_digest = hashlib.sha1(redact(value).encode("utf-8")).hexdigest()[:8]
        dest = self.cache_dir / self.name / "extracted" / f"{_label_for(value)}-{label_digest}"
        with _cache_lock(dest.with_name(f".{dest.name}.lock")):
            result = extract_archive(archive, dest, limits=self.limits, want=self._audio_wanted)
        # the archive's name, never its local path: shards are published, the user's folders
        # are not (fetch finds the archive again among the inputs by this name)
        extra = {"archive": archive.name if not archive_url else _label_for(value)}
        if archive_url:
            extra["archive_url"] = archive_url
        for m in result.members:
            yield m.name, Path(m.path), dict(extra, member_bytes=m.size), None
        for r in result.rejected:
            yield r.name, None, dict(extra), Failure(r.code, r.message)

    def _folder_members(self, root: Path):
        for path in sorted(root.rglob("*"), key=lambda p: p.parts):   # Path order, without Path.__lt__
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                if self._audio_wanted(rel):
                    yield rel, None, {}, Failure(FailureCode.UNSAFE_PATH, "symlink in pack folder")
                continue
            if path.is_file() and self._audio_wanted(rel):
                yield rel, path, {"folder": root.name, "member_bytes": path.stat().st_size}, None

    # ------------------------------------------------------------------ Source API
    def crawl(self, state: dict) -> Iterator[Record]:
        if not self.inputs:
            raise ValueError(f"{self.name}: no input; pass --{self.name.replace('_', '-')}-input "
                             "FOLDER|ARCHIVE|URL")
        seen: set[str] = set()
        for value, label in zip(self.inputs, _labels(self.inputs)):
            try:
                members = sorted(self._members(value), key=lambda m: m[0])
            except Failure as exc:
                # the whole input failed (unreachable URL, not an archive): one failed record
                yield self._failed(f"{label}/", exc, {"input": redact(value)})
                continue
            for rel, path, extra, failure in members:
                source_id = base_id = f"{label}/{printable_name(rel)}"
                n = 1
                while source_id in seen:   # a rejected duplicate member: its own row, not lost
                    n += 1
                    source_id = f"{base_id}#{n}"
                seen.add(source_id)
                if failure is not None:
                    yield self._failed(source_id, failure, dict(extra, file_path=printable_name(rel)))
                    continue
                yield self.record_for(source_id, rel, path, extra)

    def record_for(self, source_id: str, rel: str, path: Path, extra: dict) -> Record:
        parts = PurePosixPath(rel).parts
        # names come from an archive: HTML/script or control characters are neutralised like site text
        parents = tuple(clean_text(p, 255) for p in parts[:-1] if clean_text(p, 255))
        caption, removed = clean_pack_caption(parts[-1], parents, self.vendor_codes)
        caption = clean_text(caption, 500) or clean_text(PurePosixPath(rel).stem, 500) or "sound"
        author = removed.get("ucs", {}).get("creator", "")
        # a member of a downloaded archive is named by the archive URL + its path inside; the
        # extracted copy is only a local cache (audio_path), never part of the record's identity
        # (a local input is named by its file/folder name, not where it lies on this machine)
        archive_url = extra.get("archive_url")
        if archive_url:
            url = f"{archive_url}#{rel}"
        elif extra.get("archive"):
            url = f"{extra['archive']}#{rel}"
        else:
            url = f"{extra.get('folder', '')}/{rel}"
        return Record(
            source=self.name, source_id=source_id, url=url, audio_path=str(path),
            title=clean_text(PurePosixPath(rel).stem, 500),
            tags=list(parents), license=self.license, author=author, texts=[caption],
            caption_provenance={"rule": CAPTION_RULE, "version": CAPTION_RULE_VERSION,
                                "file_name": parts[-1], **({"removed": removed} if removed else {})},
            original_data={"file_path": rel, "format": PurePosixPath(rel).suffix.lower().lstrip("."),
                           **extra},
        )

    def _failed(self, source_id: str, failure: Failure, extra: dict) -> Record:
        return Record(source=self.name, source_id=source_id, license=self.license,
                      original_data=extra, status=Status.FAILED, failure_stage="crawl",
                      failure_code=failure.code, failure_message=failure.message[:500])

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        """The extracted file; when this machine does not have the crawl's extraction folder, the
        member is extracted again from the archive (same safety checks)."""
        if record.audio_path and Path(record.audio_path).is_file():
            return Path(record.audio_path)
        od = record.original_data
        archive = od.get("archive_path")          # ledgers written before names replaced paths
        folder = od.get("folder")
        for value in self.inputs:                 # the same input, wherever it lies now
            if _is_url(value):
                continue
            local = Path(value).expanduser()
            if folder and local.is_dir() and local.name == folder:
                member = local.joinpath(*PurePosixPath(od.get("file_path", "")).parts)
                if member.is_file() and member.resolve().is_relative_to(local.resolve()):
                    return member
            elif od.get("archive") and local.is_file() and local.name == od["archive"]:
                archive = str(local)
        archive_url = od.get("archive_url")
        if archive_url:
            real = self._real_url(archive_url)
            if real is None:
                raise Failure(FailureCode.MISSING_FILE,
                              f"{record.source_id}: its archive URL had credentials, which are "
                              "never stored; pass the same input URL again to fetch it")
            archive = str(self._download(real, _label_for(real)))
        if archive and Path(archive).is_file():
            Path(dest_dir).mkdir(parents=True, exist_ok=True)
            return extract_one(archive, record.original_data["file_path"], dest_dir, limits=self.limits)
        raise Failure(FailureCode.MISSING_FILE, f"{record.source_id}: {record.url} is gone and its "
                                                "archive is not on this machine")
