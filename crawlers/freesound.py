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

from laion_audio import defaults
from laion_audio.errors import UserError
from laion_audio.http import host_of, secret_from_env
from laion_audio.records import Failure, FailureCode, Record, Status, sample_key

from .base import HttpSource, clean_text

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

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"api": f"{base}/apiv2"}

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
        if "/download" in urlsplit(record.url).path and kind in defaults.AUDIO_EXTENSIONS:
            return Path(dest_dir) / f"{sample_key(record.source, record.source_id)}{kind}"
        return super().dest_path(record, dest_dir)


# ---------------------------------------------------------------------------------------------
# Sounds by id (rebuilding from a published list of Freesound ids), paced to the API's quota.
#
# ``GET {api}/sounds/<id>/`` with the token gives the sound's previews, licence and author.
# Freesound throttles per key per minute and per day (reference/sources.md, "Freesound API
# throttling": 60/minute and 2,000/day at the standard level, more on request) and names the
# limit in the 429's JSON ``detail``. So: requests are spaced to the per-minute budget; a
# per-minute 429 waits and retries; a daily 429 raises :class:`QuotaExhausted`, which the
# caller turns into "still pending" (never a failed record), and every later request in this
# process is refused without asking until ``recheck`` seconds have passed.

QUOTA_DEFERRED = FailureCode.QUOTA_DEFERRED
_RATE_LIMIT = re.compile(r"(\d+)\s*/\s*(second|sec|minute|min|hour|day)", re.IGNORECASE)
BY_ID_FIELDS = ("id,name,tags,description,username,license,duration,samplerate,channels,type,"
                "previews,download")


class QuotaExhausted(Failure):
    """The key's daily request quota is used up; the record should stay pending."""

    def __init__(self, per_day: int | None, message: str):
        super().__init__(QUOTA_DEFERRED, message)
        self.per_day = per_day


class ApiPacer:
    """Spaces one process's API requests to ``per_minute`` and remembers a daily limit hit.
    Thread-safe: the fetch threads of one task share it."""

    def __init__(self, per_minute: float = 60.0, recheck: float = 3600.0, clock=None, sleep=None,
                 budget: int | None = None):
        import threading
        import time

        self.per_minute = float(per_minute) if per_minute else 0.0
        self.recheck = float(recheck)
        self.clock = clock or time.monotonic
        self.sleep = sleep or time.sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self.exhausted_at: float | None = None
        self.per_day: int | None = None
        self.requests = 0
        #: requests this process may make at most (a share of a daily budget the user set)
        self.budget = budget

    def check(self) -> None:
        """Raise :class:`QuotaExhausted` when no request may be sent; else count one."""
        with self._lock:
            if self.exhausted_at is not None and self.clock() - self.exhausted_at < self.recheck:
                raise QuotaExhausted(self.per_day, self.quota_message())
            self.exhausted_at = None
            if self.budget is not None and self.requests >= self.budget:
                level = f" ({self.per_day}/day)" if self.per_day else ""
                raise QuotaExhausted(self.per_day, f"Freesound daily request budget{level} of "
                                                   "this run used up; left pending for the next run")
            self.requests += 1          # reserved under the lock: threads never overshoot

    def wait(self) -> None:
        if self.per_minute <= 0:
            return
        with self._lock:
            now = self.clock()
            at = max(now, self._next)
            self._next = at + 60.0 / self.per_minute
        if at > now:
            self.sleep(at - now)

    def learn(self, limit: int | None, unit: str) -> None:
        """A 429 named the key's real level: per-minute lowers the pace, per-day stops."""
        with self._lock:
            per_minute = {"second": 60.0, "minute": 1.0}.get(unit, 0.0) * (limit or 0)
            if per_minute:
                self.per_minute = min(self.per_minute or per_minute, per_minute)
            elif unit == "day":
                self.per_day = limit
                self.exhausted_at = self.clock()

    def quota_message(self) -> str:
        level = f" ({self.per_day}/day)" if self.per_day else ""
        return f"Freesound daily API quota{level} used up; left pending for the next run"


def _limit_of(detail: str) -> tuple[int | None, str]:
    m = _RATE_LIMIT.search(detail or "")
    if not m:
        return None, ""
    unit = m.group(2).lower()
    return int(m.group(1)), {"sec": "second", "min": "minute"}.get(unit, unit)


def api_get_json(source: "FreesoundSource", url: str, pacer: ApiPacer, *,
                 max_tries: int = 6) -> dict:
    """One paced, authenticated APIv2 GET. The 429 body matters here (it names the limit), so
    this uses the HTTP layer's session, per-host limiter and typed status checks directly
    instead of its retry loop, which discards 429 bodies."""
    import requests

    from laion_audio.http import fail, parse_retry_after

    http = source.http
    headers = {"Authorization": f"Token {source.api_key}"}
    last: Failure | None = None
    for attempt in range(max_tries):
        pacer.check()
        pacer.wait()
        http.limiter.acquire(host_of(url))
        http.attempts += 1
        try:
            resp = http.session.get(url, headers=headers, timeout=http.timeout)
        except requests.Timeout:
            last = fail(FailureCode.TIMEOUT, f"GET {url}: timed out")
            http.sleep(http._backoff_delay(attempt, None))
            continue
        except requests.RequestException as e:
            last = fail(FailureCode.HTTP_ERROR, f"GET {url}: connection error: {e}")
            http.sleep(http._backoff_delay(attempt, None))
            continue
        if resp.status_code == 429:
            try:
                detail = str((resp.json() or {}).get("detail", ""))
            except ValueError:
                detail = resp.text[:300]
            limit, unit = _limit_of(detail)
            wait = parse_retry_after(resp.headers.get("Retry-After"), now=http.wall_clock())
            if unit in ("day", "hour") or (not unit and wait is not None
                                           and wait > http.max_retry_after):
                pacer.learn(limit, "day")
                raise QuotaExhausted(limit, pacer.quota_message())
            pacer.learn(limit, unit)
            last = fail(FailureCode.HTTP_ERROR, f"GET {url}: HTTP 429 ({detail[:120]})")
            delay = wait if wait is not None else 60.0 / max(pacer.per_minute, 1.0)
            http.backoff_slept += delay
            http.sleep(min(delay, http.max_retry_after))
            continue
        if resp.status_code >= 500:
            resp.close()
            last = fail(FailureCode.HTTP_ERROR, f"GET {url}: HTTP {resp.status_code}")
            http.sleep(http._backoff_delay(attempt, parse_retry_after(
                resp.headers.get("Retry-After"), now=http.wall_clock())))
            continue
        http._check_status(resp, url)
        try:
            data = resp.json()
        except ValueError:
            raise fail(FailureCode.WRONG_CONTENT_TYPE, f"GET {url}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise fail(FailureCode.BAD_METADATA, f"GET {url}: answer is not a JSON object")
        return data
    assert last is not None
    raise last


def needs_api(record: Record) -> bool:
    """True when a Freesound record has no direct audio URL (an id list, a page URL)."""
    url = record.url or ""
    if not url.startswith(("http://", "https://")):
        return True
    path = urlsplit(url).path
    return not (_AUDIO_NAME_EXT.search(path) or path.rstrip("/").endswith("/download"))


def resolve_by_id(source: "FreesoundSource", record: Record, pacer: ApiPacer) -> Record:
    """Fill a by-id record's audio URL (preview, or the original with OAuth2) and the metadata
    the list lacked (licence, author, duration, tags) from ``sounds/<id>/``."""
    ident = re.sub(r"[^0-9]", "", record.source_id)
    if not ident:
        raise Failure(FailureCode.BAD_METADATA, f"{record.source_id!r} is not a Freesound id")
    url = f"{source.api_base}/sounds/{ident}/?{urlencode({'fields': BY_ID_FIELDS})}"
    sound = api_get_json(source, url, pacer)
    mode = str(source.option("download", "preview"))
    previews = sound.get("previews") or {}
    audio = (str(sound.get("download") or "") if mode == "original"
             else str(previews.get("preview-hq-mp3") or previews.get("preview-lq-mp3") or ""))
    if not audio.startswith(("http://", "https://")):
        raise Failure(FailureCode.BAD_METADATA, f"sound {ident}: no {mode} audio URL in the answer")
    record.url = _strip_secrets(audio)
    record.license = record.license or license_name(str(sound.get("license", "")))
    record.author = record.author or clean_text(sound.get("username"))
    if record.duration is None and isinstance(sound.get("duration"), (int, float)):
        record.duration = float(sound["duration"])
    if not record.tags:
        tags = sound.get("tags") or []
        record.tags = [t for t in (clean_text(x) for x in tags if isinstance(x, str)) if t]
    record.title = record.title or clean_text(sound.get("name"))
    record.original_data = {**record.original_data, "type": sound.get("type", ""),
                            "license_url": sound.get("license", ""),
                            "samplerate": sound.get("samplerate")}
    return record


SOURCE = FreesoundSource
