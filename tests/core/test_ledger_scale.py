"""The ledger at scale: folded journal, index-driven upsert, streaming reads, readers' view."""
from __future__ import annotations

import fcntl
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_audio import ledger as ledger_mod
from laion_audio.ledger import Ledger, LedgerError
from laion_audio.records import Record, Status, records_to_table


def rec(i: int, source: str = "s", **kw) -> Record:
    fields = dict(url=f"http://x/{i}.wav", title=f"t{i}", tags=["a"], original_data={"i": i})
    return Record(source=source, source_id=f"id{i:05d}", **{**fields, **kw})


def snapshot(led: Ledger) -> dict:
    return {r.key: (r.status, r.title, r.url, r.audio_path) for r in led.records()}


@pytest.fixture
def small_fold(monkeypatch):
    """Fold after 4 files of >= 2 rows per class, so a short test exercises several levels."""
    monkeypatch.setattr(ledger_mod, "FOLD_FANIN", 4)
    monkeypatch.setattr(ledger_mod, "FOLD_UNIT", 2)
    monkeypatch.setattr(ledger_mod, "ROW_GROUP", 8)


def test_random_history_matches_a_model_and_survives_reopen(tmp_path, small_fold):
    rng = random.Random(7)
    model: dict = {}
    with Ledger(tmp_path / "l") as led:
        for step in range(120):
            op = rng.random()
            ids = rng.sample(range(300), rng.randint(1, 12))
            if op < 0.5:
                batch = [rec(i, title=model.get(("s", f"id{i:05d}"), (0, f"t{i}"))[1])
                         if rng.random() < 0.8 else rec(i, title=f"new{step}") for i in ids]
                led.upsert(batch)
                for r in batch:
                    old = model.get(r.key)
                    model[r.key] = (old[0] if old else Status.NEW, r.title, r.url, old[3] if old else "")
            else:
                known = [k for k in model if int(k[1][2:]) in ids]
                recs = [led.get(*k) for k in known]
                for r in recs:
                    r.status, r.audio_path = Status.FETCHED, f"raw/{r.source_id}-{step}"
                    model[r.key] = (r.status, r.title, r.url, r.audio_path)
                led.write(recs, tag="fetch")
            if step % 40 == 39:
                assert snapshot(led) == model
        journal = list(led.journal_dir.glob("*.parquet"))
        assert len(journal) < 4 * 6, "journal files are folded by size"
        assert snapshot(led) == model
    with Ledger(tmp_path / "l") as again:          # "kill -9": reopen without compacting
        assert snapshot(again) == model
        again.compact()
        assert not list(again.journal_dir.glob("*.parquet"))
        assert snapshot(again) == model
        assert len(again) == len(model)


def test_compacted_bytes_do_not_depend_on_history(tmp_path, small_fold):
    final = [rec(i) for i in range(50)]
    for r in final[::3]:
        r.status, r.audio_path = Status.FETCHED, f"raw/{r.source_id}"
    with Ledger(tmp_path / "a") as a:               # one write
        a.write(final)
        a.compact()
    with Ledger(tmp_path / "b") as b:               # many small writes, folds, a reopen
        for i in range(0, 50, 3):
            b.upsert([rec(j) for j in range(i, min(i + 3, 50))])
    with Ledger(tmp_path / "b") as b:
        fetched = [r for r in final if r.status == Status.FETCHED]
        for i in range(0, len(fetched), 2):
            b.write(fetched[i:i + 2], tag="fetch")
        b.compact()
    assert (tmp_path / "a" / "ledger.parquet").read_bytes() == (tmp_path / "b" / "ledger.parquet").read_bytes()


def test_unchanged_recrawl_reads_no_rows(tmp_path, monkeypatch):
    with Ledger(tmp_path / "l") as led:
        led.upsert([rec(i) for i in range(100)])
        led.compact()
    with Ledger(tmp_path / "l") as led:
        reads = []
        real = Ledger._rows_at
        monkeypatch.setattr(Ledger, "_rows_at", lambda self, slots: reads.append(len(slots)) or real(self, slots))
        r = led.upsert([rec(i) for i in range(100)])
        assert r.unchanged == 100 and not reads          # decided from the index alone
        changed = [rec(i) for i in range(3)]
        changed[0].title = "retitled"
        r = led.upsert(changed)
        assert r.changed == [("s", "id00000")] and reads == [1]   # only the changed row is read


def test_scan_and_iter_records_are_chunked_in_key_order(tmp_path):
    with Ledger(tmp_path / "l") as led:
        led.upsert([rec(i) for i in reversed(range(1000))])
        led.write([rec(i, status=Status.FAILED) for i in range(0, 1000, 7)], tag="x")
        chunks = list(led.iter_records(status=Status.NEW, chunk=100))
        assert max(len(c) for c in chunks) <= 100
        ids = [r.source_id for c in chunks for r in c]
        assert ids == sorted(ids) and len(ids) == 1000 - len(range(0, 1000, 7))
        assert led.count(status=Status.FAILED) == len(range(0, 1000, 7))
        assert led.status_counts() == {"new": len(ids), "failed": 143}


def test_parquet_readers_see_current_rows_only(tmp_path):
    pd = pytest.importorskip("pandas")
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    folder = tmp_path / "ledger"
    with Ledger(folder) as led:
        led.upsert([rec(i) for i in range(20)])
        led.compact()
        r = led.get("s", "id00003")
        r.status, r.audio_path = Status.FETCHED, "raw/x"
        led.write([r], tag="fetch")              # journal pending, lock held
        for n in (len(pd.read_parquet(folder)), len(duckdb.read_parquet(str(folder)).fetchall()),
                  len(pl.read_parquet(folder))):
            assert n == 20                     # no journal rows seen twice
        led.compact()
    df = pd.read_parquet(folder)
    assert len(df) == 20 and df.set_index("source_id").loc["id00003", "status"] == "fetched"
    assert df["flac_path"].isna().all() and df["audio_path"].notna().sum() == 1   # empty is null
    assert duckdb.sql(f"select count(*) from read_parquet('{folder}') where status='fetched'").fetchall()[0][0] == 1
    assert pl.read_parquet(folder).filter(pl.col("status") == "fetched").height == 1


def test_old_layout_is_migrated(tmp_path):
    folder = tmp_path / "ledger"
    (folder / "journal").mkdir(parents=True)
    pq.write_table(records_to_table([rec(i) for i in range(5)]), folder / "ledger.parquet")
    # an old, unsorted journal file and the old 0-byte LOCK
    changed = [rec(4, status=Status.FETCHED), rec(1, status=Status.FAILED), rec(9)]
    pq.write_table(records_to_table(changed), folder / "journal" / "00000001-fetch.parquet")
    (folder / "LOCK").touch()
    reader = Ledger(folder, lock=False)          # a reader sees the old journal too
    assert reader.status_counts() == {"new": 4, "fetched": 1, "failed": 1}
    fd = os.open(folder / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)               # an old laion-audio still writing
    with pytest.raises(LedgerError, match="another laion-audio process"):
        Ledger(folder)
    os.close(fd)
    with Ledger(folder) as led:
        assert not (folder / "LOCK").exists() and not (folder / "journal").exists()
        assert [r.source_id for r in led.records()] == [f"id{i:05d}" for i in (0, 1, 2, 3, 4, 9)]
        assert led.get("s", "id00001").status == Status.FAILED
        led.compact()
    assert sorted(os.listdir(folder)) == ["ledger.parquet"]


def test_reader_cannot_write(tmp_path):
    Ledger(tmp_path / "l").close()
    with pytest.raises(LedgerError, match="read-only"):
        Ledger(tmp_path / "l", lock=False).write([rec(1)])


def test_crawl_stage_never_materialises_the_ledger(shared_data, tmp_path, monkeypatch):
    """The AudioSet crawl, its flushes, the compaction and the summary go through the index and
    chunked scans: a call of ``Ledger.table``/``select``/``records`` (the whole corpus in
    memory) fails the test. A rerun upserts every row again, all unchanged."""
    from crawlers import crawl as crawl_mod
    from pipelines.build import BuildConfig, run_build

    rows = [ln for ln in (shared_data / "audioset" / "eval_segments.csv").read_text().splitlines()
            if ln and not ln.startswith("#")][:1200]
    csv_path = tmp_path / "segments.csv"
    csv_path.write_text("# YTID, start_seconds, end_seconds, positive_labels\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(crawl_mod, "CRAWL_FLUSH_EVERY", 100)

    def refuse(*a, **k):
        raise AssertionError("the whole ledger was materialised")

    for name in ("table", "select", "records"):
        monkeypatch.setattr(Ledger, name, refuse)
    options = {"csv": [str(csv_path)], "labels": str(shared_data / "audioset" / "class_labels_indices.csv")}
    cfg = BuildConfig(out=tmp_path / "w", sources={"audioset": options}, stages=("crawl",), inline=True)
    summary = run_build(cfg)
    assert summary["records"] == 1200 and summary["sources"]["audioset"]["records"] == 1200
    (tmp_path / "w" / "crawl" / "audioset.json").unlink()     # crawl again from the start
    summary = run_build(cfg)
    crawl = summary["stages"][0]
    assert crawl["unchanged"] == 1200 and crawl["added"] == 0


def test_scan_of_an_older_file_without_a_column(tmp_path):
    folder = tmp_path / "ledger"
    folder.mkdir()
    old = records_to_table([rec(i) for i in range(3)]).drop_columns(["text_augment_t5"])
    pq.write_table(old, folder / "ledger.parquet")
    with Ledger(folder) as led:
        chunks = list(led.scan(columns=["source_id", "text_augment_t5"]))
        assert chunks[0].column("text_augment_t5").null_count == 3
        assert [r.source_id for r in led.records()] == ["id00000", "id00001", "id00002"]


def test_reader_of_a_compacted_ledger_scans_without_building_the_index(tmp_path):
    with Ledger(tmp_path / "l") as led:
        led.upsert([rec(i) for i in range(50)])
        led.compact()
    reader = Ledger(tmp_path / "l", lock=False)
    assert sum(len(t) for t in reader.scan(columns=["source_id"])) == 50
    assert not reader._keys                     # the scan needed no key index
    assert len(reader) == 50 and reader.get("s", "id00007").title == "t7"
