"""The shared HTTP layer against a real server on 127.0.0.1: retries, Retry-After, caps,
truncation, types, robots.txt, rate limits and secret redaction."""
from __future__ import annotations

import logging
import threading
import time

import pytest
import soundfile as sf

from crawlers.replay import Reply
from laion_audio import http as lhttp
from laion_audio.http import HttpClient, RateLimiter, parse_retry_after, redact, user_agent
from laion_audio.records import Failure, FailureCode


class FakeTime:
    """An injectable clock/sleep: sleeping advances the clock and is recorded."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def client(fake: FakeTime | None = None, **kw) -> HttpClient:
    opts = {"rate": 0, "backoff": 0.01, "max_backoff": 0.05, "seed": 1}
    opts.update(kw)
    if fake is not None:
        opts.update(sleep=fake.sleep, clock=fake.clock)
    return HttpClient(**opts)


def audio_url(base: str) -> str:
    return f"{base}/ES_ITUNES/Wrestling_Crowd_1/ES_Wrestling_Crowd_1.mp3"


def test_user_agent_is_honest_and_sent(replay):
    app, base = replay
    seen = {}

    def echo(req):
        seen["ua"] = req.headers.get("User-Agent")
        return Reply.json({"ok": True})

    app.route("GET", r"^/echo$", echo)
    assert client().get_json(f"{base}/echo") == {"ok": True}
    assert seen["ua"] == user_agent()
    assert seen["ua"].startswith("laion-audio/") and "(+http" in seen["ua"]


def test_retry_after_seconds_is_honoured(replay):
    app, base = replay
    app.set_faults(retry_after=3)
    fake = FakeTime()
    data = client(fake).get_json(f"{base}/json/search/sfx/?genres=Crowds&page=1&_fault=429&_fault_times=2")
    assert "entities" in data
    assert len(fake.sleeps) == 2 and all(s >= 3 for s in fake.sleeps)


def test_retry_after_http_date_is_honoured(replay):
    app, base = replay
    app.set_faults(retry_after=5, retry_after_http_date=True)
    fake = FakeTime()
    client(fake).get_json(f"{base}/json/search/sfx/?genres=Crowds&page=1&_fault=503&_fault_times=1")
    assert len(fake.sleeps) == 1 and 3.5 <= fake.sleeps[0] <= 6


def test_parse_retry_after_forms():
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_exponential_backoff_with_jitter(replay):
    _, base = replay
    fake = FakeTime()
    c = client(fake, backoff=1.0, max_backoff=100)
    c.get_json(f"{base}/json/search/sfx/?genres=Doors&page=1&_fault=500&_fault_times=3")
    assert len(fake.sleeps) == 3
    for attempt, s in enumerate(fake.sleeps):
        assert 0.5 * 2**attempt <= s <= 2**attempt


def test_gives_up_with_typed_failure_after_retries(replay):
    app, base = replay
    fake = FakeTime()
    c = client(fake, retries=3)
    with pytest.raises(Failure) as e:
        c.get_json(f"{base}/json/search/sfx/?genres=Doors&page=1&_fault=503")
    assert e.value.code == FailureCode.HTTP_ERROR and "503" in e.value.message
    assert c.attempts == 4 and app.hits["/json/search/sfx/"] == 4


def test_retry_after_longer_than_we_wait_fails_at_once(replay):
    app, base = replay
    app.set_faults(retry_after=100000)
    fake = FakeTime()
    with pytest.raises(Failure) as e:
        client(fake).get_json(f"{base}/json/search/sfx/?genres=Doors&_fault=429")
    assert e.value.code == FailureCode.HTTP_ERROR and fake.sleeps == []


@pytest.mark.parametrize("path,code", [("/nothing-here", FailureCode.NOT_FOUND),
                                       ("/apiv2/search/text/", FailureCode.FORBIDDEN)])
def test_status_codes_map_to_typed_failures(replay, path, code):
    _, base = replay
    with pytest.raises(Failure) as e:
        client().get_json(base + path)
    assert e.value.code == code


def test_connection_reset_is_retried(replay):
    app, base = replay
    data = client().get_json(f"{base}/json/search/sfx/?genres=Doors&page=1&_fault=reset&_fault_times=2")
    assert "entities" in data and app.faulted["reset"] == 2


def test_truncated_body_is_retried_then_typed(replay, tmp_path):
    app, base = replay
    url = audio_url(base)
    got = client().download(url + "?_fault=truncate&_fault_times=1", tmp_path / "a.mp3")
    assert got.bytes == got.path.stat().st_size and sf.info(str(got.path)).format == "MP3"
    with pytest.raises(Failure) as e:
        client(retries=2).download(url + "?_fault=truncate", tmp_path / "b.mp3")
    assert e.value.code == FailureCode.TRUNCATED
    assert not (tmp_path / "b.mp3").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp3"]   # no temporary files left


def test_wrong_content_type_is_a_typed_failure(replay, tmp_path):
    _, base = replay
    with pytest.raises(Failure) as e:
        client(retries=1).download(audio_url(base) + "?_fault=wrong_type", tmp_path / "x.mp3")
    assert e.value.code == FailureCode.WRONG_CONTENT_TYPE
    with pytest.raises(Failure) as e:   # an audio URL is not a JSON answer
        client(retries=0).get_json(audio_url(base))
    assert e.value.code == FailureCode.WRONG_CONTENT_TYPE
    assert not list(tmp_path.iterdir())


def test_slow_answer_times_out(replay):
    app, base = replay
    app.set_faults(slow_seconds=0.6)
    with pytest.raises(Failure) as e:
        client(retries=1, read_timeout=0.2).get_json(f"{base}/json/search/sfx/?genres=Doors&_fault=slow")
    assert e.value.code == FailureCode.TIMEOUT


def test_size_caps(replay, tmp_path):
    _, base = replay
    c = client(retries=0)
    with pytest.raises(Failure) as e:           # a 2 GB claim is refused before reading
        c.download(f"{base}/hostile/claim-2gb.wav", tmp_path / "claim.wav")
    assert e.value.code == FailureCode.TOO_LARGE and "Content-Length" in e.value.message
    t = time.monotonic()
    with pytest.raises(Failure) as e:           # an endless body is cut off at the cap
        client(retries=0, max_bytes=2 << 20).download(f"{base}/hostile/endless.wav", tmp_path / "e.wav")
    assert e.value.code == FailureCode.TOO_LARGE and time.monotonic() - t < 20
    with pytest.raises(Failure) as e:           # an enormous page
        client(retries=0, max_page_bytes=1 << 20).get_json(f"{base}/hostile/huge-page.json")
    assert e.value.code == FailureCode.TOO_LARGE
    with pytest.raises(Failure) as e:           # a real file over a small cap
        client(retries=0, max_bytes=1000).download(audio_url(base), tmp_path / "small.mp3")
    assert e.value.code == FailureCode.TOO_LARGE
    assert not list(tmp_path.iterdir())


def test_robots_txt(replay):
    app, base = replay
    c = client()
    assert "Sound effects" in c.get_html(f"{base}/se?page=1")
    with pytest.raises(Failure) as e:
        c.get_html(f"{base}/mypage/favourites")
    assert e.value.code == FailureCode.FORBIDDEN and "robots.txt" in e.value.message
    assert app.hits["/robots.txt"] == 1            # parsed once per host
    assert app.hits.get("/mypage/favourites", 0) == 0


def test_robots_server_error_means_disallow_and_crawl_delay_slows(replay):
    app, base = replay
    app.set_faults(rate=1.0, kinds=("500",), paths=r"^/robots\.txt$")
    with pytest.raises(Failure) as e:
        client(retries=1).get_html(f"{base}/se?page=1")
    assert e.value.code == FailureCode.FORBIDDEN
    app.set_faults(rate=0.0)
    app.settings["audiostock_robots"] = "User-agent: *\nCrawl-delay: 2\nDisallow: /cart\n"
    c = client(rate=10)
    c.get_html(f"{base}/se?page=1")
    assert c.limiter._rates[lhttp.host_of(base)] == pytest.approx(0.5)


def test_rate_limiter_per_host_token_bucket():
    fake = FakeTime()
    lim = RateLimiter(rate=2, burst=1, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        lim.acquire("http://a")
    assert sum(fake.sleeps) == pytest.approx(2.0)    # 4 waits of 0.5 s after the first token
    before = len(fake.sleeps)
    lim.acquire("http://b")                          # another host has its own bucket
    assert len(fake.sleeps) == before


def test_rate_limiter_is_thread_safe():
    lim = RateLimiter(rate=40, burst=1)
    t = time.monotonic()
    threads = [threading.Thread(target=lim.acquire, args=("http://h",)) for _ in range(9)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert time.monotonic() - t >= 8 / 40 * 0.9      # 9 tokens at 40/s: at least 8 intervals


def test_secrets_are_redacted(replay, monkeypatch, caplog):
    _, base = replay
    monkeypatch.setenv("MY_TEST_SECRET", "s3cr3t-value-123")
    assert lhttp.secret_from_env("MY_TEST_SECRET") == "s3cr3t-value-123"
    assert "s3cr3t" not in redact("GET http://x/?token=s3cr3t-value-123&q=1")
    assert "abc123" not in redact("Authorization: Bearer abc123")
    assert "zzz999" not in redact("http://x/?api_key=zzz999")
    caplog.set_level(logging.INFO, logger="laion_audio.http")
    with pytest.raises(Failure) as e:
        client(retries=1).get_json(f"{base}/apiv2/search/text/?token=s3cr3t-value-123&_fault=503")
    assert "s3cr3t" not in str(e.value) and "s3cr3t" not in caplog.text
    assert "retrying" in caplog.text


def test_partial_downloads_of_a_killed_run_are_removable(tmp_path):
    (tmp_path / ".bbc-1.wav.part-123-456").write_bytes(b"half")
    (tmp_path / "bbc-2.wav").write_bytes(b"done")
    assert lhttp.remove_partial_downloads(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bbc-2.wav"]


def test_items_without_a_usable_id_are_skipped(fast):
    from crawlers.bbc import BBCSource

    src = BBCSource(**fast)
    assert not src.keyed(src.record_from_api({"id": "///", "description": "x"}))
    assert src.keyed(src.record_from_api({"id": "07076051", "description": "x"}))


def test_no_bare_get_outside_the_http_layer():
    """Issue 15: every GET in the repository (tests and benchmarks too) goes through
    laion_audio/http.py, so politeness, caps and typed failures cannot be skipped by accident."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("laion_audio", "crawlers", "pipelines", "tests", "benchmarks", "docs"):
        for path in sorted((repo / folder).rglob("*.py")):
            if path.relative_to(repo).as_posix() == "laion_audio/http.py":
                continue
            if re.search(r"\brequests\.get\(", path.read_text(encoding="utf-8")):
                offenders.append(path.relative_to(repo).as_posix())
    assert offenders == [], f"a bare GET outside laion_audio/http.py: {offenders}"
