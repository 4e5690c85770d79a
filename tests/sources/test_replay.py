"""The replay server itself: plugins, deterministic catalogues, real audio, faults, counters,
mutation for refresh tests, and the control endpoints."""
from __future__ import annotations

import io

import pytest
import requests
import soundfile as sf

from crawlers.replay import FAULT_KINDS, FaultConfig, discover_plugins, serve

from .conftest import replay_request

MINE = ("bbc", "epidemic", "freesound", "audiostock", "hostile")


def test_plugins_are_discovered():
    assert set(MINE) <= set(discover_plugins())


def test_catalogues_are_deterministic_by_seed():
    def listing(seed):
        with serve(seed=seed, plugins=["bbc", "epidemic"]) as (app, _):
            return [i["id"] for i in app.catalogue("bbc").listing()], \
                   [i["title"] for i in app.catalogue("epidemic").listing()]

    assert listing(3) == listing(3)
    assert listing(3)[0] != listing(4)[0]


def test_catalogue_uses_real_bbc_rows(shared_data):
    with serve(shared=shared_data, plugins=["bbc"]) as (app, _):
        ids = {i["id"] for i in app.catalogue("bbc").listing()}
    import csv
    real = {r["location"][:-4] for r in csv.DictReader(open(shared_data / "bbc" / "BBCSoundEffects.csv",
                                                            encoding="utf-8"))}
    assert ids <= real and len(ids) == 25


@pytest.mark.parametrize("path,fmt", [
    ("/wav/{bbc}.wav", "WAV"), ("/mp3/{bbc}.mp3", "MP3"),
    ("/ES_ITUNES/Wrestling_Crowd_1/ES_Wrestling_Crowd_1.mp3", "MP3"),
    ("/data/previews/282/282776_1000-hq.mp3", "MP3"), ("/data/previews/282/282776_1000-hq.ogg", "OGG"),
    ("/audio/1150592/play", "MP3"),
])
def test_audio_bodies_are_real_audio_of_the_right_format(replay, path, fmt):
    app, base = replay
    bbc_id = app.catalogue("bbc").listing()[0]["id"]
    r = replay_request("GET", base + path.format(bbc=bbc_id))
    assert r.status_code == 200
    info = sf.info(io.BytesIO(r.content))
    assert info.format == fmt and info.duration > 0.3
    data, _ = sf.read(io.BytesIO(r.content))
    assert abs(data).max() > 0.05
    assert r.headers["Content-Type"].startswith(("audio/", "application/ogg"))


def test_faults_are_deterministic_and_retries_can_succeed():
    def outcomes():
        with serve(seed=5, plugins=["epidemic"], faults=FaultConfig(rate=0.5, seed=5,
                   kinds=("500", "503", "429"))) as (app, base):
            out = []
            for genre in ("Doors", "Crowds", "Glass", "Fire"):
                for _ in range(4):  # the same request, retried
                    out.append(replay_request(
                        "GET", f"{base}/json/search/sfx/?genres={genre}&page=1").status_code)
            return out, dict(app.faulted)

    first, second = outcomes(), outcomes()
    assert first == second
    assert 200 in first[0] and any(s != 200 for s in first[0])
    for i in range(0, 16, 4):      # each request eventually succeeds within 4 tries here
        assert 200 in first[0][i:i + 4]


def test_every_fault_kind_can_be_forced(replay):
    app, base = replay
    url = f"{base}/json/search/sfx/?genres=Doors&page=1"
    for kind in FAULT_KINDS:
        if kind == "reset":
            with pytest.raises(requests.ConnectionError):
                replay_request("GET", url, headers={"X-Replay-Fault": kind})
            continue
        if kind == "truncate":
            with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
                replay_request("GET", url + "&_fault=truncate").content
            continue
        r = replay_request("GET", url, headers={"X-Replay-Fault": kind})
        if kind in ("429", "500", "503"):
            assert r.status_code == int(kind)
            if kind != "500":
                assert r.headers["Retry-After"] == "1"
        elif kind == "wrong_type":
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        else:
            assert r.status_code == 200 and r.json()["entities"]
    assert set(app.faulted) == set(FAULT_KINDS)


def test_request_counters_and_control_endpoints(replay):
    app, base = replay
    replay_request("GET", f"{base}/audio/1150592/play")
    replay_request("GET", f"{base}/audio/1150592/play")
    replay_request("GET", f"{base}/audio/1150592/play?_fault=503")
    assert app.hits["/audio/1150592/play"] == 3 and app.ok["/audio/1150592/play"] == 2
    stats = replay_request("GET", f"{base}/_replay/stats").json()
    assert stats["ok"]["/audio/1150592/play"] == 2
    r = replay_request("POST", f"{base}/_replay/faults", json={"rate": 0.2, "kinds": ["429"]})
    assert r.json()["rate"] == 0.2 and app.faults.kinds == ("429",)
    assert replay_request("POST", f"{base}/_replay/faults", json={"kinds": ["boom"]}).status_code == 400
    diff = replay_request("POST", f"{base}/_replay/mutate", json={
        "source": "epidemic", "add": 0.1, "remove": 0.05, "change": 0.05}).json()
    assert (len(diff["added"]), len(diff["removed"]), len(diff["changed"])) == (4, 2, 2)


def test_mutation_is_seeded_and_exact():
    def run():
        with serve(plugins=["freesound"], sizes={"freesound": 100}) as (app, _):
            before = {i["id"]: dict(i) for i in app.catalogue("freesound").listing()}
            diff = app.mutate("freesound", add=0.1, remove=0.05, change=0.05, change_audio=0.02, seed=7)
            after = {i["id"]: i for i in app.catalogue("freesound").listing()}
            return before, diff, after

    before, diff, after = run()
    assert run()[1] == diff
    assert (len(diff["added"]), len(diff["removed"]), len(diff["changed"])) == (10, 5, 5)
    assert len(diff["audio_changed"]) == 2 and set(diff["audio_changed"]) <= set(diff["changed"])
    assert set(before) - set(after) == {int(i) for i in diff["removed"]} or \
        {str(i) for i in set(before) - set(after)} == set(diff["removed"])
    for key, item in after.items():
        if str(key) in diff["changed"]:
            assert item != before[key]
        elif key in before:
            assert item == before[key]


def test_replay_items_are_distinct_sounds():
    """Every replay item is its own sound: the near-duplicate matcher the filter stage uses
    finds no pair among 240 items (one seeded tone plus noise per item matched many)."""
    import io

    import soundfile as sf

    from crawlers.replay._audio import make_audio
    from laion_audio.filters.content_overlap import ContentMatcher, FingerprintIndex
    from laion_audio.filters.fingerprint import fingerprint

    fps = []
    for i in range(240):
        body, _ = make_audio(f"bbc/{i}/0", "wav", 3.0 + (i % 3), 22050, 1)
        x, sr = sf.read(io.BytesIO(body), dtype="float32")
        fps.append(fingerprint(x, sr))
    assert all(len(fp) > 50 for fp in fps)
    index = FingerprintIndex()
    for i, fp in enumerate(fps):
        index.add(i, fp)
    index.build()
    matches, _ = ContentMatcher(index).match(fps, ref_bands=lambda r: fps[r].bands,
                                             exclude_self=list(range(len(fps))))
    assert not matches, [(m.query, m.ref, round(m.score, 2)) for m in matches[:5]]


def test_replay_items_option_sizes_every_source(tmp_path):
    with serve(sizes={"*": 7, "bbc": 3}) as (app, _):
        sizes = {name: len(cat.items) for name, cat in app.catalogues.items()}
    assert sizes["bbc"] == 3 and all(n == 7 for name, n in sizes.items() if name != "bbc")
