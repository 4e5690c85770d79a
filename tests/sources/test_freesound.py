"""Freesound APIv2 against the replay server: token from the environment, paging via next,
LAION's filters, captions, licences, preview and OAuth2 original downloads, no leaked secrets."""
from __future__ import annotations

import json

import pytest
import soundfile as sf

from crawlers.freesound import FreesoundSource, description_caption, license_name, name_caption
from laion_audio.records import Failure, FailureCode, Status


def fs(base, fast, **kw):
    return FreesoundSource(api=base + "/apiv2", **fast, **kw)


def test_needs_a_key_from_the_environment(replay, fast, monkeypatch):
    _, base = replay
    monkeypatch.delenv("FREESOUND_API_KEY", raising=False)
    with pytest.raises(Failure) as e:
        list(fs(base, fast).crawl({}))
    assert e.value.code == FailureCode.FORBIDDEN and "FREESOUND_API_KEY" in e.value.message
    monkeypatch.setenv("FREESOUND_API_KEY", "wrong-key-0000")
    with pytest.raises(Failure) as e:
        list(fs(base, fast).crawl({}))
    assert e.value.code == FailureCode.FORBIDDEN and "wrong-key" not in e.value.message


def test_crawl_pages_filters_and_fields(replay, fast, freesound_env):
    app, base = replay
    state: dict = {}
    records = list(fs(base, fast, page_size=7).crawl(state))
    items = {str(i["id"]): i for i in app.catalogue("freesound").listing()}
    assert [r.source_id for r in records] == list(items)
    assert app.hits["/apiv2/search/text/"] == 5 and state == {"next": None, "done": True}
    for rec in records:
        item = items[rec.source_id]
        reason = ("too_long" if item["duration"] > 180 else
                  "low_sample_rate" if item["samplerate"] < 16000 else "")
        assert rec.filter_reason == reason
        assert rec.status == (Status.DROPPED if reason else Status.NEW)
        assert rec.author == item["username"] and rec.tags == item["tags"]
        assert rec.license == license_name(item["license"])
        assert rec.url.endswith("-hq.mp3") and rec.original_data["id"] == item["id"]
        assert rec.texts and all(t.endswith((".", "!", "?")) and t != "." for t in rec.texts)
        assert not any("<" in t or ">" in t for t in rec.texts)
    assert {r.filter_reason for r in records} == {"", "too_long", "low_sample_rate"}
    # the filters are options
    kept = list(fs(base, fast, max_duration=0, min_sample_rate=0).crawl({}))
    assert all(r.status == Status.NEW for r in kept)


def test_caption_rule_and_its_fixes():
    assert name_caption("futuresoundfx-795.mp3") == "futuresoundfx-795."
    assert name_caption("Rain_on_window.wav") == "Rain on window."
    # LAION (splitext) gave "Sample & Hold Me-71-127." here
    assert name_caption("Sample & Hold Me-71-127.wav)") == "Sample & Hold Me-71-127.wav)."
    assert name_caption("<b>Door</b> creak<script>alert(1)</script>.wav") == "Door creak."
    assert description_caption("Heavy rain on a window pane. Recorded with a Zoom H4n.") == \
        "Heavy rain on a window pane."
    assert description_caption("A short digital glitch.<br>Made with a modular synth.") == \
        "A short digital glitch."
    assert description_caption('Morning <a href="x">kettle</a> and radio') == "Morning kettle and radio."
    assert description_caption("") == "" and description_caption("<p> </p>") == ""   # LAION: "."
    assert description_caption("Distant thunder at 2.5 kHz. Then rain.") == "Distant thunder at 2.5 kHz."


def test_licence_names():
    assert license_name("http://creativecommons.org/publicdomain/zero/1.0/") == "CC0 1.0"
    assert license_name("https://creativecommons.org/licenses/by/4.0/") == "CC BY 4.0"
    assert license_name("http://creativecommons.org/licenses/by-nc/3.0/") == "CC BY-NC 3.0"
    assert license_name("http://creativecommons.org/licenses/sampling+/1.0/") == "Sampling+ 1.0"


def test_preview_fetch_and_no_secret_anywhere(replay, fast, freesound_env, tmp_path):
    _, base = replay
    src = fs(base, fast)
    state: dict = {}
    records = [r for r in src.crawl(state) if r.status == Status.NEW]
    path = src.fetch(records[0], tmp_path)
    assert path.suffix == ".mp3" and sf.info(str(path)).format == "MP3"
    dumped = json.dumps(state) + "".join(json.dumps(r.to_row()) for r in records)
    assert "replay-freesound-key" not in dumped


def test_original_download_needs_oauth(replay, fast, freesound_env, monkeypatch, tmp_path):
    app, base = replay
    with pytest.raises(Failure) as e:
        list(fs(base, fast, download="original").crawl({}))
    assert e.value.code == FailureCode.FORBIDDEN
    monkeypatch.setenv("FREESOUND_OAUTH_TOKEN", "replay-freesound-oauth")
    src = fs(base, fast, download="original")
    records = [r for r in src.crawl({}) if r.status == Status.NEW]
    by_type = {r.original_data["type"]: r for r in records}
    for kind, fmt in (("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG")):
        path = src.fetch(by_type[kind], tmp_path)
        assert path.suffix == "." + kind and sf.info(str(path)).format == fmt
    monkeypatch.setenv("FREESOUND_OAUTH_TOKEN", "expired-token-1234")
    with pytest.raises(Failure) as e:
        fs(base, fast, download="original").fetch(by_type["wav"], tmp_path / "x")
    assert e.value.code == FailureCode.FORBIDDEN and "expired-token" not in str(e.value)


def test_next_link_to_another_host_is_refused(replay, fast, freesound_env):
    _, base = replay
    state = {"next": "http://evil.example/apiv2/search/text/?page=2"}
    with pytest.raises(Failure) as e:
        list(fs(base, fast).crawl(state))
    assert e.value.code == FailureCode.BAD_METADATA and "not sending" in e.value.message
