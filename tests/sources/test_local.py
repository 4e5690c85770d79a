"""Local source with the caption files users bring: AudioCaps (one row per caption), Clotho
(file_name + caption_1..5) and WavCaps JSON, using the real files in ../shared/data."""
from __future__ import annotations

import csv
import json

import pytest

from crawlers.local import LocalSource
from laion_audio.records import FailureCode, Status

from .packfixtures import clip, write_audio  # noqa: F401 (fixture)


def by_status(records):
    records = list(records)
    ok = [r for r in records if r.status == Status.NEW]
    return ok, [r for r in records if r.status == Status.FAILED]


@pytest.mark.needs_shared
def test_clotho_style_csv(shared_data, tmp_path, clip):
    table = shared_data / "clotho" / "wavcaps_derived" / "csv_files" / "test.csv"
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[:3]:
        write_audio(tmp_path / "audio" / "evaluation" / row["file_name"], clip)
    write_audio(tmp_path / "audio" / "my_own_recording_02.wav", clip)
    records = list(LocalSource(input=tmp_path / "audio", captions_file=[str(table)]).crawl({}))
    ok, missing = by_status(records)
    got = {r.title + ".wav": r.texts for r in ok}
    for row in rows[:3]:
        assert got[row["file_name"]] == [row[f"caption_{i}"] for i in range(1, 6)]
    assert got["my_own_recording_02.wav"] == ["my own recording"]      # not listed: file name
    assert len(missing) == len(rows) - 3
    assert {r.failure_code for r in missing} == {FailureCode.MISSING_FILE}


@pytest.mark.needs_shared
def test_audiocaps_style_csv_groups_captions_per_clip(shared_data, tmp_path, clip):
    table = shared_data / "audiocaps" / "dataset" / "test.csv"
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    clips: dict[str, list[str]] = {}
    for row in rows:
        clips.setdefault(row["youtube_id"], []).append(row["caption"])
    assert len(rows) == 4875 and len(clips) == 975
    ytids = list(clips)[:3]
    write_audio(tmp_path / "ac" / f"{ytids[0]}.wav", clip)
    write_audio(tmp_path / "ac" / f"Y{ytids[1]}.flac", clip)
    start = next(r["start_time"] for r in rows if r["youtube_id"] == ytids[2])
    write_audio(tmp_path / "ac" / f"{ytids[2]}_{start}.ogg", clip)
    ok, missing = by_status(LocalSource(input=tmp_path / "ac", captions_file=str(table),
                                        dataset_name="audiocaps").crawl({}))
    assert len(ok) == 3 and len(missing) == 972
    for rec in ok:
        ytid = rec.original_data["youtube_id"]
        assert ytid in ytids and rec.texts == clips[ytid] and len(rec.texts) == 5
        assert len(rec.original_data["audiocap_ids"]) == 5 and rec.source == "audiocaps"
        assert rec.trim_start is None          # AudioCaps files are already cut
    assert all(r.original_data.get("youtube_id") for r in missing)


@pytest.mark.needs_shared
def test_wavcaps_json(shared_data, tmp_path, clip):
    table = shared_data / "wavcaps" / "SoundBible" / "sb_final.json"
    first = json.loads(table.read_text())["data"][0]
    write_audio(tmp_path / "sb" / f"{first['id']}.flac", clip)
    ok, missing = by_status(LocalSource(input=tmp_path / "sb", captions_file=str(table)).crawl({}))
    # the WavCaps caption first; "description" is a caption column of the local source too
    assert [r.texts for r in ok] == [[first["caption"], first["description"]]]
    assert ok[0].original_data["title"] == first["title"]
    assert len(missing) == 1231


def test_root_caption_table_and_sidecar_still_work(tmp_path, clip):
    write_audio(tmp_path / "a" / "x.wav", clip)
    write_audio(tmp_path / "a" / "sub" / "y.wav", clip)
    (tmp_path / "a" / "captions.csv").write_text("file_name,caption_1,caption_2\nx.wav,A dog barks.,Barking.\n")
    (tmp_path / "a" / "sub" / "y.json").write_text(json.dumps({"text": "Rain on a roof.", "tag": ["rain"]}))
    records = {r.source_id: r for r in LocalSource(input=tmp_path / "a").crawl({})}
    assert records["x.wav"].texts == ["A dog barks.", "Barking."]
    assert records["sub/y.wav"].texts == ["Rain on a roof."] and records["sub/y.wav"].tags == ["rain"]


def test_missing_caption_file_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        LocalSource(input=tmp_path / "a", captions_file=str(tmp_path / "nope.csv"))
