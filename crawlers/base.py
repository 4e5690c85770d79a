"""What a source is: something that lists records and can fetch one record's audio.

A new source is one module in ``crawlers/`` that defines ``SOURCE = MySource`` (a subclass of
:class:`Source`) plus its replay fixtures; :func:`crawlers.get_source` finds it by name. The
source also owns its caption rule: ``crawl`` yields records whose ``texts`` (and
``caption_provenance``) are already set, or left empty for the keyword-to-caption stage.
"""
from __future__ import annotations

import argparse
import functools
import html
import os
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from laion_audio import defaults
from laion_audio.records import LEFT_PENDING, Failure, FailureCode, Record, Status, is_out_of_space, sample_key


class Source:
    #: registry name, also the shard folder (``<out>/<name>/<split>/N.tar``)
    name: str = ""
    #: the paper's count for this source, for reports (None when not part of the 630K table)
    paper_samples: int | None = None

    def __init__(self, **options: Any):
        self.options = options

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every source's ``crawl`` passes its records through :func:`clean_record`, so no
        source can forget the text rule (the ``local`` source once did)."""
        super().__init_subclass__(**kwargs)
        crawl = cls.__dict__.get("crawl")
        if crawl is None or getattr(crawl, "_cleans_records", False):
            return

        @functools.wraps(crawl)
        def cleaned(self, state: dict) -> Iterator[Record]:
            for rec in crawl(self, state):
                yield clean_record(rec)
        cleaned._cleans_records = True
        cls.crawl = cleaned

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Source-specific CLI options (``laion-audio build --source NAME ...``)."""

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict:
        """The constructor options this source registered in :meth:`add_arguments` and that
        the user set on the command line."""
        probe = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(probe)
        dests = [a.dest for a in probe._actions]
        return {d: getattr(args, d) for d in dests if getattr(args, d, None) is not None}

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict | None:
        """Constructor options that point this source at the bundled replay server at ``base``
        (the demo build; ``items``: how many the replay lists). None: not in the demo."""
        return None

    def check(self) -> None:
        """Cheap up-front checks of the options (files exist, CSV columns, credentials), run by
        the commands before any work starts; raise :class:`laion_audio.errors.UserError` with
        what to do. The default checks nothing."""

    @classmethod
    def dataset_names(cls, options: dict) -> list[str]:
        """The ``source`` values this source's records carry (their shard folders)."""
        return [options.get("dataset_name") or cls.name]

    def crawl(self, state: dict) -> Iterator[Record]:
        """Yield records. ``state`` is a small JSON-able dict persisted between calls, so an
        interrupted crawl can resume paging where it stopped."""
        raise NotImplementedError

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        """Put the record's raw audio on local disk and return its path; raise
        :class:`laion_audio.records.Failure` for a typed failure. Local sources return the
        file they already point at."""
        raise NotImplementedError

    def fetch_many(self, records: list[Record], dest_dir: Path, workers: int = 4) -> list[Record]:
        """Fetch a batch (threads: downloads wait on the network, not the CPU). Records that are
        ``new`` come back ``fetched`` (``audio_path`` set) or ``failed`` with a typed code;
        others pass through untouched. Never raises for one bad record."""
        from concurrent.futures import ThreadPoolExecutor

        def one(rec: Record) -> Record:
            if rec.status != Status.NEW:
                return rec
            try:
                rec.audio_path = str(self.fetch(rec, Path(dest_dir)))
                rec.succeed(Status.FETCHED)
            except Failure as e:
                # an unreachable host or a spent daily quota says nothing about the record: it
                # stays pending (new), with the reason noted, and the next run tries it again
                if e.code in LEFT_PENDING:
                    rec.defer("fetch", e.code, e.message)
                else:
                    rec.fail("fetch", e.code, e.message)
            except Exception as e:  # a bug (or a full disk), still one record's failure
                from laion_audio.http import redact

                rec.fail("fetch", FailureCode.NO_SPACE if is_out_of_space(e) else FailureCode.INTERNAL,
                         redact(f"{type(e).__name__}: {e}"))
            return rec

        if workers <= 1 or len(records) <= 1:
            return [one(r) for r in records]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, records))


# ---------------------------------------------------------------------------------------------
# Helpers for web sources (crawlers/bbc.py, epidemic.py, freesound.py, audiostock.py, ...)

MAX_TEXT_CHARS = 2000


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment, dropping tags and script/style contents."""

    _SKIP = {"script", "style", "noscript", "iframe", "object", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


#: C0/C1 controls, zero-width and bidi controls (embeddings/overrides U+202A-202E, isolates
#: U+2066-2069, the Arabic letter mark U+061C), deprecated format characters, BOM, interlinear
#: annotation marks and lone surrogates (undecodable bytes): none belongs in a caption.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                      "\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
#: terminal escape sequences (CSI ``ESC [ ... m``, OSC ``ESC ] ... BEL``, two-byte ``ESC x``)
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
                   r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x85\u2028\u2029]")
_JUNK = f"(?:{_ANSI.pattern}|{_CONTROL.pattern}|{_BREAKS.pattern})"
_JUNK_RUN = re.compile(f"[ ]*{_JUNK}(?:[ ]*{_JUNK})*[ ]*")
#: bounds of the one text rule applied to every record a source yields
MAX_CAPTION_CHARS = 2000
MAX_TEXTS = 64
MAX_TAGS = 256
MAX_TAG_CHARS = 255
MAX_ORIGINAL_CHARS = 10000


def clean_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Untrusted site text -> plain text: HTML tags and script/style contents removed, entities
    decoded, control/bidi characters dropped, whitespace collapsed, length bounded. Titles and
    descriptions from every source pass through here before they reach a caption."""
    if text is None:
        return ""
    text = str(text)
    if "<" in text or "&" in text:
        parser = _TextOnly()
        try:
            parser.feed(text)
            parser.close()
            text = "".join(parser.parts)
        except Exception:  # html.parser is lenient; keep the raw text rather than crash
            text = html.unescape(text)
        text = text.replace("<", " ").replace(">", " ")
    return plain_text(text, max_chars)


def plain_text(text: Any, max_chars: int = MAX_TEXT_CHARS, collapse: bool = True) -> str:
    """The plain-text rule every record's text passes (idempotent; no HTML decoding, which is
    :func:`clean_text`'s job for site markup): valid UTF-8 (undecodable bytes read as Latin-1),
    NFC, terminal escapes, control, zero-width and bidi characters and line breaks become
    spaces, ends stripped, at most ``max_chars`` characters. ``collapse`` also folds runs of
    whitespace (site text); the record rule keeps inner spaces (BBC captions reproduce LAION's
    exactly, double spaces included)."""
    if text is None:
        return ""
    text = str(text)
    if not (text.isascii() and text.isprintable()):
        # printable ASCII (most text) is valid UTF-8, NFC and free of junk already: this is
        # the crawl's hottest path (2M AudioSet rows), so it is skipped for it
        from laion_audio.archives import utf8_name

        text = unicodedata.normalize("NFC", utf8_name(text))
        text = _JUNK_RUN.sub(" ", text)     # a run of escapes/controls/breaks and its spaces: one space
    if collapse:
        text = " ".join(text.split())
    else:
        text = text.strip()
    return text[:max_chars].rstrip()


def _plain_value(value: Any, depth: int = 0) -> Any:
    """original_data values: strings lose controls/escapes (line breaks kept) and are bounded;
    containers are walked a few levels deep."""
    if isinstance(value, str):
        if value.isascii() and value.isprintable():     # nothing to remove (see plain_text)
            return value[:MAX_ORIGINAL_CHARS]
        from laion_audio.archives import utf8_name

        text = _ANSI.sub(" ", utf8_name(value))
        return _CONTROL.sub(lambda m: m.group() if m.group() in "\t\n" else " ",
                            text)[:MAX_ORIGINAL_CHARS]
    if depth > 8:
        return None
    if isinstance(value, dict):
        return {str(_plain_value(str(k), depth + 1)): _plain_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(v, depth + 1) for v in value]
    return value


def clean_record(rec: Record) -> Record:
    """The one text rule for every source (applied to whatever ``crawl`` yields): captions, tags,
    title, description, author and licence become bounded plain text; ids and URLs become
    valid UTF-8; original_data strings lose control characters. Idempotent."""
    from laion_audio.archives import utf8_name

    rec.source_id = utf8_name(rec.source_id)
    rec.url = utf8_name(rec.url)
    # a path that is not UTF-8 cannot be stored; a source that needs one (local) links it
    # under a name of its own, others then fail that record's fetch (missing_file), not the run
    rec.audio_path = utf8_name(rec.audio_path)
    texts = (plain_text(t, MAX_CAPTION_CHARS, collapse=False) for t in rec.texts or [])
    rec.texts = [t for t in texts if t][:MAX_TEXTS]
    tags = (plain_text(t, MAX_TAG_CHARS, collapse=False) for t in rec.tags or [])
    rec.tags = [t for t in tags if t][:MAX_TAGS]
    for name in ("title", "description", "author", "license"):
        setattr(rec, name, plain_text(getattr(rec, name), MAX_TEXT_CHARS, collapse=False))
    if rec.original_data:
        rec.original_data = _plain_value(rec.original_data)
    if rec.caption_provenance:
        rec.caption_provenance = _plain_value(rec.caption_provenance)
    if rec.failure_message:
        rec.failure_message = plain_text(rec.failure_message, MAX_TEXT_CHARS, collapse=False)
    return rec


def media_seconds(path: str | os.PathLike) -> float | None:
    """The container's own idea of its length (libsndfile, else ffprobe); None if unknown.
    A file cut off in transit holds fewer frames than its header or the site promised."""
    try:
        import soundfile

        info = soundfile.info(str(path))
        if 0 < info.frames < (1 << 62) and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - not a format libsndfile knows: ask ffprobe
        pass
    import shutil
    import subprocess

    if shutil.which("ffprobe") is None:
        return None
    try:
        done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                               "-of", "default=nw=1:nk=1", str(path)],
                              capture_output=True, text=True, timeout=60)
        return float(done.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


#: a download may be this much shorter than the length promised (rounding, encoder padding,
#: sites that state whole seconds) before it counts as cut off
LENGTH_SLACK_FRACTION = 0.2
LENGTH_SLACK_SECONDS = 0.5


def check_media_length(path: str | os.PathLike, promised: float | None) -> None:
    """Raise ``Failure(truncated_download)`` when the file at ``path`` is clearly shorter than
    ``promised`` seconds (a retryable fetch failure; the caller discards the file)."""
    if not promised or promised <= 0:
        return
    seconds = media_seconds(path)
    if seconds is None:
        return
    if seconds < promised * (1 - LENGTH_SLACK_FRACTION) - LENGTH_SLACK_SECONDS:
        raise Failure(FailureCode.TRUNCATED, f"media holds {seconds:.2f} s of the "
                                             f"{promised:.2f} s promised (cut off in transit)")


class HttpSource(Source):
    """A source on the web. Base URLs and politeness knobs are options (CLI/env), so the same
    code runs against the real site and the replay server. One :class:`HttpClient` per process
    (created lazily, never pickled: Ray workers each build their own)."""

    #: extension used when the audio URL does not end in a known audio extension
    default_ext = ".mp3"
    #: HttpClient keyword options a user may set per source
    HTTP_OPTIONS = ("rate", "burst", "retries", "backoff", "max_backoff", "connect_timeout",
                    "read_timeout", "max_bytes", "max_page_bytes", "respect_robots", "seed")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        """CLI options registered by :meth:`add_arguments` as ``--<name>-<opt>`` (dest
        ``<name>_<opt>``) -> constructor options ``{opt: value}`` (unset ones left out)."""
        prefix = f"{cls.name}_"
        return {k[len(prefix):]: v for k, v in vars(args).items()
                if k.startswith(prefix) and v is not None}

    def option(self, name: str, default: Any = None, env: str | None = None) -> Any:
        """An option from the constructor, else the environment variable ``env``, else default."""
        value = self.options.get(name)
        if value is None and env:
            value = os.environ.get(env) or None
        return default if value is None else value

    def url_option(self, name: str, default: str, env: str | None = None) -> str:
        return str(self.option(name, default, env)).rstrip("/")

    @property
    def http(self):
        client = self.__dict__.get("_http")
        if client is None:
            client = self.options.get("http")
            if client is None:
                from laion_audio.http import HttpClient

                kw = {k: self.options[k] for k in self.HTTP_OPTIONS if self.options.get(k) is not None}
                client = HttpClient(**kw)
            self.__dict__["_http"] = client
        return client

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_http", None)
        options = dict(state.get("options", {}))
        options.pop("http", None)
        state["options"] = options
        return state

    def keyed(self, record: Record) -> bool:
        """False (and a warning) for an item whose id was empty after cleaning: it cannot be
        keyed in the ledger, so it is skipped rather than stored under ``""``."""
        if record.source_id:
            return True
        import logging

        logging.getLogger(__name__).warning("%s: skipped an item without a usable id (%r)",
                                            self.name, record.title[:80])
        return False

    def audio_ext(self, url: str) -> str:
        """The audio extension the URL names, else the source's default."""
        ext = os.path.splitext(urlsplit(url).path)[1].lower()
        return ext if ext in defaults.AUDIO_EXTENSIONS else self.default_ext

    def dest_path(self, record: Record, dest_dir: Path) -> Path:
        """Our name for the file: ``sample_key + extension``; site names never choose a path."""
        return Path(dest_dir) / f"{sample_key(record.source, record.source_id)}{self.audio_ext(record.url)}"

    def fetch_headers(self, record: Record) -> dict[str, str]:
        return {}

    #: check a download against the length the site stated (``record.duration``)
    check_promised_length = True

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        if not record.url.startswith(("http://", "https://")):
            raise Failure(FailureCode.BAD_METADATA, f"{record.source_id}: no http(s) audio URL")
        promised = record.duration if self.check_promised_length else None
        check = (lambda path: check_media_length(path, promised)) if promised else None
        got = self.http.download(record.url, self.dest_path(record, dest_dir),
                                 headers=self.fetch_headers(record) or None, check=check)
        record.fetched_bytes = got.bytes
        return got.path
