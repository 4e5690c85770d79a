"""Audiostock (audiostock.net sound effects): scraped HTML listing and detail pages.

LAION's scraper was never published (reference/sources.md §2.6), so the page structure here is
ours and lives in one small table (:data:`FIELD_LABELS` and :class:`_PageParser`); adapt it when
the site's markup is known. Listing: ``{base}/se?page=N`` links to detail pages ``/audio/<id>``
and to the next page (``rel="next"``). Detail page: title (``<h1>``), tags (``ul.tags``),
impression / scene / purpose / length (a ``<dl>``), and the MP3 at ``/audio/<id>/play``.
Pages are scraped, so robots.txt is honoured (the HTTP layer checks it).

Anti-crawl answers are typed failures, not crashes: HTTP 403, a captcha/challenge page and an
encrypted (non-URL) audio link become ``forbidden`` on that record (or on the crawl when the
listing itself is blocked).

Caption: the title without newlines and without a leading number. LAION removed everything up
to the first space, which also eats the first word of titles that have no number ("Cartoon
jump" -> "jump"); we remove only a leading numeric token. ``original_data`` keeps the real
title (LAION stored the constant "Audiostock dataset") plus URL, scene, purpose, impression and
``audio_size`` (seconds).
"""
from __future__ import annotations

import argparse
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin, urlsplit

from laion_audio.http import host_of
from laion_audio.records import Failure, FailureCode, Record, Status

from .base import HttpSource, clean_text

BASE = "https://audiostock.net"
LICENSE = "Audiostock standard licence"
FIELD_LABELS = {"impression": "impression", "scene": "scene", "purpose": "purpose",
                "length": "audio_size", "duration": "audio_size", "creator": "creator"}
#: markup of challenge pages (not page text, so a sound titled "Captcha beep" is no challenge)
_CHALLENGE = re.compile(r"""(class|id)\s*=\s*["'][^"']*(g-recaptcha|h-captcha|captcha|challenge-form)"""
                        r"|cf-chl|<title>\s*(just a moment|attention required)", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^\s*(?:no\.?\s*)?\d+[\s.:_-]+", re.IGNORECASE)
_DETAIL = re.compile(r"^/audio/(\d+)/?$")


def title_caption(title: str) -> str:
    text = clean_text(str(title or "").replace("\n", " ").replace("\r", " "))
    stripped = _LEADING_NUMBER.sub("", text).strip()
    return stripped or text


def parse_length(text: str) -> float | None:
    """"0:02", "01:15", "2.0", "2 sec" -> seconds."""
    text = clean_text(text)
    m = re.fullmatch(r"(?:(\d+):)?(\d+):(\d{1,2}(?:\.\d+)?)", text)
    if m:
        h, mi, s = m.groups()
        return int(h or 0) * 3600 + int(mi) * 60 + float(s)
    m = re.match(r"(\d+(?:\.\d+)?)", text)
    return float(m.group(1)) if m else None


class _PageParser(HTMLParser):
    """Collects links, the h1, tag list items, dl pairs and audio sources from one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []     # (href, rel)
        self.h1: list[str] = []
        self.tags: list[str] = []
        self.fields: dict[str, str] = {}
        self.audio: list[str] = []
        self._stack: list[tuple[str, str]] = []    # (tag, class)
        self._dt: str | None = None
        self._buf: list[str] = []
        self._capture: str | None = None

    def _in(self, tag: str, cls: str = "") -> bool:
        return any(t == tag and cls in c.split() for t, c in self._stack) if cls else \
            any(t == tag for t, _ in self._stack)

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "a" and a.get("href"):
            self.links.append((a["href"], a.get("rel", "")))
        if tag in ("audio", "source") and a.get("src"):
            self.audio.append(a["src"])
        if a.get("data-audio-src"):
            self.audio.append(a["data-audio-src"])
        if tag in ("br", "img", "input", "meta", "link", "source"):
            return
        self._stack.append((tag, a.get("class", "")))
        if tag in ("h1", "dt", "dd") or (tag == "li" and self._in("ul", "tags")):
            self._capture, self._buf = tag, []

    def handle_endtag(self, tag):
        if self._capture == tag:
            text = clean_text("".join(self._buf))
            if tag == "h1":
                self.h1.append("".join(self._buf))
            elif tag == "li" and text:
                self.tags.append(text)
            elif tag == "dt":
                self._dt = text.lower()
            elif tag == "dd" and self._dt is not None:
                self.fields[self._dt] = text
                self._dt = None
            self._capture = None
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._capture:
            self._buf.append(data)


def _parse(html_text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html_text)
    parser.close()
    return parser


def _check_challenge(html_text: str, url: str) -> None:
    if _CHALLENGE.search(html_text[:200_000]):
        raise Failure(FailureCode.FORBIDDEN, f"{url}: anti-crawl challenge page (captcha)")


#: markup every real listing page has (results container, even when empty) or links
_LISTING_MARK = re.compile(r"""class\s*=\s*["'][^"']*\b(results|no-results)\b|href\s*=\s*["'][^"']*/audio/\d+""",
                           re.IGNORECASE)
_DETAIL_MARK = re.compile(r"<(audio|source)\b|data-audio-src", re.IGNORECASE)


def _validate_listing(text: str) -> None:
    """A 200 HTML answer that is neither a listing nor a challenge ("temporarily unavailable")
    is a failed page, retried; never an empty catalogue."""
    if not _LISTING_MARK.search(text) and not _CHALLENGE.search(text[:200_000]):
        raise Failure(FailureCode.WRONG_CONTENT_TYPE, "not a listing page (no results list)")


def _validate_detail(text: str) -> None:
    if not _DETAIL_MARK.search(text) and not _CHALLENGE.search(text[:200_000]):
        raise Failure(FailureCode.WRONG_CONTENT_TYPE, "not a sound page (no audio player)")


class AudiostockSource(HttpSource):
    name = "audiostock"
    paper_samples = 10000
    default_ext = ".mp3"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--audiostock-base", dest="audiostock_base", help=f"default {BASE}")
        parser.add_argument("--audiostock-max-pages", dest="audiostock_max_pages", type=int)

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"base": base}

    @property
    def base(self) -> str:
        return self.url_option("base", BASE, "LAION_AUDIO_AUDIOSTOCK_BASE")

    def crawl(self, state: dict) -> Iterator[Record]:
        """``state["page"]``: next listing page (from 1), advanced after its records."""
        max_pages = self.option("max_pages")
        while not state.get("done"):
            page = int(state.get("page", 1))
            url = f"{self.base}/se?page={page}"
            listing = self.http.get_html(url, validate=_validate_listing)
            _check_challenge(listing, url)
            parsed = _parse(listing)
            ids: list[str] = []
            for href, _rel in parsed.links:
                target = urljoin(url, href)
                m = _DETAIL.match(urlsplit(target).path)
                if m and host_of(target) == host_of(self.base) and m.group(1) not in ids:
                    ids.append(m.group(1))
            for ident in ids:
                yield self.detail(ident)
            has_next = any("next" in rel.split() for _h, rel in parsed.links)
            state["page"] = page + 1
            if not ids or not has_next or (max_pages and page >= int(max_pages)):
                state["done"] = True

    def detail(self, ident: str) -> Record:
        """One detail page -> a record; a failure on that page -> a failed record."""
        page_url = f"{self.base}/audio/{ident}"
        try:
            page = self.http.get_html(page_url, validate=_validate_detail)
            _check_challenge(page, page_url)
            return self.record_from_page(ident, page, page_url)
        except Failure as e:
            return Record(source=self.name, source_id=ident, status=Status.FAILED,
                          failure_stage="crawl", failure_code=e.code, failure_message=e.message,
                          original_data={"page": page_url})

    def record_from_page(self, ident: str, page: str, page_url: str) -> Record:
        parsed = _parse(page)
        raw_title = clean_text((parsed.h1 or [""])[0].replace("\n", " "))
        if not raw_title:
            raise Failure(FailureCode.BAD_METADATA, f"{page_url}: no title on the page")
        fields = {FIELD_LABELS[k]: v for k, v in parsed.fields.items() if k in FIELD_LABELS}
        audio = ""
        for src in parsed.audio:
            target = urljoin(page_url, src.strip())
            if urlsplit(target).scheme in ("http", "https") and host_of(target) == host_of(self.base):
                audio = target
                break
        if not audio:
            raise Failure(FailureCode.FORBIDDEN,
                          f"{page_url}: no usable audio link (encrypted or missing: "
                          f"{clean_text(parsed.audio[0])[:60] if parsed.audio else 'none'})")
        size = parse_length(fields.get("audio_size", ""))
        caption = title_caption(raw_title)
        return Record(
            source=self.name, source_id=ident, url=audio, title=raw_title,
            tags=list(dict.fromkeys(t for t in parsed.tags if t)), license=LICENSE,
            author=fields.get("creator", ""), duration=size,
            original_data={"title": raw_title, "URL": audio, "page": page_url,
                           "scene": fields.get("scene", ""), "purpose": fields.get("purpose", ""),
                           "impression": fields.get("impression", ""), "audio_size": size},
            texts=[caption] if caption else [],
            caption_provenance={"rule": "audiostock-title",
                                "laion_difference": "only a leading number is removed, not the "
                                                    "first word"} if caption else {},
        )


SOURCE = AudiostockSource
