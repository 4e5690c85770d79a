"""Fault injection at 20 % of requests (429 + Retry-After, 500/503, slow, resets, truncated
bodies, wrong types) for each web source: crawl -> ledger -> fetch, compared with a fault-free
run. Every id ends fetched or with a typed failure, no duplicates, nothing that succeeded was
downloaded twice, and what succeeded is identical to the fault-free corpus."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crawlers.audiostock import AudiostockSource
from crawlers.bbc import BBCSource
from crawlers.epidemic import CATEGORIES, EpidemicSource
from crawlers.freesound import FreesoundSource
from crawlers.replay import FAULT_KINDS, FaultConfig, serve
from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status

from .conftest import SHARED_DATA

MAKERS = {
    "bbc": lambda base, **kw: BBCSource(api=base, media=base, page_size=6, **kw),
    "epidemic": lambda base, **kw: EpidemicSource(base=base, categories=list(CATEGORIES[:12]), **kw),
    "freesound": lambda base, **kw: FreesoundSource(api=base + "/apiv2", page_size=8, **kw),
    "audiostock": lambda base, **kw: AudiostockSource(base=base, **kw),
}
TYPED = {v for k, v in vars(FailureCode).items() if k.isupper()}
SOURCE_FIELDS = ("url", "title", "description", "tags", "license", "author", "duration",
                 "original_data", "texts", "caption_provenance", "status", "filter_reason")


def run(name: str, rate: float, out: Path):
    faults = FaultConfig(rate=rate, seed=11, slow_seconds=0.05, retry_after=0)
    shared = SHARED_DATA if SHARED_DATA.is_dir() else None
    sizes = {"bbc": 60, "epidemic": 60, "freesound": 60, "audiostock": 36}
    with serve(seed=0, shared=shared, faults=faults, sizes=sizes) as (app, base):
        src = MAKERS[name](base, rate=0, backoff=0.01, max_backoff=0.05, seed=1, retries=5,
                           read_timeout=5)
        with Ledger(out / "ledger") as ledger:
            ledger.upsert(list(src.crawl({})))
            todo = [r for r in ledger.records(source=name) if r.status == Status.NEW]
            ledger.write(src.fetch_many(todo, out / "audio", workers=4), tag="fetch")
            records = {r.source_id: r for r in ledger.records(source=name)}
        return records, dict(app.ok), dict(app.faulted), base


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_twenty_percent_faults(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    clean, _, clean_faults, clean_base = run(name, 0.0, tmp_path / "clean")
    faulty, ok, faulted, base = run(name, 0.2, tmp_path / "faulty")
    assert not clean_faults and sum(faulted.values()) >= 5
    assert len(set(faulted) & set(FAULT_KINDS)) >= 3

    assert set(faulty) == set(clean)                 # same ids, each once (ledger key)
    for sid, rec in faulty.items():
        assert rec.status in (Status.FETCHED, Status.FAILED, Status.DROPPED)
        if rec.status == Status.FAILED:
            assert rec.failure_code in TYPED and rec.failure_message
    fetched = [r for r in faulty.values() if r.status == Status.FETCHED]
    assert len(fetched) >= 0.9 * sum(r.status == Status.FETCHED for r in clean.values())

    for rec in fetched:                              # nothing that succeeded came twice
        path = "/" + rec.url.split("/", 3)[3].split("?")[0]
        assert ok.get(path) == 1, (path, ok.get(path))
        twin = clean[rec.source_id]
        if twin.status != Status.FETCHED:
            continue
        for f in SOURCE_FIELDS:                      # the same corpus as the fault-free run
            a, b = getattr(rec, f), getattr(twin, f)
            if isinstance(a, str):
                a, b = a.replace(base, "BASE"), b.replace(clean_base, "BASE")
            elif isinstance(a, dict):
                a = repr(a).replace(base, "BASE")
                b = repr(b).replace(clean_base, "BASE")
            assert a == b, (rec.source_id, f)
        assert digest(rec.audio_path) == digest(twin.audio_path)
        assert Path(rec.audio_path).name == Path(twin.audio_path).name
    leftovers = [p for p in (tmp_path / "faulty" / "audio").iterdir() if p.name.startswith(".")]
    assert leftovers == []                           # no partial downloads left behind
