"""Fault soak (issue 10 acceptance): the demo sources (all eight plus AudioSet) built from one
replay server at 20 % and at 50 % random faults of every kind (429 + Retry-After, 500, 503,
slow, reset, truncate, wrong_type), then rerun fault-free (``--retry-failed`` for what failed
for good under faults). After the faulty run every id is a success, pending, or a typed
failure; after the reruns the shards are byte-identical to a fault-free build and no sample
is shorter than its source promised.

The eval/dedup filter stage is left out: whether near-duplicate decisions depend on arrival
order is issue 10 item 4, tested on its own.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from crawlers.replay import FAULT_KINDS, serve
from laion_audio.ledger import Ledger
from laion_audio.records import FailureCode, Status
from laion_audio.shards import verify
from laion_audio.commands.build import exit_code as verdict
from pipelines.build import BuildConfig, run_build
from pipelines.demo import demo_sources

SIZES = {"bbc": 8, "epidemic": 8, "freesound": 8, "audiostock": 8, "youtube": 5}
STAGES = ("crawl", "fetch", "transcode", "caption", "shard")
TYPED = {v for k, v in vars(FailureCode).items() if k.isupper()} - {FailureCode.INTERNAL}
#: sources whose record.duration is the site's stated length (AudioSet: the window, below)
SLACK_FRACTION, SLACK_SECONDS = 0.2, 0.5


def _cfg(out: Path, base: str, retry_failed: bool = False) -> BuildConfig:
    sources = demo_sources(base, out)
    sources["audioset"]["limit"] = SIZES["youtube"]
    for opts in sources.values():            # our own loopback server: retry fast
        opts.update(backoff=0.01, max_backoff=0.05, retries=5, read_timeout=10)
    return BuildConfig(out=out, sources=sources, inline=True, stages=STAGES, batch_size=4,
                       samples_per_shard=8, retry_failed=retry_failed)


def _records(out: Path) -> dict:
    with Ledger(out / "ledger", lock=False) as led:
        return {r.key: r for r in led.records()}


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _faults(base: str, **settings) -> None:
    requests.post(f"{base}/_replay/faults", json=settings, timeout=10).raise_for_status()


@pytest.mark.slow
def test_fault_soak_20_and_50_percent_then_fault_free_reruns(tmp_path, monkeypatch):
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    with serve(seed=0, sizes=SIZES) as (app, base):
        clean_out = tmp_path / "clean"
        clean = run_build(_cfg(clean_out, base))
        assert verdict(clean)[0] == 0, clean["problems"]
        want = _records(clean_out)
        assert {k[0] for k in want} >= {"bbc", "epidemic", "freesound", "audiostock", "audioset",
                                        "free_to_use_sounds", "wesoundeffects"}

        seen_kinds: set[str] = set()
        for rate in (0.2, 0.5):
            out = tmp_path / f"faults{int(rate * 100)}"
            app.faulted.clear()
            _faults(base, rate=rate, kinds=list(FAULT_KINDS), seed=int(rate * 100),
                    retry_after=0, slow_seconds=0.05)
            faulty = run_build(_cfg(out, base))
            _faults(base, rate=0)
            assert len(app.faulted) >= 4, app.faulted
            print(f"soak {rate:.0%}: faults {dict(app.faulted)}; problems {faulty['problems']}")
            seen_kinds |= set(app.faulted)
            for key, rec in _records(out).items():
                assert (rec.status in (Status.SHARDED, Status.NEW, Status.FETCHED,
                                       Status.TRANSCODED, Status.CAPTIONED)
                        or (rec.status == Status.DROPPED and rec.filter_reason)
                        or (rec.status == Status.FAILED and rec.failure_code in TYPED)), \
                    (key, rec.status, rec.failure_code, rec.failure_message)
            if faulty["problems"]:
                assert verdict(faulty)[0] == 1

            # fault-free: the same command resumes (crawls, pending), then --retry-failed
            run_build(_cfg(out, base))
            final = run_build(_cfg(out, base, retry_failed=True))
            assert verdict(final)[0] == 0, (rate, final["problems"])
            got = _records(out)
            assert set(got) == set(want)
            assert {k: r.status for k, r in got.items()} == {k: r.status for k, r in want.items()}
            assert _digest(out / "shards") == _digest(clean_out / "shards"), rate

            for rec in got.values():                  # nothing shorter than promised
                if rec.status != Status.SHARDED:
                    continue
                if rec.trim_end is not None:
                    promised = rec.trim_end - (rec.trim_start or 0.0)
                    assert rec.audio_duration >= promised - 0.05, rec.source_id
                elif rec.duration:
                    assert rec.audio_duration >= rec.duration * (1 - SLACK_FRACTION) - SLACK_SECONDS
            report = verify(out / "shards")
            assert report.ok, report.problems
        assert seen_kinds == set(FAULT_KINDS)          # every fault kind happened
