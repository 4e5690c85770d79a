"""What a source is: something that lists records and can fetch one record's audio.

A new source is one module in ``crawlers/`` that defines ``SOURCE = MySource`` (a subclass of
:class:`Source`) plus its replay fixtures; :func:`crawlers.get_source` finds it by name. The
source also owns its caption rule: ``crawl`` yields records whose ``texts`` (and
``caption_provenance``) are already set, or left empty for the keyword-to-caption stage.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from laion_audio.records import Failure, FailureCode, Record, Status, sample_key


class Source:
    #: registry name, also the shard folder (``<out>/<name>/<split>/N.tar``)
    name: str = ""
    #: the paper's count for this source, for reports (None when not part of the 630K table)
    paper_samples: int | None = None

    def __init__(self, **options: Any):
        self.options = options

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
                rec.status = Status.FETCHED
                rec.failure_stage = rec.failure_code = rec.failure_message = ""
            except Failure as e:
                rec.status, rec.failure_stage = Status.FAILED, "fetch"
                rec.failure_code, rec.failure_message = e.code, e.message
            except Exception as e:  # a bug, still one record's failure
                from laion_audio.http import redact

                rec.status, rec.failure_stage = Status.FAILED, "fetch"
                rec.failure_code = FailureCode.INTERNAL
                rec.failure_message = redact(f"{type(e).__name__}: {e}")
            return rec

        if workers <= 1 or len(records) <= 1:
            return [one(r) for r in records]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, records))


# ---------------------------------------------------------------------------------------------
# Helpers for web sources (crawlers/bbc.py, epidemic.py, freesound.py, audiostock.py, ...)

#: Audio file extensions a URL may choose; anything else gets the source's default.
AUDIO_EXTS = (".mp3", ".wav", ".ogg", ".oga", ".flac", ".m4a", ".aac", ".opus", ".webm", ".aiff",
              ".aif")
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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


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
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    return text[:max_chars].rstrip()


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
        ext = os.path.splitext(urlsplit(url).path)[1].lower()
        return ext if ext in AUDIO_EXTS else self.default_ext

    def dest_path(self, record: Record, dest_dir: Path) -> Path:
        """Our name for the file: ``sample_key + extension``; site names never choose a path."""
        return Path(dest_dir) / f"{sample_key(record.source, record.source_id)}{self.audio_ext(record.url)}"

    def fetch_headers(self, record: Record) -> dict[str, str]:
        return {}

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        if not record.url.startswith(("http://", "https://")):
            raise Failure(FailureCode.BAD_METADATA, f"{record.source_id}: no http(s) audio URL")
        got = self.http.download(record.url, self.dest_path(record, dest_dir),
                                 headers=self.fetch_headers(record) or None)
        record.fetched_bytes = got.bytes
        return got.path
