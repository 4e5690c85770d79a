"""The FLAC keep policy: a build deletes ``audio/`` FLACs once their tar is published, and every
later reader (re-sharding, the filter, fingerprints) takes the clip from the tar; shards stay
byte-identical to a build that kept everything, through reruns, growth and an interrupted
re-shard."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

import laion_audio.shards.write as write_mod
from laion_audio.filters.fpstore import FingerprintStore, fingerprint_batch
from laion_audio.ledger import Ledger
from laion_audio.records import Status
from laion_audio.shards.members import (audio_exists, audio_in_shards, member_path, open_audio,
                                        split_member_path)
from laion_audio.workdir import WorkDir
from pipelines.build import BuildConfig, run_build


def _clip(path, i: int) -> None:
    """Clip ``i``: a distinct two-tone chord with its own rhythm (no two are near-duplicates)."""
    rng = np.random.default_rng(i)
    sr = 22050
    t = np.arange(int(sr * rng.uniform(0.6, 1.2))) / sr
    gate = (np.sin(2 * np.pi * rng.uniform(2, 9) * t) > 0).astype(np.float32)
    x = gate * (np.sin(2 * np.pi * rng.uniform(200, 3000) * t)
                + 0.5 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t))
    sf.write(path, (0.3 * x).astype(np.float32), sr)


def _inputs(folder, ids) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        _clip(folder / f"clip{i:03d}.wav", i)


def _config(src, out, **kw) -> BuildConfig:
    kw = {"samples_per_shard": 3, "batch_size": 2, "workers": 1, **kw}
    return BuildConfig(out=out, sources={"local": {"input": str(src)}}, inline=True,
                       skip_eval_filter=True, **kw)


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _flacs(out) -> list:
    return sorted((out / "audio").rglob("*.flac"))


def _assert_equals_a_fresh_build(src, out, fresh, samples_per_shard: int = 3) -> None:
    """``out``'s shards are byte-identical to a fresh build that kept every FLAC, and ``out``
    kept none."""
    run_build(_config(src, fresh, keep_audio=True, samples_per_shard=samples_per_shard))
    assert _digest(out / "shards") == _digest(fresh / "shards")
    assert not _flacs(out)


def test_default_build_deletes_sharded_flacs_and_equals_a_build_that_keeps_them(tmp_path):
    src = tmp_path / "in"
    _inputs(src, range(7))
    released, kept = tmp_path / "released", tmp_path / "kept"
    summary = run_build(_config(src, released))
    run_build(_config(src, kept, keep_audio=True))
    assert summary["by_status"] == {Status.SHARDED: 7}
    shard = next(s for s in summary["stages"] if s["stage"] == "shard")
    assert shard["flac_released"] == 7 and not _flacs(released)
    assert len(_flacs(kept)) == 7
    assert _digest(released / "shards") == _digest(kept / "shards")
    # the ledger still names each FLAC's home: the two ledgers are the same bytes
    assert (released / "ledger" / "ledger.parquet").read_bytes() == \
        (kept / "ledger" / "ledger.parquet").read_bytes()
    # disk per folder in the summary: the work folder is now little more than its shards
    disk = json.loads((released / "stats" / "summary.json").read_text())["disk_bytes"]
    assert disk["audio"] < 512 and disk["shards"] > 0      # only the RELEASED_TO note
    assert sum(disk.values()) <= 1.6 * disk["shards"]
    # a sharded clip is read from its tar: same PCM as the kept FLAC
    work = WorkDir(released)
    with Ledger(released / "ledger", lock=False) as led:
        rec = next(iter(led.records(status=Status.SHARDED)))
    ref = audio_in_shards(work.abs(rec.flac_path), str(released / "shards"), rec.shard,
                          rec.source, rec.source_id)
    assert split_member_path(ref) and audio_exists(ref)
    a, sr = sf.read(open_audio(ref))
    b, _ = sf.read(kept / rec.flac_path)
    assert sr == 48000 and np.array_equal(a, b)
    # a rerun changes nothing
    before = _digest(released / "shards")
    run_build(_config(src, released))
    assert _digest(released / "shards") == before and not _flacs(released)


def test_growing_corpus_reshards_from_the_tars_byte_identical_to_a_fresh_build(tmp_path):
    """New clips move samples between tars: the moved clips come out of the old tars."""
    src = tmp_path / "in"
    _inputs(src, range(6))
    out = tmp_path / "out"
    run_build(_config(src, out))
    assert not _flacs(out)
    _inputs(src, range(6, 11))
    summary = run_build(_config(src, out), refresh=True)     # re-lists the folder
    shard = next(s for s in summary["stages"] if s["stage"] == "shard")
    assert shard["report"]["shards_written"] >= 1 and shard["report"]["flac_restored_from_tars"] >= 1
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh")


def test_interrupted_reshard_loses_no_clip(tmp_path, monkeypatch):
    """A re-shard that dies after publishing its first new tar: the clips the old tars held are
    back in audio/ before any tar changed, so the rerun finishes with every clip."""
    src = tmp_path / "in"
    _inputs(src, range(6))
    out = tmp_path / "out"
    run_build(_config(src, out))
    _inputs(src, range(6, 11))
    real, calls = write_mod._write_tar, []

    def dies_after_one(shard, tmp):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(shard)
        return real(shard, tmp)

    monkeypatch.setattr(write_mod, "_write_tar", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_build(_config(src, out), refresh=True)
    assert calls and _flacs(out)               # the first new tar is out; moved clips restored
    monkeypatch.setattr(write_mod, "_write_tar", real)
    summary = run_build(_config(src, out))
    assert summary["by_status"] == {Status.SHARDED: 11}
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh")


def test_fingerprints_of_released_clips_come_from_the_tars(tmp_path):
    src = tmp_path / "in"
    _inputs(src, range(3))
    out = tmp_path / "out"
    run_build(_config(src, out))
    work = WorkDir(out)
    with Ledger(out / "ledger", lock=False) as led:
        recs = [work.resolve(r) for r in led.records(status=Status.SHARDED)]
    for r in recs:
        r.flac_path = audio_in_shards(r.flac_path, str(out / "shards"), r.shard, r.source, r.source_id)
    store_dir = tmp_path / "store"
    fingerprint_batch(recs, store_dir=str(store_dir))
    store = FingerprintStore(str(store_dir))
    assert all(r.audio_sha256 in store for r in recs)
    assert not audio_exists(member_path(out / "shards" / recs[0].shard, "absent.flac"))


def test_refresh_with_new_captions_rewrites_tars_from_their_own_members(tmp_path):
    """A caption table added after the build (new captions and metadata: a refresh sends the
    records back to captioning) changes every sample's JSON: each tar is rebuilt
    from the FLACs it holds itself (copied out first), byte-identical to a fresh build."""
    src = tmp_path / "in"
    _inputs(src, range(5))
    out = tmp_path / "out"
    run_build(_config(src, out))
    assert not _flacs(out)
    (src / "captions.csv").write_text("file_name,caption,recorded_by\n" + "".join(
        f"clip{i:03d}.wav,a chord pulsing number {i},tester\n" for i in range(5)))
    summary = run_build(_config(src, out), refresh=True)
    shard = next(s for s in summary["stages"] if s["stage"] == "shard")
    assert shard["report"]["flac_restored_from_tars"] == 5 and shard["flac_released"] == 5
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh")


def _all_members_decode(shards) -> int:
    """Every FLAC member of every tar decodes to samples; returns how many there are."""
    import io
    import tarfile

    n = 0
    for tar in sorted(shards.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".flac"):
                    data, _ = sf.read(io.BytesIO(tf.extractfile(m).read()))
                    assert len(data) > 0, (tar, m.name)
                    n += 1
    return n


def _built_with_first_tar(tmp_path, n: int):
    """A default build of ``n`` clips: (inputs, work folder, its first tar, that tar's FLAC
    members as TarInfo with offsets)."""
    import tarfile

    src = tmp_path / "in"
    _inputs(src, range(n))
    out = tmp_path / "out"
    run_build(_config(src, out))
    tar = sorted((out / "shards").rglob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        return src, out, tar, [m for m in tf if m.name.endswith(".flac")]


def test_a_tar_cut_short_loses_only_its_cut_clips_and_the_next_run_fetches_them_again(tmp_path):
    """A published tar cut in the middle of its second FLAC (a full disk while copying it, a
    broken transfer): the clips before the cut are read from it, the cut ones go back to be
    fetched (counted pending, not failed, never half a clip in a shard), and the next run ends
    with every clip sharded, byte-identical to a build that never lost anything."""
    src, out, tar, flacs = _built_with_first_tar(tmp_path, 7)
    assert len(flacs) == 3
    tar.write_bytes(tar.read_bytes()[: flacs[1].offset_data + flacs[1].size // 2])
    summary = run_build(_config(src, out))
    shard = next(s for s in summary["stages"] if s["stage"] == "shard")
    assert shard["pending"] == 2 and shard["failed"] == 0, shard
    assert shard["clips_lost_requeued"] == 2 and shard["accounting_closes"]
    assert shard["report"]["totals"]["requeued"] == 2
    assert summary["by_status"] == {Status.SHARDED: 5, Status.NEW: 2}
    assert _all_members_decode(out / "shards") == 5
    summary = run_build(_config(src, out))
    assert summary["by_status"] == {Status.SHARDED: 7}
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh")


def test_a_damaged_member_is_never_copied_into_a_new_tar(tmp_path):
    """Bit rot inside a published tar (same size, so the tar itself looks complete): a re-shard
    that would move the clip checks it against the transcode stage's PCM hash first, stops
    before any tar changes and names the tar; once the user deletes it, its clips are fetched
    again and the corpus ends byte-identical to a build that never lost anything."""
    src, out, tar, flacs = _built_with_first_tar(tmp_path, 6)
    flac = flacs[0]
    data = bytearray(tar.read_bytes())
    for k in range(64):
        data[flac.offset_data + flac.size // 2 + k] ^= 0x5A
    tar.write_bytes(bytes(data))
    tars = lambda: {k: v for k, v in _digest(out / "shards").items() if k.endswith(".tar")}  # noqa: E731
    before = tars()
    _inputs(src, range(6, 11))
    summary = run_build(_config(src, out), refresh=True)
    assert any("damaged" in p and tar.name in p for p in summary["problems"]), summary["problems"]
    assert tars() == before                             # no tar changed
    tar.unlink()
    summary = run_build(_config(src, out))
    assert any("queued to be fetched again" in p for p in summary["problems"]), summary["problems"]
    summary = run_build(_config(src, out))
    assert summary["by_status"] == {Status.SHARDED: 11} and not summary["problems"]
    assert _all_members_decode(out / "shards") == 11
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh")


def _interleaved_tars(shard_root, n_tars: int, per_tar: int, payload, flac_path):
    """``n_tars`` tars of ``per_tar`` sharded records each (member bytes ``payload(t, j)``, the
    record's FLAC at ``flac_path(t, j)``): (records in tar order, the same interleaved round
    robin over the tars, as the writer's shuffle and the ledger's order visit them)."""
    import io
    import tarfile

    from laion_audio.records import Record
    from laion_audio.shards.members import flac_member

    records = []
    for t in range(n_tars):
        tar = shard_root / "local" / "train" / f"{t:06d}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
            for j in range(per_tar):
                rec = Record(source="local", source_id=f"c{t}-{j}", status=Status.SHARDED,
                             shard=f"local/train/{t:06d}.tar", texts=[f"clip {t} {j}"],
                             flac_path=flac_path(t, j))
                data = payload(t, j)
                info = tarfile.TarInfo(flac_member(rec.source, rec.source_id))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                records.append(rec)
    return records, [r for j in range(per_tar) for r in records[j::per_tar]]


def test_release_reads_each_tars_member_list_once_however_many_tars(tmp_path):
    """More tars than the member-list cache holds (64), records in the writer's shuffled
    order: the release visits them tar by tar, so each tar's headers are read once (in that
    order every lookup was a miss: 6x the shard stage's CPU per record at 40,000 clips)."""
    from laion_audio.shards import members as members_mod
    from pipelines.build import release_sharded_audio

    work = WorkDir(tmp_path / "out", create=True)
    shard_root = tmp_path / "out" / "shards"
    n_tars, per_tar = 70, 2
    records, shuffled = _interleaved_tars(shard_root, n_tars, per_tar,
                                          lambda t, j: f"flac bytes of {t}-{j}".encode(),
                                          lambda t, j: f"audio/local/c{t}-{j}.flac")
    for rec in records:
        path = tmp_path / "out" / rec.flac_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"flac bytes of {rec.source_id[1:]}".encode())
    members_mod._members.cache_clear()
    assert release_sharded_audio(shuffled, work, str(shard_root)) == n_tars * per_tar
    assert members_mod._members.cache_info().misses == n_tars
    assert not list((tmp_path / "out" / "audio" / "local").iterdir())


def test_planning_reads_each_tars_member_list_once_however_many_tars(tmp_path):
    """Re-planning released clips (every shard run re-plans the sharded records, so a refresh
    of a built corpus does) with more tars than the member-list cache holds, records in an
    order that interleaves the tars: each tar's headers are read once, and the plan is the
    same as in tar order."""
    import io

    from laion_audio.shards import members as members_mod
    from laion_audio.shards.plan import plan_shards

    def flac(t, j):
        buf = io.BytesIO()
        sf.write(buf, np.full(480, (t * 2 + j + 1) / 1000, "float32"), 48_000,
                 format="FLAC", subtype="PCM_16")
        return buf.getvalue()

    root = tmp_path / "shards"
    n_tars, per_tar = 70, 2
    records, interleaved = _interleaved_tars(root, n_tars, per_tar, flac,
                                             lambda t, j: str(tmp_path / "audio" / f"c{t}-{j}.flac"))
    members_mod._members.cache_clear()
    shards, failed, _ = plan_shards(interleaved, members_root=str(root), samples_per_shard=1000)
    assert not failed and sum(len(s.samples) for s in shards) == n_tars * per_tar
    assert all(s.member is not None for sh in shards for s in sh.samples)   # read from the tars
    assert members_mod._members.cache_info().misses == n_tars
    in_order, _, _ = plan_shards(records, members_root=str(root), samples_per_shard=1000)
    assert ([(s.key, s.audio_id) for sh in shards for s in sh.samples]
            == [(s.key, s.audio_id) for sh in in_order for s in sh.samples])


def _held_twice(out, n_clips: int) -> int:
    """Clips held twice now: FLACs in ``audio/`` plus FLAC members of the published tars, less
    the clips (every clip is in one place or both)."""
    import tarfile

    in_tars = 0
    for tar in (out / "shards").rglob("*.tar"):        # published only: temp names end .tmp-PID
        with tarfile.open(tar) as tf:
            in_tars += sum(m.name.endswith(".flac") for m in tf)
    return len(_flacs(out)) + in_tars - n_clips


def test_flacs_are_released_tar_by_tar_so_no_clip_is_held_twice_for_long(tmp_path, monkeypatch):
    """``audio/`` shrinks as ``shards/`` grows: whenever a tar starts, the clips held twice (a
    FLAC in audio/ and its member in a published tar) are at most the tars the writer runs
    ahead of the release, however many tars the run writes. Released after the whole stage,
    every clip was held twice at its end (~2x the corpus on disk: docs/scale.md)."""
    src = tmp_path / "in"
    _inputs(src, range(16))
    out = tmp_path / "out"
    real, twice = write_mod._write_tar, []

    def observed(shard, tmp):
        twice.append(_held_twice(out, 16))
        return real(shard, tmp)

    from laion_audio.shards import members as members_mod

    monkeypatch.setattr(write_mod, "_write_tar", observed)
    members_mod._members.cache_clear()
    summary = run_build(_config(src, out, samples_per_shard=2))
    assert summary["by_status"] == {Status.SHARDED: 16} and not _flacs(out)
    assert len(twice) >= 7, twice                         # enough tars for the bound to matter
    # one writer thread: it may start a tar while the one before waits for its release
    assert max(twice) <= 2, twice
    # each tar's member list read once, by its own release (3192d43's order kept)
    assert members_mod._members.cache_info().misses == len(twice)
    _assert_equals_a_fresh_build(src, out, tmp_path / "fresh", samples_per_shard=2)


_KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from laion_audio.ledger import Ledger
from pipelines.build import BuildConfig, run_build

src, out, point, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
calls = [0]

def dies_at_call_n():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "journal":          # tar n published with its receipt; its records not journaled
    real_write = Ledger.write
    def write(self, records, tag="update"):
        if tag == "shard":
            dies_at_call_n()
        return real_write(self, records, tag)
    Ledger.write = write
else:                            # after the n-th FLAC deleted from audio/
    real_unlink = os.unlink
    def unlink(path, *a, **k):
        real_unlink(path, *a, **k)
        if str(path).endswith(".flac") and str(out / "audio") in str(path):
            dies_at_call_n()
    os.unlink = unlink
run_build(BuildConfig(out=out, sources={"local": {"input": str(src)}}, samples_per_shard=3,
                      batch_size=2, workers=1, inline=True, skip_eval_filter=True))
"""


@pytest.mark.parametrize("point,n", [("journal", 2), ("release", 4), ("release", 6)])
def test_kill_9_while_releasing_tar_by_tar_loses_nothing_and_reruns_byte_identical(
        tmp_path, point, n):
    """kill -9 in the shard stage between a tar's publication and its records' journal entry,
    or between two of its FLACs' deletions: the rerun loses no clip and ends byte-identical
    (shards and ledger) to a build that was never killed."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "in"
    _inputs(src, range(11))
    out, clean = tmp_path / "out", tmp_path / "clean"
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(src), str(out), point, str(n)],
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    tars = list((out / "shards").rglob("*.tar"))
    assert tars and _flacs(out)                    # killed inside the stage, with clips to go
    assert not (out / "shards" / "local" / "train" / "sizes.json").exists()
    if point == "release":                         # some clips live only in their tar now
        assert len(_flacs(out)) == 11 - n
    summary = run_build(_config(src, out))
    assert summary["by_status"] == {Status.SHARDED: 11} and not summary["problems"]
    assert _all_members_decode(out / "shards") == 11
    run_build(_config(src, clean))
    assert _digest(out / "shards") == _digest(clean / "shards")
    assert (out / "ledger" / "ledger.parquet").read_bytes() == \
        (clean / "ledger" / "ledger.parquet").read_bytes()
    assert not _flacs(out) and not [p for p in out.rglob("*") if ".tmp" in p.name]
