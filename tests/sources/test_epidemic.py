"""Epidemic Sound: per-category JSON search against the replay server, dedup and captions."""
from __future__ import annotations

import itertools

import soundfile as sf

from crawlers.epidemic import CATEGORIES, EpidemicSource, tags_sentence, title_caption


def epidemic(base, fast, **kw):
    return EpidemicSource(base=base, **fast, **kw)


def test_crawl_all_43_categories_one_record_per_id(replay, fast):
    app, base = replay
    assert len(CATEGORIES) == 43
    state: dict = {}
    records = list(epidemic(base, fast).crawl(state))
    items = {str(i["id"]): i for i in app.catalogue("epidemic").listing()}
    ids = [r.source_id for r in records]
    assert len(ids) == len(set(ids)) == len(items)
    assert set(ids) == set(items)
    multi = [i for i in items.values() if len(i["categories"]) > 1]
    assert multi, "the catalogue lists some tracks in two categories"
    assert state["cat"] == 43 and sorted(state["seen"]) == sorted(ids)
    # pages: categories with more than 3 tracks need several pages (meta.totalPages)
    assert app.hits["/json/search/sfx/"] > 43


def test_captions_follow_the_rule(replay, fast):
    app, base = replay
    items = {str(i["id"]): i for i in app.catalogue("epidemic").listing()}
    for rec in epidemic(base, fast).crawl({}):
        item = items[rec.source_id]
        stem = item["title"].rsplit(" ", 1)[0]
        tags = item["metadataTags"]
        assert rec.texts[0] == stem
        if len(tags) >= 2:
            assert rec.texts[1] == f"the sounds of {', '.join(tags[:-1])}, and {tags[-1]}."
        elif len(tags) == 1:
            assert rec.texts[1] == f"the sounds of {tags[0]}."
        else:
            assert rec.texts == [stem]
        first_cat = next(c for c in CATEGORIES if c in item["categories"])
        assert rec.tags[0] == first_cat and rec.original_data["Class_name"] == first_cat
        genre = item["genres"][0]["slug"]
        assert rec.tags == list(dict.fromkeys([first_cat, genre, *tags]))
        assert rec.url.startswith(base + "/ES_ITUNES/") and rec.duration == item["length"]


def test_reference_example_and_fixed_edge_cases():
    assert title_caption("Wrestling Crowd 5") == "Wrestling Crowd"
    assert tags_sentence(["wrestling crowd", "mezzanine level", "huge crowd", "p.a.", "loop"]) == \
        "the sounds of wrestling crowd, mezzanine level, huge crowd, p.a., and loop."
    assert tags_sentence(["glass"]) == "the sounds of glass."       # LAION: "the sounds of , and glass."
    assert tags_sentence([]) == ""                                  # LAION: an exception
    assert title_caption("<i>Door</i> Slam 12 ") == "Door Slam"


def test_resume_mid_crawl(replay, fast):
    _, base = replay
    full = [r.source_id for r in epidemic(base, fast).crawl({})]
    state: dict = {}
    head = [r.source_id for r in itertools.islice(epidemic(base, fast).crawl(state), 9)]
    rest = [r.source_id for r in epidemic(base, fast).crawl(state)]
    assert set(head) | set(rest) == set(full)
    assert len(rest) + len(set(head) - set(rest)) == len(full)   # at most one page re-yielded


def test_fetch_preview_mp3(replay, fast, tmp_path):
    _, base = replay
    src = epidemic(base, fast, categories=["Crowds"])
    rec = next(iter(src.crawl({})))
    path = src.fetch(rec, tmp_path)
    assert path.suffix == ".mp3" and sf.info(str(path)).format == "MP3"
