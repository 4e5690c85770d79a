"""Audiostock: scraped listing and detail pages against the replay server; robots.txt and
anti-crawl answers as typed failures."""
from __future__ import annotations

import pytest
import soundfile as sf

from crawlers.audiostock import AudiostockSource, parse_length, title_caption
from laion_audio.records import Failure, FailureCode, Status


def stock(base, fast, **kw):
    return AudiostockSource(base=base, **fast, **kw)


def test_crawl_listing_and_details(replay, fast):
    app, base = replay
    state: dict = {}
    records = list(stock(base, fast).crawl(state))
    items = {str(i["id"]): i for i in app.catalogue("audiostock").listing()}
    assert [r.source_id for r in records] == list(items)
    assert state == {"page": 4, "done": True} and app.hits["/robots.txt"] == 1
    first = records[0]
    # the real LAION sample: "Bubble 02", purpose Video, impression Horror, its 30 tags
    assert first.texts == ["Bubble 02"] and first.original_data["impression"] == "Horror"
    assert first.original_data["purpose"] == "Video"
    if app.shared is not None:                                        # the real sample's tags
        assert len(first.tags) == 30 and first.tags[-1] == "copacopo"
    assert first.original_data["title"] == "1150592 Bubble 02"       # LAION: "Audiostock dataset"
    for rec in records:
        item = items[rec.source_id]
        assert rec.status == Status.NEW and rec.url == f"{base}/audio/{item['id']}/play"
        assert rec.tags == item["tags"] and rec.author == item["creator"]
        assert not rec.texts[0][0].isdigit()
        assert rec.duration == round(item["seconds"])


def test_caption_rule():
    assert title_caption("1150592 Bubble 02") == "Bubble 02"
    assert title_caption("Cartoon jump") == "Cartoon jump"          # LAION: "jump"
    assert title_caption("No.12 Door\nchime") == "Door chime"
    assert title_caption("<script>x()</script>Sword swing") == "Sword swing"
    assert parse_length("0:02") == 2 and parse_length("01:15") == 75 and parse_length("2.0") == 2


def test_fetch_mp3(replay, fast, tmp_path):
    _, base = replay
    src = stock(base, fast, max_pages=1)
    rec = next(iter(src.crawl({})))
    path = src.fetch(rec, tmp_path)
    assert path.suffix == ".mp3" and sf.info(str(path)).format == "MP3"


@pytest.mark.parametrize("kind,needle", [("403", "HTTP 403"), ("captcha", "captcha"),
                                         ("encrypted", "encrypted")])
def test_anti_crawl_answers_are_typed_failures(replay, fast, kind, needle):
    app, base = replay
    app.settings["audiostock_anticrawl"] = {"kind": kind, "every": 4}
    records = list(stock(base, fast, retries=1).crawl({}))
    failed = [r for r in records if r.status == Status.FAILED]
    assert len(records) == 18 and len(failed) == 5
    assert all(r.failure_code == FailureCode.FORBIDDEN and needle in r.failure_message
               and r.failure_stage == "crawl" for r in failed)


@pytest.mark.parametrize("kind", ["403", "captcha"])
def test_blocked_listing_fails_the_crawl_cleanly(replay, fast, kind):
    app, base = replay
    app.settings["audiostock_anticrawl"] = {"kind": kind, "listing": True}
    with pytest.raises(Failure) as e:
        list(stock(base, fast, retries=1).crawl({}))
    assert e.value.code == FailureCode.FORBIDDEN


def test_robots_disallow_is_respected(replay, fast):
    app, base = replay
    app.settings["audiostock_robots"] = "User-agent: *\nDisallow: /\n"
    with pytest.raises(Failure) as e:
        list(stock(base, fast).crawl({}))
    assert e.value.code == FailureCode.FORBIDDEN and "robots.txt" in e.value.message
    assert app.hits.get("/se", 0) == 0
