"""The stage table: fused fetch -> transcode -> fingerprint tasks, per-stage accounting of a
fused task, the raw keep policy, and the driver reading pending records in chunks."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from laion_audio.ledger import Ledger, StageStats
from laion_audio.records import Record, Status
from laion_audio.workdir import WorkDir
from pipelines import stages as stages_mod
from pipelines.build import BuildConfig, _step, worker_group
from pipelines.executor import Executor
from pipelines.stages import BY_NAME, STAGES, fuse, pending_chunks, run_chain, selected


def _tone(path, freq: float, seconds: float = 0.6) -> None:
    t = np.arange(int(44100 * seconds)) / 44100
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 44100)


def _work(tmp_path, n_good: int = 3):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n_good):
        _tone(src / f"tone{i}.wav", 300 + 170 * i)
    (src / "broken.wav").write_bytes(b"not audio")
    work = WorkDir(tmp_path / "work", create=True)
    ledger = Ledger(work.ledger)
    recs = [Record("local", p.name, url=str(p), tags=["tone"]) for p in sorted(src.iterdir())]
    recs.append(Record("local", "gone.wav", url=str(src / "gone.wav"), tags=["tone"]))
    ledger.write(recs, tag="crawl")
    return src, work, ledger


def test_the_table_declares_every_stage_with_its_function():
    assert [s.name for s in STAGES] == ["crawl", "fetch", "transcode", "fingerprint", "caption",
                                        "filter", "shard"]
    assert all(callable(s.fn) for s in STAGES)          # objects, not dotted strings
    groups = fuse(selected(["crawl", "fetch", "transcode", "caption", "filter", "shard"]))
    assert [[s.name for s in g] for g in groups] == [
        ["crawl"], ["fetch", "transcode", "fingerprint"], ["caption"], ["filter"], ["shard"]]
    # `--stages` offers exactly the table's stages (the CLI does not import the table: startup)
    from laion_audio.commands.build import ALL_STAGES
    assert ALL_STAGES == tuple(s.name for s in STAGES if not s.part_of)
    # without filter there is no fingerprint step; caption never fuses (a model batch)
    assert [[s.name for s in g] for g in fuse(selected(["fetch", "transcode", "caption"]))] == [
        ["fetch", "transcode"], ["caption"]]


def test_fused_task_accounts_each_stage_and_journals_once_per_batch(tmp_path):
    src, work, ledger = _work(tmp_path)
    cfg = BuildConfig(out=work.root, sources={"local": {"input": str(src)}}, inline=True,
                      batch_size=8, stages=("fetch", "transcode", "filter"))
    group = fuse(selected(cfg.stages))[0]
    assert [s.name for s in group] == ["fetch", "transcode", "fingerprint"]
    stats = {s.stage: s for s in worker_group(group, cfg, work, ledger, Executor(inline=True))}
    fetch, transcode = stats["fetch:local"], stats["transcode"]
    assert (fetch.inputs, fetch.succeeded, fetch.failed) == (5, 4, 1)
    assert dict(fetch.failures) == {"missing_file": 1}
    assert (transcode.inputs, transcode.succeeded, transcode.failed) == (4, 3, 1)
    assert fetch.closes and transcode.closes
    journal = sorted(p.name for p in ledger.journal_dir.glob("*.parquet"))
    # one write of the fused task (5 records) after the crawl's: no write per stage
    assert [n.split("-", 1)[1] for n in journal] == ["crawl.parquet",
                                               "fetch_transcode_fingerprint.parquet"]
    by_id = {r.source_id: r for r in ledger.records()}
    assert by_id["gone.wav"].failure_stage == "fetch"
    assert by_id["broken.wav"].failure_stage == "transcode"
    ok = [r for r in by_id.values() if r.status == Status.TRANSCODED]
    assert len(ok) == 3 and all(not r.flac_path.startswith("/") for r in ok)   # stored relative
    # fingerprinted in the same task: the store holds every transcoded clip
    from laion_audio.filters.fpstore import FingerprintStore
    store = FingerprintStore(str(work.fingerprints))
    assert all(r.audio_sha256 in store for r in ok)
    # a user's own files are never deleted by the keep policy
    assert len(list(src.iterdir())) == 4
    # rerun: nothing pending, nothing redone
    again = {s.stage: s for s in worker_group(group, cfg, work, ledger, Executor(inline=True))}
    assert again["transcode"].inputs == again["fetch:local"].inputs == 0
    assert again["transcode"].skipped == 3


def test_a_crashing_step_fails_its_records_typed_and_the_batch_goes_on(tmp_path):
    def boom(records, **kw):
        raise ValueError("decoder bug")

    recs = [Record("s", str(i), status=Status.NEW) for i in range(3)]
    recs[2].status = Status.FETCHED
    steps = [stages_mod.Step("fetch", boom, (Status.NEW,)),
             stages_mod.Step("transcode", lambda rs, **k: [r.succeed(Status.TRANSCODED) for r in rs],
                             (Status.FETCHED,))]
    out = run_chain(recs, steps=steps)
    assert [r.status for r in out] == [Status.FAILED, Status.FAILED, Status.TRANSCODED]
    assert out[0].failure_stage == "fetch" and out[0].failure_code == "internal_error"
    assert "decoder bug" in out[0].failure_message


@pytest.mark.parametrize("keep_raw", [False, True])
def test_raw_downloads_are_deleted_once_transcoded_unless_kept(tmp_path, keep_raw):
    work = WorkDir(tmp_path / "work", create=True)
    raw = work.raw / "site"
    raw.mkdir(parents=True)
    _tone(raw / "a.wav", 440)
    _tone(raw / "b.wav", 550)
    (raw / "c.wav").write_bytes(b"garbage")
    recs = [Record("site", n, audio_path=f"raw/site/{n}.wav", status=Status.FETCHED)
            for n in ("a", "b", "c")]
    with Ledger(work.ledger) as ledger:
        ledger.write(recs)
        cfg = BuildConfig(out=work.root, sources={"site": {}}, inline=True, keep_raw=keep_raw,
                          stages=("transcode",))
        stats = worker_group([BY_NAME["transcode"]], cfg, work, ledger, Executor(inline=True))
        assert (stats[0].succeeded, stats[0].failed) == (2, 1)
        by_id = {r.source_id: r for r in ledger.records()}
    left = sorted(p.name for p in raw.iterdir())
    if keep_raw:
        assert left == ["a.wav", "b.wav", "c.wav"]
        assert by_id["a"].audio_path == "raw/site/a.wav"
    else:
        assert left == ["c.wav"]          # a failed transcode keeps its raw file for a retry
        assert by_id["a"].audio_path == "" and by_id["a"].flac_path
        assert by_id["c"].audio_path == "raw/site/c.wav"
    assert all((work.root / by_id[n].flac_path).is_file() for n in ("a", "b"))


def test_pending_records_come_in_chunks_and_retries_are_reset(tmp_path):
    with Ledger(tmp_path / "ledger") as ledger:
        recs = [Record("s", f"{i:04d}") for i in range(1000)]
        recs[5].fail("fetch", "timeout", "slow")
        recs[6].fail("transcode", "undecodable", "x")
        ledger.write(recs)
        total, chunks = pending_chunks(ledger, [Status.NEW], ["s"], retry={"fetch": Status.NEW},
                                       chunk=128)
        sizes, seen = [], []
        for chunk in chunks:
            sizes.append(len(chunk))
            seen += chunk
        assert total == 999 and max(sizes) == 128 and sum(sizes) == 999
        retried = next(r for r in seen if r.source_id == "0005")
        assert retried.status == Status.NEW and retried.failure_code == ""
        assert not any(r.source_id == "0006" for r in seen)


def test_record_fail_and_succeed_setters():
    r = Record("s", "1").fail("fetch", "timeout", "x" * 900)
    assert (r.status, r.failure_stage, r.failure_code, len(r.failure_message)) == \
        (Status.FAILED, "fetch", "timeout", 500)
    r.succeed(Status.FETCHED)
    assert (r.status, r.failure_stage, r.failure_code, r.failure_message) == \
        (Status.FETCHED, "", "", "")
    assert StageStats("x").closes


def test_the_driver_holds_a_chunk_of_records_not_the_corpus(tmp_path, monkeypatch):
    """3,000 pending records, chunks of 200: Record objects alive while a task runs stay
    bounded by a chunk plus the batches in flight, whatever the ledger's size."""
    import gc

    monkeypatch.setattr(stages_mod, "PENDING_CHUNK", 200)
    alive: list[int] = []

    def probe(records, **kw):
        alive.append(sum(1 for o in gc.get_objects() if type(o) is Record))
        return [r.succeed(Status.FETCHED) for r in records]

    stage = stages_mod.Stage("probe", probe, reads=(Status.NEW,), writes=(Status.FETCHED,),
                             batching="records")
    work = WorkDir(tmp_path, create=True)
    with Ledger(work.ledger) as ledger:
        for i in range(0, 3000, 500):
            ledger.write([Record("s", f"{j:05d}", url=f"u{j}") for j in range(i, i + 500)])
        gc.collect()
        stats = {"probe": StageStats("probe")}
        stages_mod.run_worker_stages([stage], [stages_mod.Step("probe", probe, stage.reads)],
                                     Executor(inline=True), ledger, work, sources=None,
                                     batch_size=50, retry_failed=False, stats=stats)
        assert stats["probe"].succeeded == 3000 and len(alive) == 60
        assert max(alive) <= 200 + 2 * 50, max(alive)
        assert ledger.select(status=Status.FETCHED).num_rows == 3000
