"""Freesound: APIv2 text search, per-clip licence and author, preview or original audio.

``GET {api}/search/text/?query=&page_size=&fields=...`` with ``Authorization: Token <key>``
(the key comes only from the environment, ``FREESOUND_API_KEY``), then the ``next`` URL of each
page until it is null (reference/sources.md §2.4). Audio: the ``preview-hq-mp3`` preview
(token enough) or, with ``download=original`` and an OAuth2 access token in
``FREESOUND_OAUTH_TOKEN``, the original file from ``/sounds/<id>/download/`` (Bearer).

LAION's filters are options: ``max_duration`` (180 s) and ``min_sample_rate`` (16 kHz); a clip
outside them is yielded as ``dropped`` with the reason, so the ledger still accounts for it.

Captions (LAION's rule, fixed):
1. the name without its audio extension, ``_`` -> space, "." appended. LAION's
   ``os.path.splitext`` also cut names like "Hold Me-71-127.wav)" at the last dot; we only strip
   a real audio extension, and do not add "." after existing end punctuation.
2. the first sentence of the description, "." appended. LAION dropped descriptions with any
   ``<``/``>`` and wrote "." for an empty one; we strip the HTML, keep the text, and write no
   caption when nothing is left.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from laion_audio.errors import UserError
from laion_audio.http import host_of, secret_from_env
from laion_audio.records import Failure, FailureCode, Record, Status, sample_key

from .base import AUDIO_EXTS, HttpSource, clean_text

API_BASE = "https://freesound.org/apiv2"
FIELDS = ("id,name,tags,description,username,license,duration,samplerate,channels,type,"
          "filesize,previews,download,url,created")
_AUDIO_NAME_EXT = re.compile(r"\.(wav|wave|mp3|ogg|oga|flac|aif|aiff|aifc|m4a|aac|opus|wv|webm)$",
                             re.IGNORECASE)
_LICENSES = [
    (re.compile(r"publicdomain/zero"), "CC0 1.0"),
    (re.compile(r"licenses/by-nc/(\d\.\d)"), "CC BY-NC {}"),
    (re.compile(r"licenses/by/(\d\.\d)"), "CC BY {}"),
    (re.compile(r"sampling\+"), "Sampling+ 1.0"),
]


def license_name(url: str) -> str:
    for pattern, name in _LICENSES:
        m = pattern.search(url or "")
        if m:
            return name.format(*m.groups())
    return clean_text(url) or "unknown"


def name_caption(name: str) -> str:
    text = _AUDIO_NAME_EXT.sub("", clean_text(name)).replace("_", " ")
    text = " ".join(text.split())
    if not text:
        return ""
    return text if text[-1] in ".!?" else text + "."


def description_caption(description: str) -> str:
    text = clean_text(description)
    if not text:
        return ""
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip()
    if not first.strip(".!? "):
        return ""
    return first if first[-1] in ".!?" else f"{first}."


def _strip_secrets(url: str) -> str:
    """A ``next`` URL without token-like parameters (it goes into persisted crawl state)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in ("token", "access_token", "api_key")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _results_list(data) -> None:
    """A search answer without a results list is a failed page (retried), not the end."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise Failure(FailureCode.BAD_METADATA, "answer has no results list")


class FreesoundSource(HttpSource):
    name = "freesound"
    paper_samples = 515581
    default_ext = ".mp3"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--freesound-api", dest="freesound_api", help=f"default {API_BASE}")
        parser.add_argument("--freesound-query", dest="freesound_query", help="search text ('' = all)")
        parser.add_argument("--freesound-download", dest="freesound_download",
                            choices=("preview", "original"),
                            help="original needs FREESOUND_OAUTH_TOKEN")
        parser.add_argument("--freesound-max-duration", dest="freesound_max_duration", type=float)
        parser.add_argument("--freesound-min-sample-rate", dest="freesound_min_sample_rate", type=int)

    @property
    def api_base(self) -> str:
        return self.url_option("api", API_BASE, "LAION_AUDIO_FREESOUND_API")

    @property
    def api_key(self) -> str:
        key = secret_from_env(str(self.option("token_env", "FREESOUND_API_KEY")))
        if not key:
            raise Failure(FailureCode.FORBIDDEN,
                          "Freesound needs an API key in the environment variable FREESOUND_API_KEY")
        return key

    @property
    def oauth_token(self) -> str | None:
        return secret_from_env(str(self.option("oauth_env", "FREESOUND_OAUTH_TOKEN")))

    def check(self) -> None:
        """The API key (and, for originals, the OAuth2 token) must be in the environment."""
        env = str(self.option("token_env", "FREESOUND_API_KEY"))
        if not secret_from_env(env):
            raise UserError(f"Freesound needs an API key: set the environment variable {env} "
                            "(https://freesound.org/apiv2/apply)")
        oauth = str(self.option("oauth_env", "FREESOUND_OAUTH_TOKEN"))
        if str(self.option("download", "preview")) == "original" and not secret_from_env(oauth):
            raise UserError(f"--freesound-download original needs an OAuth2 access token in {oauth}")

    def crawl(self, state: dict) -> Iterator[Record]:
        """``state["next"]`` is the next page URL (token-free); it advances after each page."""
        headers = {"Authorization": f"Token {self.api_key}"}
        mode = str(self.option("download", "preview"))
        if mode == "original" and not self.oauth_token:
            raise Failure(FailureCode.FORBIDDEN, "original downloads need an OAuth2 access token "
                                                 "in FREESOUND_OAUTH_TOKEN")
        if state.get("done"):
            return
        url = state.get("next")
        if not url:
            query = {"query": str(self.option("query", "")), "fields": FIELDS,
                     "page_size": int(self.option("page_size", 150)), "sort": "created_asc"}
            url = f"{self.api_base}/search/text/?{urlencode(query)}"
        while url:
            if host_of(url) != host_of(self.api_base):
                raise Failure(FailureCode.BAD_METADATA,
                              f"next page {url} is not on {host_of(self.api_base)}; not sending "
                              "the API key there")
            data = self.http.get_json(url, headers=headers, validate=_results_list)
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list):
                raise Failure(FailureCode.BAD_METADATA, f"{url}: answer has no results list")
            for item in results:
                if isinstance(item, dict) and item.get("id") is not None:
                    rec = self.record_from_sound(item, mode)
                    if self.keyed(rec):
                        yield rec
            nxt = data.get("next")
            url = _strip_secrets(nxt) if isinstance(nxt, str) and nxt else None
            state["next"] = url
        state["done"] = True

    def record_from_sound(self, sound: dict, mode: str = "preview") -> Record:
        ident = re.sub(r"[^0-9]", "", str(sound.get("id")))[:20]
        tags = sound.get("tags") or []
        if isinstance(tags, str):        # LAION's parquet: one comma-separated string
            tags = tags.split(",")
        tags = [t for t in (clean_text(x) for x in tags if isinstance(x, str)) if t]
        previews = sound.get("previews") or {}
        preview = previews.get("preview-hq-mp3") or previews.get("preview-lq-mp3") or ""
        url = str(sound.get("download") or "") if mode == "original" else str(preview)
        if not url.startswith(("http://", "https://")):
            url = ""
        texts = [t for t in (name_caption(sound.get("name", "")),
                             description_caption(sound.get("description", ""))) if t]
        duration = sound.get("duration")
        rate = sound.get("samplerate")
        original = {"id": int(ident) if ident else None, "title": sound.get("name", ""),
                    "description": sound.get("description", ""), "tags": tags,
                    "username": sound.get("username", ""), "license_url": sound.get("license", ""),
                    "download_url": sound.get("download", ""), "preview_url": preview,
                    "samplerate": rate, "channels": sound.get("channels"),
                    "type": sound.get("type", ""), "filesize": sound.get("filesize"),
                    "page": sound.get("url", ""), "created": sound.get("created", "")}
        rec = Record(
            source=self.name, source_id=ident, url=url, title=clean_text(sound.get("name")),
            description=clean_text(sound.get("description")), tags=tags,
            license=license_name(str(sound.get("license", ""))),
            author=clean_text(sound.get("username")),
            duration=float(duration) if isinstance(duration, (int, float)) else None,
            original_data=original, texts=texts,
            caption_provenance={"rule": "freesound-name+first-sentence",
                                "laion_difference": "HTML stripped instead of dropped; no '.' "
                                                    "caption; only audio extensions removed"}
            if texts else {},
        )
        max_duration = self.option("max_duration", 180.0)
        min_rate = self.option("min_sample_rate", 16000)
        if max_duration and rec.duration is not None and rec.duration > float(max_duration):
            rec.status, rec.filter_reason = Status.DROPPED, "too_long"
            rec.filter_match = {"duration": rec.duration, "max_duration": float(max_duration)}
        elif min_rate and isinstance(rate, (int, float)) and rate < int(min_rate):
            rec.status, rec.filter_reason = Status.DROPPED, "low_sample_rate"
            rec.filter_match = {"samplerate": rate, "min_sample_rate": int(min_rate)}
        return rec

    def fetch_headers(self, record: Record) -> dict[str, str]:
        if "/download" in urlsplit(record.url).path:
            token = self.oauth_token
            if not token:
                raise Failure(FailureCode.FORBIDDEN, "original download needs FREESOUND_OAUTH_TOKEN")
            return {"Authorization": f"Bearer {token}"} if self._same_site(record.url) else {}
        # previews need no key, but Freesound asks API clients to send it; never to other sites
        return {"Authorization": f"Token {self.api_key}"} if self._same_site(record.url) else {}

    def _same_site(self, url: str) -> bool:
        """Same registered domain as the API (freesound.org, cdn.freesound.org, ...)."""
        def site(u: str) -> str:
            host = (urlsplit(u).hostname or "").lower()
            return host if host.replace(".", "").isdigit() else ".".join(host.split(".")[-2:])
        return site(url) == site(self.api_base)

    def dest_path(self, record: Record, dest_dir: Path) -> Path:
        kind = "." + str(record.original_data.get("type") or "").lower().lstrip(".")
        if "/download" in urlsplit(record.url).path and kind in AUDIO_EXTS:
            return Path(dest_dir) / f"{sample_key(record.source, record.source_id)}{kind}"
        return super().dest_path(record, dest_dir)


SOURCE = FreesoundSource
