"""The replay server core: a real HTTP server on 127.0.0.1 with route plugins and faults.

Each non-underscore module in ``crawlers/replay/`` is a plugin with ``register(app)``; it adds
routes (``app.route(method, regex, handler)``) and usually a :class:`Catalogue`. A handler takes
a :class:`Request` and returns a :class:`Reply`. The core adds what a hostile network does:
429 with ``Retry-After``, 500/503, slow answers, connection resets, truncated bodies and wrong
content types, chosen deterministically from ``seed + request + attempt number`` so a retry of
the same request can succeed, and counts every request per path.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import importlib
import json
import logging
import pkgutil
import re
import socket
import struct
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "503", "slow", "reset", "truncate", "wrong_type")
CONTROL_PREFIX = "/_replay/"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes
    base_url: str
    app: "ReplayApp"
    match: re.Match | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Reply":
        return cls(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"),
                   "application/json; charset=utf-8")

    @classmethod
    def html(cls, text: str, status: int = 200) -> "Reply":
        return cls(status, text.encode("utf-8"), "text/html; charset=utf-8")

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Reply":
        return cls(status, text.encode("utf-8"), "text/plain; charset=utf-8")


@dataclass
class FaultConfig:
    """Which fraction of requests misbehave and how. ``paths`` is a regex: only matching
    request paths get random faults (``None``: all but ``/_replay/``)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    retry_after: float = 1.0
    retry_after_http_date: bool = False
    slow_seconds: float = 0.3
    paths: str | None = None

    def update(self, **changes: Any) -> None:
        for k, v in changes.items():
            if not hasattr(self, k):
                raise ValueError(f"unknown fault setting {k!r}")
            setattr(self, k, tuple(v) if k == "kinds" else v)
        bad = set(self.kinds) - set(FAULT_KINDS)
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)}; known: {FAULT_KINDS}")


def _unit(*parts: Any) -> tuple[float, int]:
    h = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:12], "big")


class Catalogue:
    """A deterministic, seeded list of items for one source, mutable for refresh tests.

    Subclasses implement :meth:`make_item` (index -> dict with an ``"id"``) and may override
    :meth:`change_item`. Items keep insertion order (new items go to the end, like a site's
    "oldest first" listing); ``item["rev"]`` counts audio changes."""

    name = ""
    default_size = 30

    def __init__(self, seed: int = 0, size: int | None = None, shared: Path | None = None):
        import random

        self._random = random
        self.seed = seed
        self.shared = shared if shared is not None and shared.is_dir() else None
        self.size = self.default_size if size is None else size
        self.items: dict[str, dict] = {}
        self._next = 0
        self.setup()
        for _ in range(self.size):
            self._add_one()

    def setup(self) -> None:
        """Load sample values (e.g. from shared data) before items are made."""

    def rng(self, *parts: Any):
        return self._random.Random(f"{self.seed}:{self.name}:" + ":".join(map(str, parts)))

    def _add_one(self) -> dict:
        item = self.make_item(self.rng("item", self._next), self._next)
        item.setdefault("rev", 0)
        self._next += 1
        self.items[str(item["id"])] = item
        return item

    def make_item(self, rng, index: int) -> dict:
        raise NotImplementedError

    def change_item(self, rng, item: dict) -> None:
        """Metadata edit for a refresh test; default appends a word to the title."""
        item["title"] = f"{item.get('title', '')} (edited)".strip()

    def listing(self) -> list[dict]:
        return list(self.items.values())

    def mutate(self, add: float = 0.0, remove: float = 0.0, change: float = 0.0,
               change_audio: float = 0.0, seed: int = 1) -> dict[str, list[str]]:
        """Add/remove/change fractions of the current items (seeded). ``change_audio`` items
        get a new audio revision (their audio URL changes) on top of a metadata change."""
        rng = self.rng("mutate", seed, len(self.items))
        ids = list(self.items)
        n = len(ids)
        removed = rng.sample(ids, round(remove * n))
        rest = [i for i in ids if i not in set(removed)]
        changed = rng.sample(rest, min(len(rest), round(change * n)))
        audio = changed[: round(change_audio * n)]
        for i in removed:
            del self.items[i]
        for i in changed:
            self.change_item(self.rng("change", seed, i), self.items[i])
        for i in audio:
            self.items[i]["rev"] = self.items[i].get("rev", 0) + 1
        added = [str(self._add_one()["id"]) for _ in range(round(add * n))]
        return {"added": added, "removed": removed, "changed": changed, "audio_changed": audio}


Handler = Callable[[Request], Reply]


class ReplayApp:
    """Routes, catalogues, fault settings and request counters of one server."""

    def __init__(self, seed: int = 0, sizes: dict[str, int] | None = None,
                 shared: Path | None = None, faults: FaultConfig | None = None,
                 plugins: Iterable[str] | None = None):
        self.seed = seed
        self.sizes = dict(sizes or {})
        self.shared = shared
        self.faults = faults or FaultConfig(seed=seed)
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self.catalogues: dict[str, Catalogue] = {}
        self.settings: dict[str, Any] = {}   # plugin knobs (tokens, page sizes, anti-crawl...)
        self.hits: Counter[str] = Counter()          # every request, by path
        self.ok: Counter[str] = Counter()            # complete 2xx answers (no fault), by path
        self.faulted: Counter[str] = Counter()       # injected faults, by kind
        self._attempts: Counter[str] = Counter()
        self.base_url = ""
        for name in plugins if plugins is not None else discover_plugins():
            importlib.import_module(f"{__package__}.{name}").register(self)

    # ----- plugin API -----
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method.upper(), re.compile(pattern), handler))

    def add_catalogue(self, cls: type[Catalogue]) -> Catalogue:
        # sizes["*"]: items per source for every catalogue not named (laion-audio replay --items)
        cat = cls(seed=self.seed, size=self.sizes.get(cls.name, self.sizes.get("*")), shared=self.shared)
        self.catalogues[cls.name] = cat
        return cat

    def catalogue(self, name: str) -> Catalogue:
        return self.catalogues[name]

    # ----- test API -----
    def set_faults(self, **changes: Any) -> None:
        with self.lock:
            self.faults.update(**changes)

    def mutate(self, name: str, **kw: Any) -> dict[str, list[str]]:
        with self.lock:
            return self.catalogues[name].mutate(**kw)

    def reset_counts(self) -> None:
        with self.lock:
            self.hits.clear(), self.ok.clear(), self.faulted.clear(), self._attempts.clear()

    def stats(self) -> dict:
        with self.lock:
            return {"hits": dict(self.hits), "ok": dict(self.ok), "faulted": dict(self.faulted),
                    "faults": asdict(self.faults)}

    # ----- request handling -----
    def choose_fault(self, method: str, path: str, query: dict[str, str], headers: Any,
                     body: bytes) -> tuple[str | None, int]:
        """The fault for this request (or None) and its attempt number. A header
        ``X-Replay-Fault: KIND`` or query ``_fault=KIND`` forces one, for the first
        ``_fault_times`` attempts when given (every attempt otherwise)."""
        qs = urlencode(sorted((k, v) for k, v in query.items() if not k.startswith("_fault")))
        key = f"{method} {path}?{qs} {hashlib.sha1(body).hexdigest()[:12]}"
        with self.lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
            self.hits[path] += 1
            cfg = self.faults
            forced = headers.get("X-Replay-Fault") or query.get("_fault")
            if forced:
                times = query.get("_fault_times") or headers.get("X-Replay-Fault-Times")
                if times is None or attempt < int(times):
                    return forced, attempt
                return None, attempt
            if cfg.rate <= 0 or path.startswith(CONTROL_PREFIX):
                return None, attempt
            if cfg.paths is not None and not re.search(cfg.paths, path):
                return None, attempt
            u, pick = _unit(cfg.seed, key, attempt)
            if u >= cfg.rate:
                return None, attempt
            return cfg.kinds[pick % len(cfg.kinds)], attempt

    def dispatch(self, req: Request) -> Reply:
        allowed = False
        for method, pattern, handler in self.routes:
            m = pattern.match(req.path)
            if m is None:
                continue
            allowed = True
            if method == req.method or (method == "GET" and req.method == "HEAD"):
                req.match = m
                return handler(req)
        if allowed:
            return Reply.json({"detail": "method not allowed"}, 405)
        return Reply.json({"detail": "not found"}, 404)

    def control(self, req: Request) -> Reply:
        """``GET /_replay/stats``, ``POST /_replay/faults`` (JSON settings),
        ``POST /_replay/mutate`` (JSON: source, add, remove, change, change_audio, seed)."""
        name = req.path[len(CONTROL_PREFIX):]
        try:
            if name == "stats":
                return Reply.json(self.stats())
            if name == "faults" and req.method == "POST":
                self.set_faults(**(req.json() or {}))
                return Reply.json(asdict(self.faults))
            if name == "mutate" and req.method == "POST":
                body = dict(req.json() or {})
                return Reply.json(self.mutate(body.pop("source"), **body))
        except (ValueError, KeyError, TypeError) as e:
            return Reply.json({"detail": str(e)}, 400)
        return Reply.json({"detail": "unknown control"}, 404)


def discover_plugins() -> list[str]:
    pkg = importlib.import_module(__package__)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and not m.ispkg)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "laion-audio-replay/1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; without this, Nagle + delayed ACK add
        # ~40 ms to every keep-alive request
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read counters instead
        log.debug("replay: " + fmt, *args)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_HEAD = do_PUT = do_DELETE = do_GET

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), like a dropped peer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        app: ReplayApp = self.server.app  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        req = Request(self.command, parts.path, query, self.headers, body, app.base_url, app)
        if parts.path.startswith(CONTROL_PREFIX):
            reply = app.control(req)
            self._send(reply.status, reply.body, reply.content_type, reply.headers)  # type: ignore[arg-type]
            return
        fault, _attempt = app.choose_fault(self.command, parts.path, query, self.headers, body)
        cfg = app.faults
        if fault:
            with app.lock:
                app.faulted[fault] += 1
        if fault == "reset":
            self._reset()
            return
        if fault in ("429", "500", "503"):
            headers = {}
            if fault in ("429", "503"):
                if cfg.retry_after_http_date:
                    headers["Retry-After"] = email.utils.formatdate(
                        time.time() + cfg.retry_after, usegmt=True)
                else:
                    headers["Retry-After"] = str(int(cfg.retry_after))
            payload = json.dumps({"detail": f"replay fault {fault}"}).encode()
            self._send(int(fault), payload, "application/json", headers)
            return
        if fault == "slow":
            time.sleep(cfg.slow_seconds)
        try:
            reply = app.dispatch(req)
        except Exception:  # a plugin bug is a 500, not a dead server thread
            log.error("replay handler failed:\n%s", traceback.format_exc())
            reply = Reply.json({"detail": "internal error"}, 500)
        if fault == "wrong_type":
            self._send(200, b"<html><body><h1>Temporarily unavailable</h1></body></html>",
                       "text/html; charset=utf-8", {})
            return
        if not isinstance(reply.body, (bytes, bytearray)):
            self._stream(reply)
            return
        body_bytes = bytes(reply.body)
        if fault == "truncate" and len(body_bytes) > 1:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body_bytes)))
            self.end_headers()
            self.wfile.write(body_bytes[: len(body_bytes) // 2])
            self.wfile.flush()
            self._reset()
            return
        claimed = "Content-Length" in reply.headers
        if 200 <= reply.status < 300 and not claimed:
            # counted before sending: the client may act on the body before this thread resumes
            with app.lock:
                app.ok[parts.path] += 1
        self._send(reply.status, body_bytes, reply.content_type, reply.headers)
        if claimed:            # a lying Content-Length: hang up after the real bytes
            self.wfile.flush()
            self._reset()

    def _stream(self, reply: Reply) -> None:
        """A body of unknown length (no Content-Length; the connection closes at the end)."""
        self.close_connection = True
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Connection", "close")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            for chunk in reply.body:  # type: ignore[union-attr]
                self.wfile.write(chunk)
        except OSError:  # the client hung up (e.g. it hit its size cap)
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:  # resets are expected
        log.debug("replay connection error from %s", client_address)


@contextlib.contextmanager
def serve(port: int = 0, *, seed: int = 0, sizes: dict[str, int] | None = None,
          shared: Path | None = None, faults: FaultConfig | None = None,
          plugins: Iterable[str] | None = None) -> Iterator[tuple[ReplayApp, str]]:
    """Run a replay server on 127.0.0.1 in a background thread; yields ``(app, base_url)``.

    ``shared`` is ``../shared/data`` when present (real sample values for catalogues);
    ``sizes`` overrides items per source (``"*"``: every source); ``faults`` sets the initial fault injection."""
    app = ReplayApp(seed=seed, sizes=sizes, shared=shared, faults=faults, plugins=plugins)
    httpd = _HTTPServer(("127.0.0.1", port), _Handler)
    httpd.app = app  # type: ignore[attr-defined]
    app.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name="laion-audio-replay", daemon=True)
    thread.start()
    try:
        yield app, app.base_url
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
