"""The one HTTP layer every crawler uses: polite, bounded, and honest about failures.

Why one layer: politeness (per-host rate limit, backoff that honours ``Retry-After``, robots.txt,
a User-Agent that says who we are) and safety (size caps, truncation checks, atomic files,
secret redaction) must hold for every source, so no crawler talks to ``requests`` directly.

Every failure leaves this module as :class:`laion_audio.records.Failure` with a typed code
(``not_found``, ``forbidden``, ``timeout``, ``too_large``, ``truncated_download``,
``wrong_content_type``, ``http_error``, ``host_unreachable``), never as a raw ``requests``
exception, and its message has every known secret redacted.

A per-host circuit breaker stops a run from retrying a dead host record by record: after
``breaker`` consecutive connection failures (DNS, refused, connect timeout) the host is declared
unreachable and every further request to it fails at once with ``host_unreachable``; the
fetch stage leaves those records pending for the next run instead of failing them.
"""
from __future__ import annotations

import email.utils
import json as jsonlib
import logging
import os
import random
import re
import threading
import time
import urllib.robotparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import requests

from . import atomic
from . import __version__
from .records import Failure, FailureCode, is_out_of_space

log = logging.getLogger(__name__)

PROJECT_URL = "https://github.com/laion-audio/laion-audio"
#: Content types a download of audio may carry (prefix match, lower case).
AUDIO_TYPES = ("audio/", "application/octet-stream", "application/ogg", "binary/octet-stream",
               "video/")
JSON_TYPES = ("application/json", "application/vnd.api+json", "text/json")
HTML_TYPES = ("text/html", "application/xhtml+xml")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: query/form parameters that carry credentials: API keys, OAuth tokens, presigned-URL
#: signatures (S3 ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``, GCS
#: ``X-Goog-*``, Azure SAS ``sig``, CloudFront ``Signature``/``Policy``/``Key-Pair-Id``)
_SECRET_NAMES = (r"[\w.-]*?(?:token|signature|secret|password|passwd|credential)|"
                 r"api[_-]?key|apikey|key|sig|pwd|auth|policy|key-pair-id")
_SECRET_PARAM = re.compile(rf"(?i)(?<![\w.-])({_SECRET_NAMES})=([^&\s\"'#<>]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|token|basic)?\s*"
                          r"[^'\"\s,}]+")


def user_agent() -> str:
    """``laion-audio/<version> (+<project url>)``; ``LAION_AUDIO_CONTACT`` (an e-mail or URL)
    is appended so a site operator can reach whoever runs the crawl."""
    contact = os.environ.get("LAION_AUDIO_CONTACT", "").strip()
    extra = f"; {contact}" if contact else ""
    return f"laion-audio/{__version__} (+{PROJECT_URL}{extra})"


def secret_from_env(name: str) -> str | None:
    """Read a secret from the environment (the only place secrets come from) and register it
    for redaction everywhere this process logs or records a message."""
    value = os.environ.get(name, "").strip()
    if value:
        register_secret(value)
    return value or None


_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """Remove known secret values, ``token=...``-style query parameters and Authorization
    header values from ``text`` (URLs, exception messages, log lines)."""
    text = str(text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "***")
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}:***@", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{(m.group(2) or '')} ***".rstrip(), text)


class RedactingFilter(logging.Filter):
    """Redacts a log record's message in place: urllib3 logs every request line (with its
    query string) at DEBUG, which ``-v`` shows; a presigned URL must not reach the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACTING = RedactingFilter()
for _name in ("urllib3", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.connection",
              "urllib3.response", "urllib3.util.retry", "requests", __name__):
    logging.getLogger(_name).addFilter(_REDACTING)


def fail(code: str, message: str) -> Failure:
    return Failure(code, redact(message))


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class RateLimiter:
    """A token bucket per host: at most ``rate`` requests per second on average, bursts of
    ``burst``. Thread-safe; the wait happens outside the lock so hosts do not block each other.
    ``set_rate`` lets robots.txt ``Crawl-delay`` slow one host down."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate, self.burst = float(rate), max(1, int(burst))
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, last time)
        self._rates: dict[str, float] = {}

    def set_rate(self, host: str, rate: float) -> None:
        with self._lock:
            self._rates[host] = min(rate, self._rates.get(host, self.rate))

    def acquire(self, host: str) -> float:
        """Take one token for ``host``, sleeping as long as needed; returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                rate = self._rates.get(host, self.rate)
                now = self.clock()
                tokens, last = self._buckets.get(host, (float(self.burst), now))
                tokens = min(float(self.burst), tokens + (now - last) * rate)
                if tokens >= 1.0:
                    self._buckets[host] = (tokens - 1.0, now)
                    return waited
                self._buckets[host] = (tokens, now)
                wait = (1.0 - tokens) / rate
            self.sleep(wait)
            waited += wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def remove_partial_downloads(folder: Path) -> int:
    """Delete ``.<name>.part-*`` files a killed run left in ``folder``; returns how many. Call it
    before fetch workers start (never while they run: it would delete their files in flight)."""
    removed = 0
    for p in Path(folder).glob(".*.part-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class Download:
    path: Path
    bytes: int
    content_type: str
    url: str


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no connection could be made at all (DNS, refused, unroutable, connect
    timeout); False for a peer that answered and then hung up (that host is alive)."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, (NewConnectionError, ConnectTimeoutError)):
            return True
        if isinstance(exc, MaxRetryError):
            exc = exc.reason
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _Retryable(Exception):
    """One attempt failed in a way worth another try; carries the final typed failure."""

    def __init__(self, failure: Failure, retry_after: float | None = None):
        super().__init__(str(failure))
        self.failure, self.retry_after = failure, retry_after


class HttpClient:
    """A ``requests.Session`` with politeness and safety built in.

    ``sleep``/``clock``/``wall_clock`` are injectable so tests can measure backoff without
    waiting. ``secrets`` are extra values to redact (values read with
    :func:`secret_from_env` are redacted anyway).
    """

    def __init__(self, *, rate: float = 2.0, burst: int = 2, retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 60.0, max_retry_after: float = 600.0,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 max_bytes: int = 1 << 30, max_page_bytes: int = 20 << 20,
                 respect_robots: bool = True, seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 secrets: Iterable[str] = (), session: requests.Session | None = None,
                 breaker: int = 3):
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.max_retry_after = max_retry_after
        self.timeout = (connect_timeout, read_timeout)
        self.max_bytes, self.max_page_bytes = max_bytes, max_page_bytes
        self.respect_robots = respect_robots
        self.sleep, self.clock, self.wall_clock = sleep, clock, wall_clock
        self.limiter = RateLimiter(rate, burst, clock=clock, sleep=sleep)
        self._jitter = random.Random(seed)
        self._jitter_lock = threading.Lock()
        for s in secrets:
            register_secret(s)
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent()
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self._robots_lock = threading.Lock()
        #: seconds slept on backoff/Retry-After (not rate limiting), for reports and tests
        self.backoff_slept = 0.0
        self.attempts = 0
        #: consecutive connection failures per host, and hosts declared unreachable (-> reason)
        self.breaker = max(1, int(breaker))
        self._conn_failures: dict[str, int] = {}
        self.unreachable: dict[str, str] = {}
        self._breaker_lock = threading.Lock()

    # ----- politeness -----
    def _backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        with self._jitter_lock:
            delay = base * (0.5 + 0.5 * self._jitter.random())
        if retry_after is not None:
            delay = max(delay, retry_after)   # never sooner than the server asked
        return delay

    def _check_breaker(self, host: str, method: str, url: str) -> None:
        with self._breaker_lock:
            reason = self.unreachable.get(host)
        if reason is not None:
            raise fail(FailureCode.HOST_UNREACHABLE, f"{method} {url}: host {host} unreachable "
                                                     f"(no connection: {reason})")

    def _connect_failed(self, host: str, error: str) -> bool:
        """Count one connection failure; True when the breaker opens for ``host``."""
        with self._breaker_lock:
            n = self._conn_failures.get(host, 0) + 1
            self._conn_failures[host] = n
            if n >= self.breaker and host not in self.unreachable:
                self.unreachable[host] = redact(error)[:200]
                log.warning("%s is unreachable after %d connection failures in a row; its "
                            "remaining requests are not tried in this run", host, n)
            return host in self.unreachable

    def _reached(self, host: str) -> None:
        with self._breaker_lock:
            self._conn_failures[host] = 0

    def robots_allowed(self, url: str) -> bool:
        """robots.txt check for scraped pages (RFC 9309): 4xx = no rules, 5xx or unreachable =
        assume disallowed. Parsed once per host; a ``Crawl-delay`` lowers that host's rate."""
        host = host_of(url)
        with self._robots_lock:
            parser = self._robots.get(host)
        if parser is None:
            parser = urllib.robotparser.RobotFileParser(host + "/robots.txt")
            try:
                status, text = self._attempts("GET", host + "/robots.txt", self._robots_body)
                if status >= 500:
                    parser.disallow_all = True
                elif status >= 400:
                    parser.allow_all = True
                else:
                    parser.parse(text.splitlines())
            except Failure as e:
                if e.code == FailureCode.HOST_UNREACHABLE:
                    raise      # not an answer about the rules: do not cache "disallow all"
                parser.disallow_all = True
            delay = parser.crawl_delay(user_agent().split("/")[0])
            if delay:
                self.limiter.set_rate(host, 1.0 / float(delay))
            with self._robots_lock:
                self._robots[host] = parser
        return parser.can_fetch(user_agent().split("/")[0], url)

    def _robots_body(self, resp: requests.Response) -> tuple[int, str]:
        if resp.status_code >= 400:
            resp.close()
            return resp.status_code, ""
        parts: list[bytes] = []
        self._read_body(resp, resp.url, min(self.max_page_bytes, 512 << 10), parts.append)
        return resp.status_code, b"".join(parts).decode("utf-8", errors="replace")

    # ----- core request loop -----
    def _attempts(self, method: str, url: str, handle: Callable[[requests.Response], Any], *,
                  stream: bool = True, retries: int | None = None, **kwargs: Any) -> Any:
        """Send the request and ``handle`` the response, retrying on 429/5xx, connection errors,
        timeouts and body failures (truncation, wrong type) with one shared attempt budget.
        Exponential backoff with jitter, never sooner than ``Retry-After`` asks."""
        retries = self.retries if retries is None else retries
        last: Failure | None = None
        host = host_of(url)
        for attempt in range(retries + 1):
            self._check_breaker(host, method, url)
            self.limiter.acquire(host)
            self._check_breaker(host, method, url)     # it may have opened while we waited
            self.attempts += 1
            retry_after = None
            try:
                resp = self.session.request(method, url, stream=stream, timeout=self.timeout,
                                            allow_redirects=True, **kwargs)
                self._reached(host)
                if resp.status_code in RETRY_STATUSES:
                    resp.close()
                    raise _Retryable(
                        fail(FailureCode.HTTP_ERROR,
                             f"{method} {url}: HTTP {resp.status_code} after {attempt + 1} attempts"),
                        parse_retry_after(resp.headers.get("Retry-After"), now=self.wall_clock()))
                return handle(resp)
            except _Retryable as e:
                last, retry_after = e.failure, e.retry_after
            except (requests.Timeout, requests.ConnectionError,
                    requests.exceptions.ChunkedEncodingError) as e:
                if _is_connect_failure(e):
                    message = f"{type(e).__name__}: {e}"
                    if self._connect_failed(host, message):
                        self._check_breaker(host, method, url)
                if isinstance(e, requests.Timeout):
                    last = fail(FailureCode.TIMEOUT, f"{method} {url}: timed out ({type(e).__name__})")
                else:
                    last = fail(FailureCode.HTTP_ERROR, f"{method} {url}: connection error: {e}")
            except requests.RequestException as e:
                raise fail(FailureCode.HTTP_ERROR, f"{method} {url}: {e}") from None
            if retry_after is not None and retry_after > self.max_retry_after:
                raise fail(FailureCode.HTTP_ERROR,
                           f"{method} {url}: server asks to retry after {retry_after:.0f} s "
                           f"(more than the {self.max_retry_after:.0f} s we wait)")
            if attempt < retries:
                delay = self._backoff_delay(attempt, retry_after)
                log.info("retrying %s in %.2f s: %s", redact(url), delay, last)
                self.backoff_slept += delay
                self.sleep(delay)
        assert last is not None
        raise last

    def _check_status(self, resp: requests.Response, url: str) -> None:
        code = resp.status_code
        if code < 400:
            return
        resp.close()
        if code in (404, 410):
            raise fail(FailureCode.NOT_FOUND, f"{url}: HTTP {code}")
        if code in (401, 403, 451):
            raise fail(FailureCode.FORBIDDEN, f"{url}: HTTP {code}")
        raise fail(FailureCode.HTTP_ERROR, f"{url}: HTTP {code}")

    @staticmethod
    def _content_type(resp: requests.Response) -> str:
        return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def _check_type(self, resp: requests.Response, url: str, expect: tuple[str, ...] | None) -> None:
        ctype = self._content_type(resp)
        if expect and not any(ctype.startswith(e) for e in expect):
            resp.close()
            raise _Retryable(fail(FailureCode.WRONG_CONTENT_TYPE,
                                  f"{url}: got Content-Type {ctype or '(none)'!r}, "
                                  f"expected {' or '.join(expect)}"))

    def _declared_length(self, resp: requests.Response) -> int | None:
        value = resp.headers.get("Content-Length")
        if value is None or resp.headers.get("Content-Encoding", "identity") != "identity":
            return None  # requests decodes gzip, so the byte count would not match
        try:
            return int(value)
        except ValueError:
            return None

    def _read_body(self, resp: requests.Response, url: str, limit: int, sink) -> int:
        """Stream the body into ``sink`` (a callable taking bytes) up to ``limit`` bytes."""
        declared = self._declared_length(resp)
        if declared is not None and declared > limit:
            resp.close()
            raise fail(FailureCode.TOO_LARGE, f"{url}: Content-Length {declared} exceeds the "
                                              f"{limit}-byte cap")
        got = 0
        try:
            for chunk in resp.iter_content(chunk_size=1 << 16):
                got += len(chunk)
                if got > limit:
                    resp.close()
                    raise fail(FailureCode.TOO_LARGE, f"{url}: body exceeds the {limit}-byte cap")
                sink(chunk)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as e:
            raise _Retryable(fail(FailureCode.TRUNCATED,
                                  f"{url}: body cut off after {got} bytes "
                                  f"(expected {declared if declared is not None else '?'}): "
                                  f"{type(e).__name__}")) from None
        except requests.Timeout:
            raise _Retryable(fail(FailureCode.TIMEOUT, f"{url}: read timed out after {got} bytes"))
        finally:
            resp.close()
        if declared is not None and got != declared:
            raise _Retryable(fail(FailureCode.TRUNCATED,
                                  f"{url}: got {got} of {declared} bytes"))
        return got

    # ----- public API -----
    def request_bytes(self, method: str, url: str, *, expect: tuple[str, ...] | None = None,
                      limit: int | None = None, robots: bool = False,
                      validate: Callable[[bytes], None] | None = None,
                      **kwargs: Any) -> tuple[bytes, str]:
        """A whole (small) body: pages and API answers, capped at ``max_page_bytes``.
        ``validate(body)`` may raise :class:`Failure` for an answer of the right type that is
        not what was asked for (a "temporarily unavailable" page instead of a listing): that
        attempt counts as failed and is retried like a 503."""
        if robots and self.respect_robots and not self.robots_allowed(url):
            raise fail(FailureCode.FORBIDDEN, f"{url}: disallowed by robots.txt")
        limit = self.max_page_bytes if limit is None else limit

        def handle(resp: requests.Response) -> tuple[bytes, str]:
            self._check_status(resp, url)
            self._check_type(resp, url, expect)
            parts: list[bytes] = []
            self._read_body(resp, url, limit, parts.append)
            body = b"".join(parts)
            if validate is not None:
                try:
                    validate(body)
                except Failure as e:
                    raise _Retryable(fail(e.code, f"{url}: {e.message}")) from None
            return body, self._content_type(resp)

        return self._attempts(method, url, handle, **kwargs)

    def get_json(self, url: str, *, method: str = "GET",
                 validate: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
        """A JSON answer; ``validate(data)`` checks its shape (a failure is retried)."""
        def check(body: bytes) -> None:
            try:
                data = jsonlib.loads(body)
            except ValueError as e:
                if validate is None:
                    return       # reported below, not retried (as before)
                raise Failure(FailureCode.BAD_METADATA, f"invalid JSON: {e}") from None
            if validate is not None:
                validate(data)

        body, _ = self.request_bytes(method, url, expect=JSON_TYPES, validate=check, **kwargs)
        try:
            return jsonlib.loads(body)
        except ValueError as e:
            raise fail(FailureCode.BAD_METADATA, f"{url}: invalid JSON: {e}") from None

    def get_html(self, url: str, *, validate: Callable[[str], None] | None = None,
                 **kwargs: Any) -> str:
        """A scraped HTML page: robots.txt is checked first; ``validate(text)`` as above."""
        check = None if validate is None else (
            lambda body: validate(body.decode("utf-8", errors="replace")))
        body, _ = self.request_bytes("GET", url, expect=HTML_TYPES, robots=True, validate=check,
                                     **kwargs)
        return body.decode("utf-8", errors="replace")

    def download(self, url: str, dest: Path, *, expect: tuple[str, ...] | None = AUDIO_TYPES,
                 max_bytes: int | None = None, headers: dict | None = None,
                 check: Callable[[Path], None] | None = None) -> Download:
        """Stream ``url`` to ``dest``: a temporary file beside it, renamed only when the body is
        complete (Content-Length), the right type, under the cap and, when given, passes
        ``check(tmp_path)`` (raise :class:`Failure`; e.g. a media file shorter than promised,
        which is retried like a cut-off body); nothing is left behind on failure."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        limit = self.max_bytes if max_bytes is None else max_bytes
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")

        def handle(resp: requests.Response) -> Download:
            self._check_status(resp, url)
            self._check_type(resp, url, expect)
            ctype = self._content_type(resp)
            try:
                with open(tmp, "wb") as fh:
                    got = self._read_body(resp, url, limit, fh.write)
                if got == 0:
                    raise fail(FailureCode.EMPTY_FILE, f"{url}: empty body")
                if check is not None:
                    try:       # the container's own length: a short body is a failed attempt
                        check(tmp)
                    except Failure as e:
                        if e.code == FailureCode.TRUNCATED:
                            raise _Retryable(fail(e.code, f"{url}: {e.message}")) from None
                        raise
                atomic.publish(tmp, dest)
            except OSError as e:
                if is_out_of_space(e):
                    raise fail(FailureCode.NO_SPACE, f"{url}: disk full writing {dest.name}") from None
                raise
            finally:
                resp.close()
                tmp.unlink(missing_ok=True)
            return Download(dest, got, ctype, redact(url))

        return self._attempts("GET", url, handle, headers=headers)

    def close(self) -> None:
        self.session.close()
