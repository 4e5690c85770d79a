"""AudioSet: the real segment CSVs parse to the published counts with ontology label names; audio
comes through yt-dlp (as a library) from the replay server's YouTube-like pages, and private /
removed videos are typed ``unavailable`` failures."""
from __future__ import annotations

import av
import pytest

from crawlers.audioset import (AudioSetSource, classify_ytdlp_error, load_label_names,
                               parse_segments, segment_id)
from crawlers.replay import serve
from laion_audio.records import Failure, FailureCode


@pytest.mark.needs_shared
def test_real_eval_segments_parse_to_20371_records_with_ontology_names(shared_data, tmp_path):
    d = shared_data / "audioset"
    source = AudioSetSource(csv=[str(d / "eval_segments.csv")], labels=str(d / "class_labels_indices.csv"),
                            ontology=str(d / "ontology.json"), cache_dir=tmp_path)
    records = list(source.crawl({}))
    assert len(records) == 20371 and len({r.source_id for r in records}) == 20371
    first = records[0]
    assert first.source_id == "--4gqARaEJE_0"
    assert first.tags == ["Domestic animals, pets", "Squeak", "Dog", "Animal"]
    assert first.original_data["youtube_id"] == "--4gqARaEJE"
    assert (first.trim_start, first.trim_end) == (0.0, 10.0)
    assert first.url == "https://www.youtube.com/watch?v=--4gqARaEJE"
    assert not any(r.original_data.get("unknown_mids") for r in records)
    assert all(r.texts == [] for r in records)     # left for keyword-to-caption
    label_count = sum(len(r.tags) for r in records)
    assert label_count == 51804                    # the CSV header's num_positive_labels


@pytest.mark.needs_shared
def test_balanced_train_and_template_option(shared_data, tmp_path):
    d = shared_data / "audioset"
    source = AudioSetSource(csv=[str(d / "balanced_train_segments.csv")],
                            labels=str(d / "class_labels_indices.csv"), caption="template",
                            cache_dir=tmp_path)
    records = list(source.crawl({}))
    assert len(records) == 22160
    rec = next(r for r in records if len(r.tags) == 3)
    assert rec.texts == [f"The sounds of {rec.tags[0]}, {rec.tags[1]} and {rec.tags[2]}"]
    assert rec.caption_provenance["rule"] == "template"
    names = load_label_names(d / "class_labels_indices.csv", d / "ontology.json")
    assert len(names) == 632 and names["/m/09x0r"] == "Speech"


def test_parse_segments_format_and_bad_rows():
    text = ['# Segments csv created Sun Mar  5 10:54:25 2017',
            '# num_ytids=2, num_segs=2, num_unique_labels=2, num_positive_labels=3',
            '# YTID, start_seconds, end_seconds, positive_labels',
            '--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"',
            '-0CamVQdP_Y, 0.000, 6.000, "/m/04rlf,/m/07pbtc8"']
    rows = list(parse_segments(text))
    assert rows == [("--BfvyPmVMo", 20.0, 30.0, ["/m/03l9g"]), ("-0CamVQdP_Y", 0.0, 6.0, ["/m/04rlf", "/m/07pbtc8"])]
    assert segment_id("--BfvyPmVMo", 20.0) == "--BfvyPmVMo_20000"
    with pytest.raises(Failure) as exc:
        list(parse_segments(["abc def ghi, x, 10, \"/m/1\""]))
    assert exc.value.code == FailureCode.BAD_METADATA


@pytest.mark.parametrize("message,code", [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", FailureCode.UNAVAILABLE),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", FailureCode.UNAVAILABLE),
    ("ERROR: [youtube] abc: Sign in to confirm your age", FailureCode.UNAVAILABLE),
    ("ERROR: [youtube] abc: Sign in to confirm you're not a bot", FailureCode.HTTP_ERROR),
    ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", FailureCode.HTTP_ERROR),
    ("ERROR: [generic] Unable to download webpage: The read operation timed out", FailureCode.TIMEOUT),
    ("ERROR: Unsupported URL: http://127.0.0.1:1/youtube/watch?v=abc", FailureCode.WRONG_CONTENT_TYPE),
])
def test_ytdlp_error_classification(message, code):
    assert classify_ytdlp_error(message) == code


@pytest.fixture(scope="module")
def youtube():
    with serve(plugins=["youtube"]) as (app, base):
        yield app, base


def replay_source(base, tmp_path, **kw):
    return AudioSetSource(csv=[f"{base}/audioset/balanced_train_segments.csv"],
                          labels=f"{base}/audioset/class_labels_indices.csv",
                          youtube_base=f"{base}/youtube/watch?v=", cache_dir=tmp_path, **kw)


def media_facts(path):
    """Container, codec and decoded seconds (piped WebM has no duration in its header)."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = sum(frame.samples for frame in c.decode(stream))
        return c.format.name, stream.codec_context.name, samples / stream.codec_context.sample_rate


def test_fetch_with_ytdlp_from_the_replay_server(youtube, tmp_path):
    app, base = youtube
    source = replay_source(base, tmp_path)
    records = list(source.crawl({}))
    assert len(records) == 7 and records[5].tags == ["Rodents, rats, mice"]
    rec = records[5]                               # hb3g7R1jgnA, window 10-20 s of a 22 s video
    app.reset_counts()
    path = source.fetch(rec, tmp_path / "audio")
    fmt, codec, seconds = media_facts(path)
    assert "webm" in fmt and codec == "opus"
    assert abs(seconds - rec.trim_end) < 0.1       # only [0, end] was downloaded
    assert rec.fetched_bytes == path.stat().st_size
    assert app.stats()["hits"][f"/youtube/media/{rec.original_data['youtube_id']}.webm"] >= 1

    whole = replay_source(base, tmp_path, sections="off").fetch(rec, tmp_path / "whole")
    assert abs(media_facts(whole)[2] - (rec.trim_end + 2.0)) < 0.1


def test_private_removed_and_unknown_videos_are_unavailable(youtube, tmp_path):
    app, base = youtube
    source = replay_source(base, tmp_path)
    records = list(source.crawl({}))
    private, removed = records[2], records[3]
    app.catalogue("youtube").items[private.original_data["youtube_id"]]["status"] = "private"
    app.settings["youtube"] = {"removed": [removed.original_data["youtube_id"]]}
    try:
        for rec, status in ((private, "403"), (removed, "410")):
            with pytest.raises(Failure) as exc:
                source.fetch(rec, tmp_path / "audio")
            assert exc.value.code == FailureCode.UNAVAILABLE and status in exc.value.message
        gone = AudioSetSource(csv=[], youtube_base=f"{base}/youtube/watch?v=", cache_dir=tmp_path)
        rec = records[0]
        rec.original_data = dict(rec.original_data, youtube_id="zzzzzzzzzzz")
        with pytest.raises(Failure) as exc:
            gone.fetch(rec, tmp_path / "audio")
        assert exc.value.code == FailureCode.UNAVAILABLE
        assert not list((tmp_path / "audio").glob("*.part"))
    finally:
        app.catalogue("youtube").items[private.original_data["youtube_id"]]["status"] = "public"
        app.settings.pop("youtube", None)


def test_rate_limited_video_is_a_retryable_http_error(youtube, tmp_path):
    app, base = youtube
    source = replay_source(base, tmp_path)
    rec = list(source.crawl({}))[0]
    app.set_faults(rate=1.0, kinds=("429",), paths=r"^/youtube/", retry_after=0)
    try:
        with pytest.raises(Failure) as exc:
            source.fetch(rec, tmp_path / "audio")
        assert exc.value.code == FailureCode.HTTP_ERROR
    finally:
        app.set_faults(rate=0.0)


def test_ytdlp_options_carry_cookies_proxy_rate_and_window(tmp_path):
    from laion_audio.records import Record
    from crawlers.audioset import _QuietLogger
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    source = AudioSetSource(csv=[], cookies=str(cookies), proxy="socks5://127.0.0.1:9050",
                            rate_limit="2000000", sleep=1.5, cache_dir=tmp_path)
    rec = Record(source="audioset", source_id="abcdefghijk_20000", trim_start=20.0, trim_end=30.0,
                 original_data={"youtube_id": "abcdefghijk"})
    opts = source.ydl_options(rec, str(tmp_path / "x.%(ext)s"), _QuietLogger())
    assert opts["format"] == "bestaudio/best" and opts["cookiefile"] == str(cookies)
    assert opts["proxy"] == "socks5://127.0.0.1:9050" and opts["ratelimit"] == 2_000_000
    assert opts["sleep_interval_requests"] == 1.5
    ranges = list(opts["download_ranges"]({}, None))
    assert ranges == [{"start_time": 0.0, "end_time": 30.0}]
    assert "download_ranges" not in AudioSetSource(csv=[], sections="off", cache_dir=tmp_path).ydl_options(
        rec, "x", _QuietLogger())


def test_fetch_under_20_percent_faults_ends_typed_and_a_retry_completes(youtube, tmp_path):
    """Every segment ends fetched or with a typed failure; a clean rerun of the failed ones
    fetches them, and nothing that succeeded is fetched again."""
    from laion_audio.records import Status
    app, base = youtube
    source = replay_source(base, tmp_path)
    records = list(source.crawl({}))
    app.set_faults(rate=0.2, seed=7, paths=r"^/youtube/", retry_after=0,
                   kinds=("429", "500", "503", "reset", "truncate", "wrong_type"))
    try:
        first = source.fetch_many(records, tmp_path / "audio", workers=3)
    finally:
        app.set_faults(rate=0.0)
    assert {r.status for r in first} <= {Status.FETCHED, Status.FAILED}
    typed = {FailureCode.HTTP_ERROR, FailureCode.TIMEOUT, FailureCode.TRUNCATED, FailureCode.WRONG_CONTENT_TYPE}
    assert all(r.failure_code in typed for r in first if r.status == Status.FAILED)
    done = {r.source_id: r.audio_path for r in first if r.status == Status.FETCHED}
    retry = [r for r in first if r.status == Status.FAILED]
    for r in retry:
        r.status, r.failure_code = Status.NEW, ""
    app.reset_counts()
    second = source.fetch_many(retry, tmp_path / "audio", workers=3)
    assert all(r.status == Status.FETCHED for r in second)
    media_hits = {p for p in app.stats()["hits"] if p.startswith("/youtube/media/")}
    assert not any(f"/youtube/media/{sid.rsplit('_', 1)[0]}.webm" in media_hits for sid in done)
    assert len(done) + len(second) == len(records)


@pytest.mark.parametrize("sections", ["prefix", "off"])
@pytest.mark.parametrize("where", ["watch", "media"])
def test_an_error_page_instead_of_media_is_never_a_fetched_file(youtube, tmp_path, sections, where):
    app, base = youtube
    source = replay_source(base, tmp_path, sections=sections)
    rec = list(source.crawl({}))[0]
    app.set_faults(rate=1.0, paths=rf"^/youtube/{where}", kinds=("wrong_type",))
    try:
        with pytest.raises(Failure) as exc:
            source.fetch(rec, tmp_path / "audio")
    finally:
        app.set_faults(rate=0.0)
    assert exc.value.code in (FailureCode.WRONG_CONTENT_TYPE, FailureCode.HTTP_ERROR)
    assert exc.value.code != FailureCode.UNAVAILABLE          # transient: --retry-failed may fix it
    assert not [p for p in (tmp_path / "audio").glob("*") if p.is_file()]
