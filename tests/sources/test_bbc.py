"""BBC Sound Effects: the search API against the replay server, and the real legacy CSV."""
from __future__ import annotations

import itertools

import pytest
import soundfile as sf

from crawlers.bbc import BBCSource, laion_filename_caption, laion_original_caption
from laion_audio.records import sample_key


def bbc(base, fast, **kw):
    return BBCSource(api=base, media=base, **fast, **kw)


def test_api_crawl_pages_and_captions(replay, fast):
    app, base = replay
    src = bbc(base, fast, page_size=7)
    state: dict = {}
    records = list(src.crawl(state))
    items = app.catalogue("bbc").listing()
    assert [r.source_id for r in records] == [i["id"] for i in items]
    assert app.hits["/api/sfx/search"] == 4 and state == {"from": 25, "done": True}
    for rec, item in zip(records, items):
        assert rec.texts == [" ".join(item["description"].split())]     # the description rule
        assert rec.caption_provenance["rule"] == "bbc-description"
        assert rec.duration == item["duration"] / 1000
        assert rec.url == f"{base}/wav/{item['id']}.wav"
        assert rec.license.startswith("BBC RemArc") and rec.original_data["api"]["id"] == item["id"]


def test_api_crawl_resumes_where_it_stopped(replay, fast):
    _, base = replay
    full = [r.source_id for r in bbc(base, fast, page_size=5).crawl({})]
    state: dict = {}
    first = [r.source_id for r in itertools.islice(bbc(base, fast, page_size=5).crawl(state), 12)]
    assert state["from"] == 10                # two whole pages done, the third was in flight
    rest = [r.source_id for r in bbc(base, fast, page_size=5).crawl(state)]
    assert first[:10] + rest == full


def test_fetch_downloads_real_wav_under_our_name(replay, fast, tmp_path):
    _, base = replay
    rec = next(iter(bbc(base, fast).crawl({})))
    path = bbc(base, fast).fetch(rec, tmp_path)
    assert path.name == sample_key("bbc", rec.source_id) + ".wav"
    assert sf.info(str(path)).format == "WAV" and rec.fetched_bytes == path.stat().st_size


def test_hostile_description_is_neutralised(fast):
    item = {"id": "../../etc/passwd", "description": "<script>alert(1)</script>Dog <b>barks</b>",
            "duration": 1000}
    rec = BBCSource(**fast).record_from_api(item)
    assert rec.texts == ["Dog barks"] and rec.source_id == "etcpasswd"
    assert "/" not in rec.url.split("/wav/")[1].replace(".wav", "")


def test_laion_caption_rule_without_the_off_by_one():
    desc = "Two-stroke petrol engine driving small elevator, start, run, stop."
    assert laion_original_caption(desc, "07076051.wav") == desc[:-1]       # LAION's bug
    assert laion_filename_caption(desc, "07076051.wav") == desc           # ours keeps the "."
    desc2 = "Single-cylinder Petter engine, start, run stop. (1 1/2 h.p.)"
    assert laion_original_caption(desc2, "07076050.wav").endswith("(1 1_2 h.p.")
    assert laion_filename_caption(desc2, "07076050.wav").endswith("(1 1_2 h.p.)")
    long = "x" * 300
    assert len(laion_filename_caption(long, "07000001.wav") + ".07000001.wav") == 143


@pytest.mark.needs_shared
def test_real_csv_gives_16011_records(shared_data, fast):
    csv_path = shared_data / "bbc" / "BBCSoundEffects.csv"
    state: dict = {}
    records = list(BBCSource(csv=str(csv_path), **fast).crawl(state))
    assert len(records) == 16011 and state == {"row": 16011, "done": True}
    assert len({r.source_id for r in records}) == 16011
    assert sum(r.duration for r in records) / 3600 == pytest.approx(480.37, abs=0.01)
    by_id = {r.source_id: r for r in records}
    assert by_id["07076051"].texts == ["Two-stroke petrol engine driving small elevator, start, run, stop."]
    assert by_id["07076050"].texts == ["Single-cylinder Petter engine, start, run stop. (1 1_2 h.p.)"]
    assert by_id["07076051"].url == "https://sound-effects-media.bbcrewind.co.uk/wav/07076051.wav"
    assert by_id["07076051"].tags == ["Engines: Petrol"]
    assert all(r.texts and len(r.texts[0]) <= 143 for r in records)
    # each caption is LAION's plus the one character LAION cut
    for r in records[:2000]:
        loc = r.original_data["location"]
        assert r.texts[0].startswith(laion_original_caption(r.original_data["description"], loc).strip())


@pytest.mark.needs_shared
def test_real_csv_resumes(shared_data, fast):
    csv_path = str(shared_data / "bbc" / "BBCSoundEffects.csv")
    state: dict = {}
    head = list(itertools.islice(BBCSource(csv=csv_path, **fast).crawl(state), 100))
    assert state["row"] == 99          # the 100th row was handed out but not yet confirmed
    rest = list(BBCSource(csv=csv_path, **fast).crawl(state))
    assert len(rest) == 16011 - 99 and rest[0].source_id == head[-1].source_id
    assert [r.source_id for r in head[:99] + rest] == \
        [r.source_id for r in BBCSource(csv=csv_path).crawl({})]


def test_source_pickles_for_ray_workers(replay, fast):
    """A source goes to Ray workers by pickle; its HTTP client (locks, sockets) stays behind
    and each worker builds its own."""
    import pickle

    import crawlers

    _, base = replay
    src = crawlers.get_source("bbc")(api=base, media=base, page_size=5, rate=0)
    first = next(iter(src.crawl({})))
    clone = pickle.loads(pickle.dumps(src))
    assert "_http" not in clone.__dict__ and clone.options["api"] == base
    assert next(iter(clone.crawl({}))).source_id == first.source_id


def test_cli_options_of_all_sources_coexist():
    import argparse

    import crawlers

    parser = argparse.ArgumentParser()
    for cls in crawlers.all_sources().values():
        cls.add_arguments(parser)
    args = parser.parse_args(["--bbc-api", "http://127.0.0.1:1", "--bbc-caption-rule", "laion"])
    assert BBCSource.options_from_args(args) == {"api": "http://127.0.0.1:1", "caption_rule": "laion"}
