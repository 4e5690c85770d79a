"""Pack sources: folder, zip, tar.gz and archive-URL inputs give the same records, captions follow
the cleaned-file-name rule, same-named files in two folders stay two records."""
from __future__ import annotations

import shutil

import pytest
import soundfile as sf

import crawlers
from crawlers.packs import PackSource, clean_pack_caption
from laion_audio.records import FailureCode, Status

from .packfixtures import (PACK_FILES, PACK_NAME, clip, pack_dir, pack_targz, pack_zip,  # noqa: F401
                           write_audio)

PACK_SOURCES = ["free_to_use_sounds", "paramount_motion", "sonniss_game_effects", "wesoundeffects"]


def crawl(name, inputs, tmp_path, **kw):
    source = crawlers.get_source(name)(inputs=inputs, cache_dir=tmp_path / "cache", **kw)
    return source, list(source.crawl({}))


def expected(name):
    return {f"{PACK_NAME}/{rel}": (caption, tags) for rel, caption, tags in PACK_FILES}


@pytest.mark.parametrize("name", PACK_SOURCES)
def test_folder_crawl_every_format_and_caption_rule(name, pack_dir, tmp_path):
    source, records = crawl(name, [str(pack_dir)], tmp_path)
    assert isinstance(source, PackSource) and source.paper_samples > 0
    got = {r.source_id: (r.texts[0], r.tags) for r in records}
    assert got == expected(name)            # Licence.pdf is not audio: not a record
    assert all(r.source == name and r.status == Status.NEW for r in records)
    assert {r.original_data["format"] for r in records} == {"wav", "flac", "ogg", "mp3", "m4a", "aiff"}
    assert all(r.caption_provenance["rule"] == "pack file name, cleaned" for r in records)
    hits = [r for r in records if r.title == "Hit 01"]
    assert len(hits) == 2 and len({r.source_id for r in hits}) == 2


@pytest.mark.parametrize("archive", ["pack_zip", "pack_targz"])
def test_archive_crawl_matches_folder_and_fetch_decodes(archive, request, pack_dir, tmp_path):
    path = request.getfixturevalue(archive)
    _, from_folder = crawl("sonniss_game_effects", [str(pack_dir)], tmp_path / "a")
    source, from_archive = crawl("sonniss_game_effects", [str(path)], tmp_path / "b")
    assert [(r.source_id, r.texts, r.tags) for r in from_archive] == \
           [(r.source_id, r.texts, r.tags) for r in from_folder]
    for rec in from_archive:
        got = source.fetch(rec, tmp_path / "fetch")
        assert got.is_file() and str(got).startswith(str(tmp_path / "b" / "cache"))
        assert rec.original_data["archive"] == path.name
        if got.suffix in (".wav", ".flac", ".ogg"):
            data, sr = sf.read(str(got))
            assert len(data) > 0 and sr > 0


def test_fetch_reextracts_from_archive_when_cache_is_gone(pack_zip, tmp_path):
    source, records = crawl("wesoundeffects", [str(pack_zip)], tmp_path)
    shutil.rmtree(tmp_path / "cache")
    rec = next(r for r in records if r.url.endswith(".flac"))
    got = source.fetch(rec, tmp_path / "dest")
    assert got.parent == tmp_path / "dest"
    assert sf.info(str(got)).format == "FLAC"
    if hasattr(source, "fetch_many"):        # the batch fetch runs threads: no shared temp folders
        fetched = source.fetch_many(records, tmp_path / "many", workers=4)
        assert {r.status for r in fetched} == {Status.FETCHED}
        assert len({r.audio_path for r in fetched}) == len(records)
        assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".one-")]


def test_second_crawl_reuses_the_extraction(pack_zip, tmp_path):
    _, first = crawl("paramount_motion", [str(pack_zip)], tmp_path)
    wav = next(r for r in first if r.url.endswith(".wav"))
    before = (tmp_path / "cache").stat().st_mtime_ns, __import__("os").stat(wav.audio_path).st_mtime_ns
    _, second = crawl("paramount_motion", [str(pack_zip)], tmp_path)
    assert [r.to_row() for r in second] == [r.to_row() for r in first]
    assert __import__("os").stat(wav.audio_path).st_mtime_ns == before[1]


def test_missing_input_is_a_typed_failed_record(tmp_path):
    _, records = crawl("free_to_use_sounds", [str(tmp_path / "nope.zip")], tmp_path)
    assert len(records) == 1 and records[0].status == Status.FAILED
    assert records[0].failure_code == FailureCode.MISSING_FILE


def test_not_an_archive_is_a_typed_failed_record(tmp_path):
    bad = tmp_path / "pack.zip"
    bad.write_bytes(b"<html>this is a login page, not a zip</html>")
    _, records = crawl("free_to_use_sounds", [str(bad)], tmp_path)
    assert [r.failure_code for r in records] == [FailureCode.UNDECODABLE]


def test_hostile_members_become_failed_records_next_to_good_ones(tmp_path, clip):
    import zipfile
    good = tmp_path / "good.wav"
    write_audio(good, clip)
    archive = tmp_path / "WeSoundEffects.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(good, "WeSoundEffects/Glass_Break_03.wav")
        zf.writestr("../../outside.wav", b"RIFF....")
        zf.writestr("/etc/cron.d/evil.wav", b"RIFF....")
    _, records = crawl("wesoundeffects", [str(archive)], tmp_path)
    ok = [r for r in records if r.status == Status.NEW]
    bad = {r.source_id: r.failure_code for r in records if r.status == Status.FAILED}
    assert [r.texts for r in ok] == [["Glass Break"]] and ok[0].tags == ["WeSoundEffects"]
    assert bad == {"WeSoundEffects/../../outside.wav": FailureCode.UNSAFE_PATH,
                   "WeSoundEffects//etc/cron.d/evil.wav": FailureCode.UNSAFE_PATH}
    assert all(r.failure_stage == "crawl" for r in records if r.status == Status.FAILED)
    assert not (tmp_path / "outside.wav").exists()


@pytest.mark.parametrize("filename,parents,caption", [
    ("Insect, Fly - 02 - take off, flying away, landing.wav", ("Audionym - The Fly",),
     "Insect, Fly - take off, flying away, landing"),
    ("Lost Transmissions - Static Passbys_51.ogg", ("Soundmorph - Lost Transmissions",), "Static Passbys"),
    ("M16_INT_B_distant.wav", ("Soundmorph - Intervention",), "M16 INT B distant"),
    ("Explosives - Sweetners_07.wav", (), "Explosives - Sweetners"),
    ("Tension - future war  2 ambience desolate dispairing and inevitable.wav", ("Soundmorph - Tension",),
     "future war 2 ambience desolate dispairing and inevitable"),
    ("dog_bark (2).mp3", (), "dog bark"),
    ("Glass Break take 3.wav", (), "Glass Break"),
    ("01.wav", (), "01"),
])
def test_clean_pack_caption(filename, parents, caption):
    assert clean_pack_caption(filename, parents)[0] == caption


# ---------------------------------------------------------------- archive URLs (replay server)
URL_CAPTIONS = {
    "sonniss_game_effects": {"Insect, Fly - take off, flying away, landing", "Concrete Impact",
                             "Bio Gun - reload", "Amb External Amsterdam Amusementparkt"},
    "free_to_use_sounds": {"Traffic, Busy, Close Pass By, Motorbikes, Cars, Honking, Hanoi, Vietnam",
                           "Ocean, Soft Waves, Splashing, Rocks, Sunset Ambience, Low Tide, Penang, Malaysia",
                           "Train, Pass By RL, Slow, Accelerate, Railway Clicks, Lisbon, Portugal"},
    "paramount_motion": {"Cinematic Impact Heavy", "Cinematic Whoosh Fast", "Riser Tension Long"},
    "wesoundeffects": {"Glass Break Small", "Car Door Close"},
}


@pytest.fixture(scope="module")
def replay():
    from crawlers.replay import serve
    with serve(plugins=["packs"]) as (app, base):
        yield app, base


@pytest.mark.parametrize("name", PACK_SOURCES)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_url_crawl(name, kind, replay, tmp_path):
    from laion_audio.http import HttpClient
    app, base = replay
    url = f"{base}/packs/{name}.{kind}"
    http = HttpClient(rate=0, backoff=0.01, respect_robots=False)
    app.reset_counts()
    source, records = crawl(name, [url], tmp_path, http=http)
    assert {r.texts[0] for r in records} == URL_CAPTIONS[name]
    assert all(r.status == Status.NEW and len(r.tags) == 2 for r in records)   # top folder + sub folder
    assert all(r.original_data["archive_url"] == url for r in records)
    assert all(source.fetch(r, tmp_path / "f").stat().st_size > 0 for r in records)
    again = list(source.crawl({}))                        # the archive is not downloaded twice
    assert [r.to_row() for r in again] == [r.to_row() for r in records]
    assert app.stats()["hits"][f"/packs/{name}.{kind}"] == 1


def test_archive_url_survives_a_truncated_download_and_reports_404(replay, tmp_path):
    from laion_audio.http import HttpClient
    app, base = replay
    http = HttpClient(rate=0, backoff=0.01, respect_robots=False)
    flaky = f"{base}/packs/wesoundeffects.zip?_fault=truncate&_fault_times=1"
    _, records = crawl("wesoundeffects", [flaky, f"{base}/packs/nope.zip"], tmp_path, http=http)
    ok = [r for r in records if r.status == Status.NEW]
    failed = [r for r in records if r.status == Status.FAILED]
    assert {r.texts[0] for r in ok} == URL_CAPTIONS["wesoundeffects"]
    assert [r.failure_code for r in failed] == [FailureCode.NOT_FOUND]


def test_hostile_archive_url(replay, tmp_path):
    from laion_audio.http import HttpClient
    _, base = replay
    _, records = crawl("sonniss_game_effects", [f"{base}/packs/hostile.zip"], tmp_path,
                       http=HttpClient(rate=0, respect_robots=False))
    ok = sorted(r.texts[0] for r in records if r.status == Status.NEW)
    bad = sorted(r.failure_code for r in records if r.status == Status.FAILED)
    assert ok == ["Good Hit", "Good Whoosh"]
    assert bad == [FailureCode.TOO_LARGE] + [FailureCode.UNSAFE_PATH] * 3


def test_html_in_member_names_is_neutralised(tmp_path, clip):
    import zipfile
    good = tmp_path / "good.wav"
    write_audio(good, clip)
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(good, "<i>Foley &amp; Doors/Door <b>Slam<b>_01.wav")   # no "/" inside: it splits paths
    _, records = crawl("wesoundeffects", [str(archive)], tmp_path)
    assert [(r.texts, r.tags) for r in records] == [(["Door Slam"], ["Foley & Doors"])]
    assert "<" not in records[0].title
