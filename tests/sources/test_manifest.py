"""The manifest source: LAION's released column layouts, column maps, formats, streaming,
resume, user mistakes as one line + exit 2, and the LAION lists the replay serves."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawlers.manifest import PRESETS, ManifestSource, choose_preset, iter_blocks, parse_columns
from laion_audio.records import Status

from .conftest import replay_request

REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _crawl(files, **opts) -> list:
    return list(ManifestSource(files=[str(f) for f in files], **opts).crawl({}))


# --- each LAION preset against a fixture with the documented column layout ------------------
def test_laion_epidemic_layout(tmp_path):
    f = _csv(tmp_path / "Epidemic_all_debiased.csv",
             ["url", "caption1", "caption2", "caption_t5", "epidemic_id"],
             [["https://dkihjuum4jcjr.cloudfront.net/ES_ITUNES/Wrestling_Crowd/ES_Wrestling_Crowd.mp3",
               "Wrestling Crowd", "the sounds of wrestling crowd, mezzanine level, and loop.",
               "A person cheers in a huge crowd.", "88761"],
              ["https://example.org/ES_Jet.mp3", "Jet Flyby", "", "", "4"]])
    a, b = _crawl([f])
    assert (a.source, a.source_id) == ("epidemic", "88761")
    assert a.texts == ["Wrestling Crowd", "the sounds of wrestling crowd, mezzanine level, and loop."]
    assert a.text_augment_t5 == "A person cheers in a huge crowd."
    assert a.caption_provenance == {"rule": "released", "release": "Epidemic_all_debiased.csv",
                                    "columns": ["caption1", "caption2"], "t5_column": "caption_t5"}
    assert a.url.endswith("ES_Wrestling_Crowd.mp3") and a.status == Status.NEW
    # an empty caption2 / caption_t5 is no caption, not ""
    assert b.texts == ["Jet Flyby"] and b.text_augment_t5 is None
    assert b.caption_provenance["columns"] == ["caption1"]


def test_laion_audiostock_layout_ids_from_urls(tmp_path):
    f = _csv(tmp_path / "audiostock_all.csv", ["url", "caption"],
             [["https://audiostock.net/audio/1150592/play", "Bubble 02"],
              ["https://cdn.example.org/x.mp3", "Door chime"]])
    a, b = _crawl([f])
    assert (a.source, a.source_id, a.texts) == ("audiostock", "1150592", ["Bubble 02"])
    assert b.source == "audiostock" and len(b.source_id) == 20      # stable hash of the URL
    assert _crawl([f])[1].source_id == b.source_id


def test_laion_freesound_meta_layout_is_by_id(tmp_path):
    f = _csv(tmp_path / "freesound_meta.csv",
             ["audio_filename", "caption_1", "caption_2", "freesound_id", "username",
              "freesound_url", "license"],
             [["2394.flac", "futuresoundfx-795.", "A short digital glitch.", "282776", "ERH",
               "https://freesound.org/people/ERH/sounds/282776/", "CC0 1.0"],
              ["2395.flac", "Rain on window.", "", "bad-id", "x", "", "CC BY 4.0"],
              ["2396.flac", "Bell.", "", "282777", "y", "",
               "https://creativecommons.org/licenses/by/4.0/"]])
    a, b, c = _crawl([f])
    assert c.license == "CC BY 4.0"
    assert (a.source, a.source_id, a.author, a.license) == ("freesound", "282776", "ERH", "CC0 1.0")
    assert a.url == "" and a.texts == ["futuresoundfx-795.", "A short digital glitch."]
    assert a.original_data["freesound_url"].endswith("/282776/")   # kept, not used as audio
    assert a.original_data["audio_filename"] == "2394.flac"
    assert b.status == Status.FAILED and b.failure_code == "bad_metadata"


def test_laion_freesound_drive_layout(tmp_path):
    f = _csv(tmp_path / "fs.csv", ["url", "caption1", "caption2", "freesound_id"],
             [["", "Rain on window.", "", "282789"]])
    assert choose_preset(str(f), None, ["url", "caption1", "caption2", "freesound_id"]).name == \
        "laion-freesound-drive"
    (rec,) = _crawl([f])
    assert (rec.source, rec.source_id, rec.url, rec.texts) == ("freesound", "282789", "", ["Rain on window."])


def test_laion_bbc_layout_uses_the_bbc_caption_rule(tmp_path):
    f = _csv(tmp_path / "BBCSoundEffects.csv",
             ["location", "description", "secs", "category", "CDNumber", "CDName", "tracknum"],
             [["07076051.wav", "Two-stroke petrol engine driving small elevator, start, run, stop.",
               "194", "Engines: Petrol", "EC117D", "Diesel & Petrol Engines", "4"]])
    (rec,) = _crawl([f], media="http://127.0.0.1:9")
    assert (rec.source, rec.source_id, rec.duration) == ("bbc", "07076051", 194.0)
    assert rec.url == "http://127.0.0.1:9/wav/07076051.wav"
    assert rec.texts == ["Two-stroke petrol engine driving small elevator, start, run, stop."]
    assert rec.original_data["release"] == "BBCSoundEffects.csv"


def test_real_bbc_listing_from_shared_data(shared_data):
    path = shared_data / "bbc" / "BBCSoundEffects.csv"
    if not path.is_file():
        pytest.skip("no BBCSoundEffects.csv in ../shared/data")
    src = ManifestSource(files=[str(path)])
    ManifestSource.validate(src.options)
    state: dict = {}
    recs = []
    for rec in src.crawl(state):
        recs.append(rec.source_id)
    assert len(recs) == 16011 and len(set(recs)) == len(recs) and state["done"]
    assert ManifestSource.dataset_names(src.options) == ["bbc"]


# --- column maps, formats, streaming, resume ------------------------------------------------
def test_column_map_with_constants_and_every_format(tmp_path):
    rows = [{"link": "https://a.example/1.wav", "key": "k1", "c1": "A dog barks.", "c2": "Barking.",
             "lic": "CC0 1.0", "who": "me", "site": "mysite"},
            {"link": "https://a.example/2.wav", "key": "k2", "c1": "Rain.", "c2": "",
             "lic": "CC BY 4.0", "who": "you", "site": "mysite"}]
    header = list(rows[0])
    files = [_csv(tmp_path / "m.csv", header, [list(r.values()) for r in rows]),
             _csv(tmp_path / "m.tsv", header, [list(r.values()) for r in rows], delimiter="\t")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    files += [tmp_path / "m.parquet", tmp_path / "m.jsonl"]
    spec = "url=link,id=key,text=c1+c2,license=lic,author=who,source=site"
    for f in files:
        recs = _crawl([f], columns=spec)
        assert [(r.source, r.source_id, r.texts, r.license, r.author) for r in recs] == [
            ("mysite", "k1", ["A dog barks.", "Barking."], "CC0 1.0", "me"),
            ("mysite", "k2", ["Rain."], "CC BY 4.0", "you")], f
    # a constant source (not a column name)
    recs = _crawl([files[0]], columns="url=link,id=key,text=c1,source=freesound")
    assert {r.source for r in recs} == {"freesound"}
    assert ManifestSource.dataset_names({"files": [str(files[0])], "columns": spec}) == ["mysite"]


def test_parse_columns_rejects_mistakes():
    assert parse_columns("text=a+b, url=u") == {"text": ["a", "b"], "url": "u"}
    for bad in ("color=x", "url", "url="):
        with pytest.raises(ValueError):
            parse_columns(bad)


def test_large_manifest_streams_in_blocks_and_resumes(tmp_path):
    n = 30000
    f = tmp_path / "Epidemic_all_debiased.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption1", "caption2", "caption_t5", "epidemic_id"])
        for i in range(n):
            w.writerow([f"https://e.example/{i}.mp3", f"Clip {i}", "", "", str(i)])
    sizes = [len(b) for b in iter_blocks(str(f))]
    assert sum(sizes) == n and len(sizes) > 1 and max(sizes) < n     # never one block of all rows
    src = ManifestSource(files=[str(f)])
    state: dict = {}
    it = src.crawl(state)
    first = [next(it) for _ in range(12000)]
    del it                                   # interrupted; state holds whole blocks only
    rest = list(src.crawl(state))
    ids = [r.source_id for r in first] + [r.source_id for r in rest]
    assert set(ids) == {str(i) for i in range(n)}
    assert len(ids) - n < max(sizes)         # at most one block is listed twice
    assert state == {"file": 1, "row": 0, "done": True}


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path):
    f = _csv(tmp_path / "x.csv", ["a", "b"], [["1", "2"]])
    ep = _csv(tmp_path / "e.csv", ["url", "caption"], [["https://x/1.mp3", "c"]])
    cases = [["--manifest", str(tmp_path / "missing.csv")],
             ["--manifest", str(f)],                                        # no preset matches
             ["--manifest", str(ep), "--manifest-format", "laion-nope"],
             ["--manifest", str(ep), "--manifest-format", "laion-epidemic"],  # wrong layout
             ["--manifest", str(ep), "--manifest-columns", "url=nope,text=caption"],
             []]
    for extra in cases:
        r = subprocess.run([sys.executable, "-m", "laion_audio", "build", "--source", "manifest",
                            "--out", str(tmp_path / "o"), "--inline", *extra],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2, (extra, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_presets_are_documented():
    doc = (REPO / "docs" / "sources.md").read_text()
    for name in PRESETS:
        assert name in doc, name


# --- the replay serves LAION's released lists ---------------------------------------------
def test_replay_serves_laion_lists_in_the_real_layouts(replay, tmp_path):
    app, base = replay
    expected = {"Epidemic_all_debiased.csv": ("laion-epidemic", "epidemic"),
                "audiostock_all.csv": ("laion-audiostock", "audiostock"),
                "freesound_meta.csv": ("laion-freesound", "freesound"),
                "freesound_drive.csv": ("laion-freesound-drive", "freesound"),
                "BBCSoundEffects.csv": ("laion-bbc", "bbc")}
    for name, (preset, source) in expected.items():
        body = replay_request("GET", f"{base}/laion/{name}")
        assert body.status_code == 200
        path = tmp_path / name
        path.write_bytes(body.content)
        header = next(csv.reader(body.text.splitlines()))
        assert set(PRESETS[preset].required) <= set(header)
        # the drive list is not a released file name: found by its columns
        assert choose_preset(str(path), None, header).name == preset
        recs = _crawl([path])
        assert len(recs) == len(app.catalogue(source).items)
        assert {r.source for r in recs} == {source}
        assert {r.source_id for r in recs} == set(app.catalogue(source).items)
    truth = replay_request("POST", f"{base}/laion/rot",
                           json={"dead": 0.1, "changed": 0.05, "seed": 2}).json()
    for source, t in truth.items():
        n = t["population"]
        assert len(t["dead"]) == round(0.1 * n) and len(t["changed"]) == round(0.05 * n)
        assert not set(t["dead"]) & set(t["changed"])
    # the release still lists the dead items (a snapshot), the site no longer has them
    ep = replay_request("GET", f"{base}/laion/Epidemic_all_debiased.csv").text
    dead = truth["epidemic"]["dead"][0]
    assert f",{dead}\n" in ep and dead not in app.catalogue("epidemic").items


# --- rot classes and the export's scrubbing, on a hand-made ledger -------------------------
def _rec(source, ident, status, **kw):
    from laion_audio.records import Record

    return Record(source=source, source_id=ident, status=status, **kw)


def test_rot_classes_from_typed_failures(tmp_path):
    from laion_audio.ledger import Ledger
    from laion_audio.records import FailureCode
    from laion_audio.report import rot_figures

    recs = [
        _rec("s", "ok", Status.SHARDED, audio_sha256="a" * 64,
             filter_match={"expected_audio_sha256": "a" * 64}),
        _rec("s", "ok2", Status.CAPTIONED, audio_sha256="b" * 64),
        _rec("s", "404", Status.FAILED, failure_stage="fetch", failure_code=FailureCode.NOT_FOUND),
        _rec("s", "gone", Status.VANISHED),
        _rec("s", "403", Status.FAILED, failure_stage="fetch", failure_code=FailureCode.FORBIDDEN),
        _rec("s", "429", Status.FAILED, failure_stage="fetch", failure_code=FailureCode.HTTP_ERROR,
             failure_message="GET u: HTTP 429 after 6 attempts"),
        _rec("s", "500", Status.FAILED, failure_stage="fetch", failure_code=FailureCode.HTTP_ERROR,
             failure_message="GET u: HTTP 500 after 6 attempts"),
        _rec("s", "chg", Status.FAILED, failure_stage="transcode",
             failure_code=FailureCode.AUDIO_CHANGED),
        _rec("s", "new", Status.NEW, failure_stage="fetch", failure_code="quota_deferred",
             failure_message="Freesound daily API quota (5/day) used up; left pending"),
        _rec("s", "new2", Status.NEW),
        _rec("s", "long", Status.DROPPED, filter_reason="too_long"),
        _rec("s", "dup", Status.DROPPED, filter_reason="duplicate", audio_sha256="c" * 64),
    ]
    with Ledger(tmp_path / "ledger") as led:
        led.write(recs)
        rot = rot_figures(led)["s"]
    counts = {k: rot[k]["count"] for k in ("available", "gone", "changed", "blocked", "not_tried",
                                           "error", "excluded")}
    assert counts == {"available": 3, "gone": 2, "changed": 1, "blocked": 2, "not_tried": 2,
                      "error": 1, "excluded": 1}
    assert rot["records"] == 12 and rot["verified"] == 1 and rot["gone"]["percent"] == 16.67
    assert rot["quota"] == {"left": 2, "per_day": 5, "days": 1,
                            "line": "s: daily API quota reached; 2 left, ~1 day at this quota "
                                    "(5 requests/day); rerun the same command to resume"}


def test_export_keeps_no_local_path_and_no_secret(tmp_path, monkeypatch):
    from laion_audio.commands.export_manifest import export
    from laion_audio.ledger import Ledger

    monkeypatch.setenv("FREESOUND_API_KEY", "sekrit-key-123456")
    work = tmp_path / "work"
    local = tmp_path / "music" / "dog.wav"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"RIFF")
    recs = [
        _rec("local", "dog", Status.SHARDED, url=str(local), texts=["A dog."],
             original_data={"file_path": str(local), "folder": str(tmp_path / "music"),
                            "note": f"read from {work}/raw/x.wav"},
             audio_sha256="d" * 64, split="train", shard="local/train/0.tar"),
        _rec("freesound", "1", Status.SHARDED, texts=["Rain."], audio_sha256="e" * 64,
             url="https://cdn.example/1.mp3?token=sekrit-key-123456&x=1",
             original_data={"download_url": "https://f.example/d?api_key=sekrit-key-123456",
                            "log": "GET with key sekrit-key-123456"},
             split="test", shard="freesound/test/0.tar"),
        _rec("freesound", "2", Status.FAILED, texts=["Gone."]),      # not in the corpus
    ]
    with Ledger(work / "ledger") as led:
        led.write(recs)
    for name in ("m.parquet", "m.csv"):
        out = export(work, tmp_path / "rel" / name)
        assert out["records"] == 2
        raw = (tmp_path / "rel" / name).read_bytes() + (tmp_path / "rel" / name).with_suffix(".md").read_bytes()
        for bad in (b"sekrit", str(tmp_path).encode(), b"/music/"):
            assert bad not in raw, (name, bad)
        got = {r.key: r for r in ManifestSource(files=[str(tmp_path / "rel" / name)]).crawl({})}
        assert got[("local", "dog")].url == ""
        assert got[("local", "dog")].original_data["file_path"] == "dog.wav"
        assert got[("freesound", "1")].url == "https://cdn.example/1.mp3?token=***&x=1"
        assert got[("freesound", "1")].filter_match == {"expected_audio_sha256": "e" * 64}


def test_our_manifest_is_read_verbatim_other_lists_are_cleaned(tmp_path):
    texts = ["Rock &amp; roll <loud> drums.", "  spaced  "]
    rows = [{"source": "freesound", "source_id": "1", "url": "https://x.example/1.mp3",
             "texts": texts, "tags": ["a &amp; b"], "text_augment_t5": "[not a list]",
             "license": "CC0 1.0", "author": "x", "caption_provenance": '{"rule": "r"}',
             "original_data": '{"k": "v"}'}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ours.parquet")
    (rec,) = _crawl([tmp_path / "ours.parquet"])
    # no unescaping or re-captioning; the one text rule of every source (crawlers.base
    # clean_record) still trims the ends
    assert rec.texts == [texts[0], "spaced"] and rec.tags == ["a &amp; b"] and rec.text_augment_t5 == "[not a list]"
    assert rec.caption_provenance == {"rule": "r"} and rec.original_data == {"k": "v"}
    f = _csv(tmp_path / "audiostock_all.csv", ["url", "caption"],
             [["https://audiostock.net/audio/5/play", "Rock &amp; roll <b>loud</b>\x07 drums."]])
    (rec,) = _crawl([f])
    assert rec.texts == ["Rock & roll loud drums."]


# --- Freesound by id ----------------------------------------------------------------------
def test_api_pacer_spaces_requests_and_learns_limits():
    from crawlers.freesound import ApiPacer, QuotaExhausted

    now = [0.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    pacer = ApiPacer(per_minute=30, recheck=100, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        pacer.wait()
    assert slept == [2.0, 2.0, 2.0]                  # 60 s / 30
    pacer.learn(2, "second")                         # "(2/second)": 120/minute is more, keep 30
    assert pacer.per_minute == 30
    pacer.learn(10, "minute")                        # the key's real level is lower
    assert pacer.per_minute == 10
    pacer.learn(2000, "day")
    with pytest.raises(QuotaExhausted) as e:
        pacer.check()
    assert e.value.code == "quota_deferred" and "(2000/day)" in e.value.message
    now[0] += 101                                    # a later run (or a long one) asks again
    pacer.check()


def test_freesound_by_id_preview_original_and_missing(replay, fast, tmp_path, monkeypatch):
    from laion_audio.records import Record

    app, base = replay
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    item = next(iter(app.catalogue("freesound").items.values()))
    src = ManifestSource(files=[], freesound_api=f"{base}/apiv2", **fast)
    rec = Record(source="freesound", source_id=str(item["id"]), texts=["x."])
    out = src.fetch_many([rec], tmp_path)[0]
    assert out.status == Status.FETCHED and "/data/previews/" in out.url
    assert out.author == item["username"] and out.license and out.tags == item["tags"]
    assert app.hits[f"/apiv2/sounds/{item['id']}/"] == 1
    # originals need OAuth2: without it a typed failure, with it the original file type
    orig = ManifestSource(files=[], freesound_api=f"{base}/apiv2", freesound_download="original", **fast)
    rec = Record(source="freesound", source_id=str(item["id"]), texts=["x."])
    out = orig.fetch_many([rec], tmp_path)[0]
    assert out.status == Status.FAILED and out.failure_code == "forbidden"
    monkeypatch.setenv("FREESOUND_OAUTH_TOKEN", "replay-freesound-oauth")
    rec = Record(source="freesound", source_id=str(item["id"]), texts=["x."])
    out = ManifestSource(files=[], freesound_api=f"{base}/apiv2", freesound_download="original",
                         **fast).fetch_many([rec], tmp_path)[0]
    assert out.status == Status.FETCHED and out.audio_path.endswith("." + item["type"])
    assert "replay-freesound" not in json.dumps(out.to_row())
    # an id Freesound no longer has is gone (404), not an error
    rec = Record(source="freesound", source_id="999999999", texts=["x."])
    out = src.fetch_many([rec], tmp_path)[0]
    assert out.status == Status.FAILED and out.failure_code == "not_found"


def test_a_daily_budget_set_by_the_user_stops_before_the_server_does(replay, fast, tmp_path, monkeypatch):
    from laion_audio.records import Record

    app, base = replay
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    ids = list(app.catalogue("freesound").items)[:6]
    src = ManifestSource(files=[], freesound_api=f"{base}/apiv2", freesound_per_day=4, **fast)
    out = src.fetch_many([Record(source="freesound", source_id=i, texts=["x."]) for i in ids], tmp_path)
    assert [r.status for r in out].count(Status.FETCHED) == 4
    pending = [r for r in out if r.status == Status.NEW]
    assert len(pending) == 2 and all(r.failure_code == "quota_deferred" and "(4/day)" in r.failure_message
                                     for r in pending)
    assert sum(n for p, n in app.hits.items() if p.startswith("/apiv2/sounds/")) == 4


def test_eval_set_ids_as_a_freesound_id_list(shared_data):
    """ESC-50's meta (real file): its Freesound source ids become by-id records."""
    path = shared_data / "esc50" / "esc50.csv"
    if not path.is_file():
        pytest.skip("no esc50.csv in ../shared/data")
    opts = {"files": [str(path)], "columns": "id=src_file,source=freesound,tags=category"}
    ManifestSource.validate(opts)
    recs = list(ManifestSource(**opts).crawl({}))
    assert len(recs) == 2000 and {r.source for r in recs} == {"freesound"}
    assert all(r.source_id.isdigit() and r.url == "" and r.tags and r.status == Status.NEW
               for r in recs)
    assert ManifestSource.dataset_names(opts) == ["freesound"]
    assert recs[0].original_data["filename"] == "1-100032-A-0.wav"


def test_persistent_429_is_blocked_404_is_gone(replay, fast, tmp_path):
    from laion_audio.records import Record
    from laion_audio.report import rot_class

    app, base = replay
    ident = next(iter(app.catalogue("audiostock").items))
    src = ManifestSource(files=[], **{**fast, "retries": 2})
    urls = {"blocked429": f"{base}/audio/{ident}/play?_fault=429",
            "gone": f"{base}/audio/1/play",
            "ok": f"{base}/audio/{ident}/play"}
    recs = [Record(source="audiostock", source_id=k, url=u, texts=["x"]) for k, u in urls.items()]
    out = {r.source_id: r for r in src.fetch_many(recs, tmp_path)}
    classes = {k: rot_class({"status": r.status, "failure_stage": r.failure_stage,
                             "failure_code": r.failure_code, "failure_message": r.failure_message,
                             "audio_sha256": r.audio_sha256}) for k, r in out.items()}
    assert classes == {"blocked429": "blocked", "gone": "gone", "ok": "available"}
