"""AudioSet: the segment CSVs -> one record per YouTube id + window; audio with yt-dlp.

CSV format (Google's ``*_segments.csv``): three ``#`` comment lines, then
``YTID, start_seconds, end_seconds, "mid1,mid2,..."``. Each row becomes a record:

- ``source_id`` = ``<ytid>_<start in whole milliseconds>`` (``--4gqARaEJE_0``, ``--BfvyPmVMo_20000``);
- ``original_data["youtube_id"]``, ``trim_start``/``trim_end`` = the window in video seconds
  (the eval-overlap filter and the transcode stage read these);
- ``tags`` = label names from ``class_labels_indices.csv`` (mid -> display_name), else from the
  ontology (``ontology.json``); an unknown mid stays as the mid and is listed in
  ``original_data["unknown_mids"]``;
- ``texts`` empty: captions come from the keyword-to-caption stage, unless ``caption="template"``
  asks for the paper's "The sounds of A, B and C" here.

Audio: ``yt_dlp.YoutubeDL`` as a library, best audio only. With ``sections="prefix"`` (default)
only ``[0, end]`` of the video is downloaded (yt-dlp ``download_ranges``, via ffmpeg), so the file
still starts at video time 0 and the transcode stage trims ``[trim_start, trim_end]`` as for every
source; ``sections="off"`` downloads the whole track. Unavailable, private, removed or
age/region-blocked videos are ``unavailable`` failures; rate limiting is ``http_error`` (retry later).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from laion_audio.http import host_of
from laion_audio.errors import UserError
from laion_audio.records import Failure, FailureCode, Record, sample_key

from .base import Source

log = logging.getLogger(__name__)

OFFICIAL_CSV_BASE = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/"
OFFICIAL_CSVS = {name: OFFICIAL_CSV_BASE + f"{name}_segments.csv"
                 for name in ("eval", "balanced_train", "unbalanced_train")}
OFFICIAL_LABELS = OFFICIAL_CSV_BASE + "class_labels_indices.csv"
#: the training CSVs: the default; eval_segments.csv is the evaluation set (the filter drops it)
DEFAULT_CSVS = [OFFICIAL_CSVS["balanced_train"], OFFICIAL_CSVS["unbalanced_train"]]
#: AudioSet's label table and ontology (CC BY 4.0) ship in manifests/, so crawls work offline
SHIPPED_LABELS_DIR = Path(__file__).resolve().parents[1] / "manifests" / "audioset"
LABELS_CSV, ONTOLOGY_JSON = "class_labels_indices.csv", "ontology.json"
YOUTUBE_WATCH = "https://www.youtube.com/watch?v="
CAPTION_RULE = "AudioSet labels; captions by keyword-to-caption"

# yt-dlp messages -> our codes. Order matters: rate limiting first (retry later, not final).
_RATE_LIMITED = re.compile(r"HTTP Error 429|Too Many Requests|confirm you.re not a bot|rate.limit",
                           re.IGNORECASE)
_UNAVAILABLE = re.compile(
    r"Private video|Video unavailable|has been removed|no longer available|account .* terminated|"
    r"not available in your country|members.only|confirm your age|age.restricted|copyright|"
    r"HTTP Error (403|404|410|451)|This video is private|"
    r"Requested format is not available|no video formats found", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
#: the page held no media at all (an error or captcha page where the watch page was due)
_NO_MEDIA = re.compile(r"Unsupported URL", re.IGNORECASE)
#: yt-dlp's words for "no connection could be made" (DNS, refused, unroutable)
_NO_CONNECTION = re.compile(r"name resolution|Name or service not known|nodename nor servname|"
                            r"getaddrinfo failed|Failed to resolve|Connection refused|"
                            r"Network is unreachable|No route to host", re.IGNORECASE)


def parse_segments(lines: Iterable[str]) -> Iterator[tuple[str, float, float, list[str]]]:
    """``(ytid, start, end, [mid, ...])`` per data row; comment and blank lines skipped.
    A malformed row raises ``Failure(bad_metadata)`` naming its line."""
    reader = csv.reader((ln for ln in lines), skipinitialspace=True)
    for row in reader:
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            ytid, start, end = row[0].strip(), float(row[1]), float(row[2])
            mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        except (IndexError, ValueError) as exc:
            raise Failure(FailureCode.BAD_METADATA,
                          f"segments line {reader.line_num}: {row!r}: {exc}") from None
        if not re.fullmatch(r"[A-Za-z0-9_-]{6,20}", ytid) or not 0 <= start < end:
            raise Failure(FailureCode.BAD_METADATA, f"segments line {reader.line_num}: bad id or window {row!r}")
        yield ytid, start, end, mids


def load_label_names(labels_csv: str | os.PathLike | None = None,
                     ontology_json: str | os.PathLike | None = None) -> dict[str, str]:
    """mid -> name. ``class_labels_indices.csv`` (527 display names) wins; ``ontology.json``
    (632 entries, also the abstract classes) fills the rest."""
    names: dict[str, str] = {}
    if ontology_json:
        for entry in json.loads(Path(ontology_json).read_text(encoding="utf-8")):
            names[entry["id"]] = entry["name"]
    if labels_csv:
        with open(labels_csv, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                names[row["mid"]] = row["display_name"]
    return names


def label_files(value: str | os.PathLike) -> tuple[str, str | None]:
    """``--audioset-labels`` has one meaning everywhere: a folder holding
    ``class_labels_indices.csv`` (and ``ontology.json`` when present), or that CSV itself (a
    path or URL). Returns (labels csv, ontology json or None)."""
    text = str(value)
    if text.lower().startswith(("http://", "https://")) or not Path(text).is_dir():
        return text, None
    folder = Path(text)
    if not (folder / LABELS_CSV).is_file():
        raise UserError(f"--audioset-labels {value}: the folder has no {LABELS_CSV}")
    ontology = folder / ONTOLOGY_JSON
    return str(folder / LABELS_CSV), str(ontology) if ontology.is_file() else None


def labels_folder(value: str | os.PathLike) -> Path:
    """The folder form of ``--audioset-labels`` (what the caption commands read)."""
    p = Path(value)
    if p.is_file() and p.name == LABELS_CSV:
        return p.parent
    if not (p / LABELS_CSV).is_file():
        raise UserError(f"--audioset-labels {value}: want a folder with {LABELS_CSV} "
                        "(+ ontology.json) or that file itself")
    return p


def segment_id(ytid: str, start: float) -> str:
    return f"{ytid}_{int(round(start * 1000))}"


def template_caption(labels: list[str]) -> str:
    """The paper's template; uses the captions package when it is installed (one definition)."""
    try:
        from laion_audio.captions.templates import sounds_of
    except ImportError:   # captions package not merged yet: same rule, "The sounds of A, B and C"
        def sounds_of(labels):
            return ("The sound of " if len(labels) == 1 else "The sounds of ") + (
                labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1])
    return sounds_of(labels)


def classify_ytdlp_error(message: str) -> str:
    if _RATE_LIMITED.search(message):
        return FailureCode.HTTP_ERROR
    if _UNAVAILABLE.search(message):
        return FailureCode.UNAVAILABLE
    if _TIMEOUT.search(message):
        return FailureCode.TIMEOUT
    if _NO_MEDIA.search(message):
        return FailureCode.WRONG_CONTENT_TYPE
    return FailureCode.HTTP_ERROR


class _NoConnection(Failure):
    """yt-dlp could not connect at all (counted by the circuit breaker, then retried)."""


class _QuietLogger:
    """yt-dlp logger that keeps the last error for the failure message instead of printing."""

    def __init__(self):
        self.errors: list[str] = []

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        log.debug("yt-dlp: %s", msg)

    def error(self, msg):
        self.errors.append(" ".join(str(msg).split()))


class AudioSetSource(Source):
    name = "audioset"
    paper_samples = None   # not one of the eight 630K sources (used for training beside them)

    @classmethod
    def add_arguments(cls, parser) -> None:
        from laion_audio.commands._checks import parse_bytes

        parser.add_argument("--audioset-csv", action="append", default=None, metavar="PATH_OR_URL",
                            help="segments CSV(s), repeatable (default: the official "
                                 "balanced_train and unbalanced_train CSVs; eval_segments.csv is "
                                 "the evaluation set and gets a warning)")
        parser.add_argument("--audioset-labels", default=None, metavar="DIR_OR_CSV",
                            help="folder with class_labels_indices.csv (+ ontology.json), or that "
                                 "CSV (path or URL) (default: the copy shipped in manifests/audioset)")
        parser.add_argument("--audioset-ontology", default=None, help="ontology.json (optional)")
        parser.add_argument("--audioset-youtube-base", default=None,
                            help=f"video URL prefix + id (default {YOUTUBE_WATCH})")
        parser.add_argument("--audioset-caption", choices=("k2c", "template"), default=None,
                            help="k2c (default: leave texts for keyword-to-caption) or template")
        parser.add_argument("--audioset-sections", choices=("prefix", "off"), default=None,
                            help="prefix: download only [0, end] of each video (default); off: all")
        parser.add_argument("--audioset-cookies", default=None, help="cookies.txt for yt-dlp")
        parser.add_argument("--audioset-proxy", default=None, help="proxy URL for yt-dlp")
        parser.add_argument("--audioset-rate-limit", default=None, type=parse_bytes,
                            metavar="BYTES_PER_S",
                            help="download rate cap in bytes/s (yt-dlp ratelimit), e.g. 2M")
        parser.add_argument("--audioset-sleep", type=float, default=None,
                            help="seconds to sleep between yt-dlp requests")
        parser.add_argument("--audioset-limit", type=int, default=None,
                            help="stop after this many segments (a small trial corpus)")

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"csv": [f"{base}/audioset/balanced_train_segments.csv"],
                "labels": f"{base}/audioset/class_labels_indices.csv",
                "youtube_base": f"{base}/youtube/watch?v=",
                "cache_dir": str(work / "cache" / "audioset"), "limit": items}

    def __init__(self, csv: str | list[str] | None = None, labels: str | None = None,
                 ontology: str | None = None, youtube_base: str | None = None,
                 caption: str | None = None, sections: str | None = None,
                 cookies: str | None = None, proxy: str | None = None,
                 rate_limit: int | str | None = None, sleep: float | None = None,
                 cache_dir: str | os.PathLike | None = None, http=None, limit: int | None = None,
                 **options):
        super().__init__(**options)
        pick = lambda value, key: value if value is not None else options.get(f"audioset_{key}")  # noqa: E731
        csvs = pick(csv, "csv") or DEFAULT_CSVS
        self.csvs = [csvs] if isinstance(csvs, (str, Path)) else [str(c) for c in csvs]
        self.ontology = pick(ontology, "ontology")
        # the shipped label table (+ ontology) unless the user named an ontology or labels
        labels = pick(labels, "labels")
        if labels is None and self.ontology is None:
            labels = SHIPPED_LABELS_DIR
        self.labels = None
        if labels is not None:
            self.labels, folder_ontology = label_files(labels)
            self.ontology = self.ontology or folder_ontology
        self.youtube_base = pick(youtube_base, "youtube_base") or YOUTUBE_WATCH
        self.caption = pick(caption, "caption") or "k2c"
        self.sections = pick(sections, "sections") or "prefix"
        self.cookies = pick(cookies, "cookies")
        self.proxy = pick(proxy, "proxy")
        rate = pick(rate_limit, "rate_limit")
        self.rate_limit = int(float(rate)) if rate else None
        self.sleep = pick(sleep, "sleep")
        self.cache_dir = Path(cache_dir or os.environ.get("LAION_AUDIO_CACHE")
                              or Path.home() / ".cache" / "laion-audio") / "audioset"
        self._http = http
        self.limit = limit if limit is not None else options.get("audioset_limit")

    # ------------------------------------------------------------------ metadata
    def _local(self, value: str) -> Path:
        """A path as given, or a URL downloaded once into the cache through the HTTP layer."""
        if not str(value).lower().startswith(("http://", "https://")):
            return Path(value)
        digest = hashlib.sha1(str(value).encode()).hexdigest()[:12]
        dest = self.cache_dir / "metadata" / f"{digest}-{Path(str(value).split('?')[0]).name}"
        if not dest.is_file():
            if self._http is None:
                from laion_audio.http import HttpClient
                self._http = HttpClient(retries=2)   # metadata: fail fast when offline
            self._http.download(str(value), dest, expect=None, max_bytes=512 << 20)
        return dest

    def check(self) -> None:
        """Local CSV/label files exist; metadata URLs are fetched now (once, into the cache),
        so an offline run stops here with one line; an eval CSV gets a warning."""
        for value in self.csvs:
            if re.search(r"(^|[_/])eval(_segments)?\.csv$", str(value).split("?")[0]):
                log.warning("--audioset-csv %s is AudioSet's evaluation set: records from it are "
                            "eval overlaps (the filter drops them); train on balanced_train/"
                            "unbalanced_train", value)
        for what, value in [("--audioset-csv", v) for v in self.csvs] + [
                ("--audioset-labels", self.labels), ("--audioset-ontology", self.ontology)]:
            if not value:
                continue
            if not str(value).lower().startswith(("http://", "https://")) and not Path(value).is_file():
                raise UserError(f"{what} {value} does not exist")
            try:
                self._local(value)
            except Failure as exc:
                from laion_audio.errors import UnavailableError

                raise UnavailableError(f"{what} {value} could not be downloaded ({exc.code}: "
                                       f"{exc.message[:200]}); pass a local copy")

    def label_names(self) -> dict[str, str]:
        return load_label_names(self._local(self.labels) if self.labels else None,
                                self._local(self.ontology) if self.ontology else None)

    def crawl(self, state: dict) -> Iterator[Record]:
        names = self.label_names()
        seen: set[str] = set()
        count = 0
        for value in self.csvs:
            path = self._local(value)
            split = re.sub(r"_segments$", "", Path(str(value).split("?")[0]).stem)
            with open(path, newline="", encoding="utf-8") as fh:
                for ytid, start, end, mids in parse_segments(fh):
                    sid = segment_id(ytid, start)
                    if sid in seen:         # the same segment in two CSVs: one record
                        continue
                    seen.add(sid)
                    yield self._record(sid, ytid, start, end, mids, names, split)
                    count += 1
                    if self.limit is not None and count >= self.limit:
                        return

    def _record(self, sid, ytid, start, end, mids, names, split) -> Record:
        tags = [names.get(m, m) for m in mids]
        unknown = [m for m in mids if m not in names]
        texts, provenance = [], {"rule": CAPTION_RULE, "labels": tags}
        if self.caption == "template" and tags:
            texts = [template_caption(tags)]
            provenance = {"rule": "template", "template": "sounds_of", "labels": tags}
        original = {"youtube_id": ytid, "start_seconds": start, "end_seconds": end,
                    "mids": mids, "audioset_split": split}
        if unknown:
            original["unknown_mids"] = unknown
        return Record(source=self.name, source_id=sid, url=self.youtube_base + ytid,
                      title=ytid, tags=tags, license="YouTube (per video); labels CC BY 4.0",
                      duration=round(end - start, 3), original_data=original,
                      trim_start=start, trim_end=end, texts=texts, caption_provenance=provenance)

    # ------------------------------------------------------------------ audio
    def ydl_options(self, record: Record, outtmpl: str, logger: _QuietLogger) -> dict:
        opts = {
            "format": "bestaudio/best",
            "outtmpl": outtmpl,
            "noplaylist": True,
            "quiet": True, "no_warnings": True, "noprogress": True,
            "logger": logger,
            "overwrites": True,
            "retries": 3, "fragment_retries": 3, "extractor_retries": 2,
            "socket_timeout": 30,
            "max_filesize": 1 << 30,
            "cachedir": False,
        }
        if self.cookies:
            opts["cookiefile"] = str(self.cookies)
        if self.proxy:
            opts["proxy"] = str(self.proxy)
        if self.rate_limit:
            opts["ratelimit"] = self.rate_limit
        if self.sleep:
            opts["sleep_interval_requests"] = float(self.sleep)
        if self.sections == "prefix" and record.trim_end and shutil.which("ffmpeg"):
            from yt_dlp.utils import download_range_func
            opts["download_ranges"] = download_range_func(None, [(0.0, float(record.trim_end))])
        return opts

    #: downloads of one record before a short (cut-off) file is a failure
    FETCH_ATTEMPTS = 3
    #: consecutive connection failures before the video host is declared unreachable
    BREAKER = 3
    _conn_failures = 0
    _unreachable: str | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    @property
    def _breaker_lock(self):
        lock = self.__dict__.get("_lock")
        if lock is None:
            import threading
            lock = self.__dict__.setdefault("_lock", threading.Lock())
        return lock
    #: a download may end this much before the window end (container/encoder granularity)
    WINDOW_SLACK_SECONDS = 0.5

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        """Download the record's audio (see :meth:`_fetch_once`) and check it holds the whole
        window ``[0, trim_end]``: ffmpeg, which yt-dlp uses for ``download_ranges``, accepts a
        body cut off mid-transfer, so the container's own length is measured. A short file is
        deleted and downloaded again; after ``FETCH_ATTEMPTS`` it is ``truncated_download``."""
        from .base import media_seconds

        last: Failure | None = None
        for _ in range(self.FETCH_ATTEMPTS):
            if self._unreachable:     # the circuit breaker (as laion_audio.http's, for yt-dlp)
                raise Failure(FailureCode.HOST_UNREACHABLE, self._unreachable)
            try:
                path = self._fetch_once(record, dest_dir)
            except _NoConnection as e:   # tried again until it works or the breaker opens
                last = Failure(FailureCode.HTTP_ERROR, e.message)
                continue
            need = float(record.trim_end or 0.0)
            seconds = media_seconds(path) if need > 0 else None
            if seconds is None or seconds >= need - self.WINDOW_SLACK_SECONDS:
                return path
            path.unlink(missing_ok=True)
            last = Failure(FailureCode.TRUNCATED,
                           f"{record.source_id}: download holds {seconds:.2f} s, the window "
                           f"ends at {need:.2f} s (cut off in transit)")
        assert last is not None
        raise last

    def _fetch_once(self, record: Record, dest_dir: Path) -> Path:
        from yt_dlp import YoutubeDL
        from yt_dlp.utils import YoutubeDLError

        ytid = record.original_data.get("youtube_id") or record.source_id.rsplit("_", 1)[0]
        url = self.youtube_base + ytid if self.youtube_base else record.url
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        stem = sample_key(record.source, record.source_id)
        for old in dest_dir.glob(f"{stem}.*"):       # a previous partial attempt
            old.unlink(missing_ok=True)
        logger = _QuietLogger()
        try:
            with YoutubeDL(self.ydl_options(record, str(dest_dir / f"{stem}.%(ext)s"), logger)) as ydl:
                info = ydl.extract_info(url, download=True)
        except YoutubeDLError as exc:
            message = " | ".join(logger.errors[-2:]) or str(exc)
            if _NO_CONNECTION.search(message):
                with self._breaker_lock:
                    self._conn_failures += 1
                    if self._conn_failures >= self.BREAKER:
                        self._unreachable = (f"{host_of(url)} unreachable after "
                                             f"{self._conn_failures} connection failures in a "
                                             f"row: {message}"[:300])
                        log.warning("%s", self._unreachable)
                raise _NoConnection(FailureCode.HTTP_ERROR, f"{ytid}: {message}"[:500]) from None
            raise Failure(classify_ytdlp_error(message), f"{ytid}: {message}"[:500]) from None
        except OSError as exc:
            raise Failure(FailureCode.HTTP_ERROR, f"{ytid}: {exc}"[:500]) from None
        with self._breaker_lock:
            self._conn_failures = 0
        path = _downloaded_path(info, dest_dir, stem)
        if path is None:
            message = " | ".join(logger.errors[-2:])
            if "max-filesize" in message or "larger than" in message:
                raise Failure(FailureCode.TOO_LARGE, f"{ytid}: {message}"[:500])
            raise Failure(FailureCode.UNAVAILABLE, f"{ytid}: yt-dlp produced no file {message}"[:500])
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{")):
            path.unlink(missing_ok=True)
            raise Failure(FailureCode.WRONG_CONTENT_TYPE, f"{ytid}: got a page, not media")
        # original_data stays as crawled (a refresh compares it); only fetch facts change
        record.fetched_bytes = path.stat().st_size
        return path


def _downloaded_path(info: dict | None, dest_dir: Path, stem: str) -> Path | None:
    for d in (info or {}).get("requested_downloads") or []:
        p = d.get("filepath")
        if p and Path(p).is_file():
            return Path(p)
    found = [p for p in dest_dir.glob(f"{stem}.*") if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
    return found[0] if found else None


SOURCE = AudioSetSource
