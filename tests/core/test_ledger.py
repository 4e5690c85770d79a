"""The ledger: upsert semantics, journal replay, compaction, locking, accounting."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_audio.ledger import Ledger, LedgerError, StageStats
from laion_audio.records import SCHEMA, Record, Status, records_to_table, sample_key, table_to_records


def make(n: int, source: str = "s") -> list[Record]:
    return [Record(source=source, source_id=f"id{i:03d}", url=f"http://x/{i}.wav", title=f"t{i}",
                   tags=["a", "b"], original_data={"i": i}, texts=[f"caption {i}"]) for i in range(n)]


def test_record_roundtrip_through_arrow():
    recs = make(3)
    recs[1].caption_provenance = {"rule": "x", "params": {"beams": 4}}
    recs[2].duration = 1.5
    back = table_to_records(records_to_table(recs))
    assert back == recs
    assert records_to_table(recs).schema.equals(SCHEMA)


def test_upsert_is_idempotent_and_detects_changes(tmp_path):
    with Ledger(tmp_path) as led:
        r = led.upsert(make(10))
        assert len(r.added) == 10
        r = led.upsert(make(10))
        assert r.summary() == {"added": 0, "changed": 0, "audio_changed": 0, "unchanged": 10}
        recs = make(12)
        recs[0].title = "new title"            # metadata change: audio kept
        recs[1].url = "http://x/other.wav"     # audio change: back to new
        r = led.upsert(recs)
        assert len(r.added) == 2 and set(r.changed) == {("s", "id000"), ("s", "id001")}
        assert r.audio_changed == [("s", "id001")]
        assert len(led) == 12
        assert led.get("s", "id000").title == "new title"


def test_metadata_change_after_transcode_keeps_audio(tmp_path):
    with Ledger(tmp_path) as led:
        led.upsert(make(2))
        rec = led.get("s", "id000")
        rec.status, rec.flac_path = Status.SHARDED, "audio/s/x.flac"
        led.write([rec])
        changed = make(2)
        changed[0].description = "now described"
        led.upsert(changed)
        rec = led.get("s", "id000")
        assert rec.status == Status.TRANSCODED and rec.flac_path == "audio/s/x.flac"


def test_journal_last_write_wins_and_compaction_is_stable(tmp_path):
    with Ledger(tmp_path / "a") as a:
        a.upsert(make(5))
        for step in range(3):
            recs = a.records()
            for r in recs[:step + 1]:
                r.status = Status.FETCHED
                r.audio_path = f"raw/{r.source_id}-{step}"
            a.write(recs[:step + 1], tag="fetch")
        a.compact()
        assert not list(a.journal_dir.glob("*.parquet"))
        assert a.get("s", "id000").audio_path == "raw/id000-2"
        assert a.status_counts() == {"fetched": 3, "new": 2}
    # the same final rows written in another order compact to the same bytes
    with Ledger(tmp_path / "b") as b:
        b.upsert(list(reversed(make(5))))
        final = Ledger(tmp_path / "a", lock=False).records()
        b.write(list(reversed(final)), tag="x")
        b.compact()
    assert (tmp_path / "a" / "ledger.parquet").read_bytes() == (tmp_path / "b" / "ledger.parquet").read_bytes()


def test_reader_sees_uncompacted_journal_after_crash(tmp_path):
    led = Ledger(tmp_path)
    led.upsert(make(4))
    led.write([led.get("s", "id002").fail("transcode", "undecodable", "not audio")])
    # simulate kill -9: no compact, no close; a stale temp file from a half-written batch
    (led.journal_dir / ".00000009-transcode.parquet.tmp-123").write_bytes(b"PAR1garbage")
    led.close()
    again = Ledger(tmp_path)
    assert again.get("s", "id002").failure_code == "undecodable"
    assert len(again) == 4


def test_one_writer_at_a_time(tmp_path):
    with Ledger(tmp_path):
        with pytest.raises(LedgerError, match="another laion-audio process"):
            Ledger(tmp_path)
    Ledger(tmp_path).close()


def test_duplicate_keys_in_one_write_are_refused(tmp_path):
    with Ledger(tmp_path) as led:
        with pytest.raises(LedgerError, match="duplicate keys"):
            led.write(make(2) + make(1))


def test_vanished_are_kept_and_revived(tmp_path):
    with Ledger(tmp_path) as led:
        led.upsert(make(5))
        assert led.mark_vanished("s", ["id000", "id001", "id002"]) == ["id003", "id004"]
        assert led.status_counts() == {"new": 3, "vanished": 2}
        r = led.upsert(make(5))
        assert sorted(r.audio_changed) == [("s", "id003"), ("s", "id004")]
        assert led.status_counts() == {"new": 5}


def test_newer_schema_is_refused(tmp_path):
    table = records_to_table(make(1)).replace_schema_metadata({b"laion_audio_schema_version": b"99"})
    pq.write_table(table, tmp_path / "ledger.parquet")
    with pytest.raises(LedgerError, match="newer laion-audio"):
        Ledger(tmp_path).table()


def test_stage_stats_close():
    st = StageStats("transcode")
    ok, bad = make(2)
    bad2 = make(1)[0].fail("transcode", "too_short", "0.001 s")
    st.add(ok, ok)
    st.add(bad, bad2)
    assert st.closes and st.succeeded == 1 and st.failed == 1
    assert "too_short=1" in st.line()


def test_sample_keys_are_safe_and_stable():
    k = sample_key("bbc", "../../etc/passwd.wav")
    assert "/" not in k and "." not in k and k == sample_key("bbc", "../../etc/passwd.wav")
    assert k != sample_key("bbc", "../../etc/passwd.wav2")


def test_compacting_an_empty_ledger_writes_an_empty_readable_table(tmp_path):
    """A crawl that listed nothing still leaves a ledger folder readers can open."""
    import pyarrow.parquet as pq

    from laion_audio.ledger import writing

    with writing(tmp_path / "ledger") as ledger:
        assert len(ledger) == 0
    assert pq.read_table(tmp_path / "ledger").num_rows == 0


def test_rows_of_reads_current_rows_by_key_in_the_order_asked(tmp_path):
    with Ledger(tmp_path / "ledger") as led:
        led.write([Record("a", f"{i:03d}", url=f"u{i}") for i in range(50)], tag="crawl")
        led.compact()
        led.write([Record("a", "007", url="u7", status=Status.FETCHED)], tag="fetch")
        t = led.rows_of(["a", "a", "a"], ["042", "007", "000"])
        assert t.column("source_id").to_pylist() == ["042", "007", "000"]
        assert t.column("status").to_pylist() == [Status.NEW, Status.FETCHED, Status.NEW]
        with pytest.raises(LedgerError):
            led.rows_of(["a"], ["999"])
    # a compacted ledger opened afresh and only scanned has no key index yet: rows_of builds it
    # (a --retry-failed run that sent nothing back to fetch read its pending work this way)
    with Ledger(tmp_path / "ledger") as led:
        led.compact()
    with Ledger(tmp_path / "ledger") as led:
        keys = pa.concat_tables(list(led.scan(columns=["source", "source_id"])))
        assert led.rows_of(keys.column("source").to_pylist()[:2],
                           keys.column("source_id").to_pylist()[:2]).num_rows == 2
