"""Id overlap: a ledger seeded with known eval ids loses exactly those ids, and no others."""
from __future__ import annotations

import random

import pytest

from laion_audio.filters import evalsets
from laion_audio.filters.stage import FilterConfig, filter_ledger
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status


@pytest.fixture
def seeded(evalsets_cache, tmp_path):
    cache, _ = evalsets_cache
    items = evalsets.load(cache)
    rng = random.Random(5)
    records, expected = [], {}
    for es, group in items.groupby("eval_set"):
        picks = group.drop_duplicates("match_id").sample(15, random_state=rng.randrange(10**6))
        for row in picks.itertuples():
            if row.id_kind == "freesound":
                rec = Record("freesound", row.match_id, status=Status.CAPTIONED)
            else:
                start = 0.0 if row.start != row.start else row.start
                rec = Record("audioset", f"{row.match_id}_{int(start)}", trim_start=start,
                             trim_end=start + 10, status=Status.CAPTIONED,
                             original_data={"youtube_id": row.match_id})
            if rec.key in expected:      # the same sound/video in two eval sets: seed it once
                continue
            expected[rec.key] = es
            records.append(rec)
    fs_ids = set(items[items.id_kind == "freesound"].match_id)
    yt_ids = set(items[items.id_kind == "youtube"].match_id)
    clean, used = 0, set(expected)
    while clean < 600:
        sid = str(rng.randrange(1, 900_000))
        if sid in fs_ids or ("freesound", sid) in used:
            continue
        used.add(("freesound", sid))
        records.append(Record("freesound", sid, status=Status.CAPTIONED))
        yt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_") for _ in range(11))
        if yt not in yt_ids and ("audioset", f"{yt}_30") not in used:
            used.add(("audioset", f"{yt}_30"))
            records.append(Record("audioset", f"{yt}_30", trim_start=30.0, trim_end=40.0,
                                  status=Status.CAPTIONED, original_data={"youtube_id": yt}))
        clean += 1
    # a record of another source that names a Clotho sound's Freesound id is caught as well
    records.append(Record("soundbible", "sb-1", status=Status.CAPTIONED,
                          original_data={"freesound_id": "116638"}))
    expected[("soundbible", "sb-1")] = "clotho"
    ledger = Ledger(tmp_path / "ledger")
    ledger.write(records)
    return ledger, cache, expected, len(records)


def test_seeded_ids_are_dropped_exactly(seeded):
    ledger, cache, expected, total = seeded
    report, stats = filter_ledger(ledger, FilterConfig(evalsets_cache=str(cache), content=False))
    dropped = {r.key: r for r in ledger.records(status=Status.DROPPED)}
    assert set(dropped) == set(expected)
    assert len(ledger.records(status=Status.CAPTIONED)) == total - len(expected)
    for key, rec in dropped.items():
        assert rec.filter_reason == "eval_overlap_id"
        assert rec.filter_match["method"] in ("freesound_id", "youtube_id")
        assert rec.filter_match["matched_id"] and rec.filter_match["split"]
    # the id is in the eval set the row says (an id may sit in several sets: all named sets hold it)
    assert sum(report.by_source_evalset.values()) == len(expected)
    assert stats.closes and stats.inputs == total
    assert "eval_overlap_id=%d" % len(expected) in report.table()


def test_youtube_window_option(evalsets_cache, tmp_path):
    cache, _ = evalsets_cache
    ledger = Ledger(tmp_path / "l")
    # AudioCaps test has 7fmOlUlwoNg at 20-30 s (also in no other set at another window)
    ledger.write([Record("audioset", "7fmOlUlwoNg_20", trim_start=20.0, trim_end=30.0,
                         original_data={"youtube_id": "7fmOlUlwoNg"}, status=Status.CAPTIONED),
                  Record("youtube", "7fmOlUlwoNg-late", trim_start=300.0, trim_end=310.0,
                         original_data={"youtube_id": "7fmOlUlwoNg"}, status=Status.CAPTIONED)])
    filter_ledger(ledger, FilterConfig(evalsets_cache=str(cache), content=False, youtube_window=True))
    assert ledger.get("audioset", "7fmOlUlwoNg_20").status == Status.DROPPED
    assert ledger.get("audioset", "7fmOlUlwoNg_20").filter_match["method"] == "youtube_id+window"
    assert ledger.get("youtube", "7fmOlUlwoNg-late").status == Status.CAPTIONED
