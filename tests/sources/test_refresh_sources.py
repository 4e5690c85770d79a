"""Refresh support at the source level: after the replay catalogue gains 10 %, loses 5 % and
changes 5 % of its items, a re-crawl upserted into the ledger gives exactly that diff, and only
new or changed audio is downloaded again (counted by the server)."""
from __future__ import annotations

import pytest

from crawlers.epidemic import EpidemicSource
from crawlers.freesound import FreesoundSource
from crawlers.replay import serve
from laion_audio.ledger import Ledger
from laion_audio.records import Status

MAKERS = {
    "epidemic": lambda base, **kw: EpidemicSource(base=base, **kw),
    "freesound": lambda base, **kw: FreesoundSource(api=base + "/apiv2", page_size=50, **kw),
}


def audio_hits(app) -> int:
    return sum(n for p, n in app.ok.items() if p.endswith((".mp3", ".ogg", ".wav")))


def fetchable(ledger, name, ids) -> int:
    """Of ``ids``, those the source did not drop (Freesound's >3 min / <16 kHz filters)."""
    return sum(1 for i in ids if ledger.get(name, i).status != Status.DROPPED)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_refresh_diff_and_downloads(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FREESOUND_API_KEY", "replay-freesound-key")
    with serve(seed=0, sizes={name: 60}) as (app, base), Ledger(tmp_path / "ledger") as ledger:
        src = MAKERS[name](base, rate=0, backoff=0.01, seed=1)

        def crawl_and_fetch():
            crawled = list(src.crawl({}))
            result = ledger.upsert(crawled)
            ledger.mark_vanished(name, [r.source_id for r in crawled])
            todo = [r for r in ledger.records(source=name) if r.status == Status.NEW]
            ledger.write(src.fetch_many(todo, tmp_path / "audio"), tag="fetch")
            return result

        first = crawl_and_fetch()
        assert len(first.added) == 60
        assert audio_hits(app) == fetchable(ledger, name, [k[1] for k in first.added])
        diff = app.mutate(name, add=0.10, remove=0.05, change=0.05, change_audio=0.05, seed=3)
        app.ok.clear()
        second = crawl_and_fetch()
        assert sorted(k[1] for k in second.added) == sorted(diff["added"])
        assert sorted(k[1] for k in second.changed) == sorted(diff["changed"])
        assert sorted(k[1] for k in second.audio_changed) == sorted(diff["audio_changed"])
        vanished = [r.source_id for r in ledger.records(source=name) if r.status == Status.VANISHED]
        assert sorted(vanished) == sorted(diff["removed"])
        assert (len(diff["added"]), len(diff["removed"]), len(diff["changed"])) == (6, 3, 3)
        assert audio_hits(app) == fetchable(ledger, name, diff["added"] + diff["audio_changed"])
        assert audio_hits(app) >= 6
