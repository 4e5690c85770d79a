"""Writing: byte-identical USTAR tars published atomically, receipts for resume, index and
sizes.json committed last. ``write_shards`` reads as its steps: plan, retire splits the plan no
longer has, decide which tars to keep, write the rest, commit each split, report."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from ..records import Record, Status
from ..storage import Root
from .layout import (_MEMBER_MODE, _SHARD_NAME, _TAR_FORMAT, DEFAULT_SEED, DEFAULT_TEST_FRACTION,
                     INDEX_FORMAT, INDEX_NAME, RECEIPTS_DIR, SAMPLE_RATE, SIZES_NAME,
                     WRITER_VERSION, ShardError, dumps, is_temp_name)
from .members import extract
from .plan import PlannedSample, PlannedShard, plan_shards


# ---------------------------------------------------------------------------- writing one tar
class _HashingWriter:
    """A write-only file that hashes and counts what goes through it (tarfile needs ``tell``)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.raw.write(data)
        self.sha.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _check_moved_clip(s: PlannedSample, where: str) -> None:
    """A clip that comes out of a published tar (or was copied out of one) must still be the
    samples the transcode stage hashed: a damaged member is never copied into a new tar. Costs
    one decode per moved clip; clips straight from the transcode stage are not re-read."""
    from ..transcode.audio import pcm_sha256_of_file

    if not s.audio_id.startswith("pcm:"):
        return                      # a record without the transcode stage's hash
    try:
        with s.open_flac() as f:
            ok = pcm_sha256_of_file(f) == s.audio_id[4:]
    except Exception:           # libsndfile reports a corrupt stream as a generic error
        ok = False
    if not ok:
        raise ShardError(f"{where}: the clip {s.key}.flac no longer decodes to the samples it was "
                         f"sharded with (the tar is damaged); delete {where} and rerun: the "
                         "clips it held are then fetched again")


def _write_tar(shard: PlannedShard, tmp: Path) -> dict:
    """Build the tar at ``tmp`` (fsynced) and return its index entry."""
    with open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w", format=_TAR_FORMAT) as tar:
            for s in shard.samples:
                if s.member:
                    _check_moved_clip(s, s.member[0])
                with s.open_flac() as f:
                    st = os.stat(s.member[0]) if s.member else os.fstat(f.fileno())
                    if (st.st_mtime_ns != s.flac_mtime_ns
                            or (not s.member and st.st_size != s.flac_bytes)):
                        what = s.member[0] if s.member else s.flac_path
                        raise ShardError(f"{what} changed while sharding; rerun the command")
                    tar.addfile(_tarinfo(f"{s.key}.flac", s.flac_bytes), f)
                tar.addfile(_tarinfo(f"{s.key}.json", len(s.json_bytes)), io.BytesIO(s.json_bytes))
        raw.flush()
        os.fsync(raw.fileno())
    if out.count != shard.expected_bytes:   # our size arithmetic drives --shard-bytes: keep it honest
        raise ShardError(f"{shard.rel}: wrote {out.count} bytes, planned {shard.expected_bytes}")
    return _index_entry(shard, out.count, out.sha.hexdigest())


def _index_entry(shard: PlannedShard, nbytes: int, sha256: str) -> dict:
    return {"name": shard.name, "samples": len(shard.samples), "bytes": nbytes, "sha256": sha256,
            "seconds": round(shard.seconds, 6), "first_key": shard.samples[0].key,
            "last_key": shard.samples[-1].key, "plan": shard.fingerprint()}



# ---------------------------------------------------------------------------- the run
class ShardRun(NamedTuple):
    """``records, report = write_shards(...)`` unpacks it."""

    records: list[Record]     # every input record, in input order: sharded or failed
    report: dict

    def lines(self) -> list[str]:
        r = self.report
        out = [f"shards -> {r['out']}  (seed {r['seed']}, test fraction {r['test_fraction']})"]
        for ds, splits in sorted(r["datasets"].items()):
            for split, s in sorted(splits.items()):
                out.append(f"  {ds}/{split}: {s['samples']} samples in {s['shards']} shards, "
                           f"{s['bytes'] / 1e6:.1f} MB, {s['seconds'] / 3600:.3f} h")
        t = r["totals"]
        fails = ", ".join(f"{k}={v}" for k, v in sorted(r["failed"].items())) or "none"
        requeued = f" + {t['requeued']} requeued (clip lost from a damaged tar: the next run " \
            "fetches it again)" if t.get("requeued") else ""
        out.append(f"  total: {t['inputs']} in = {t['samples']} sharded + {t['failed']} failed "
                   f"({fails}){requeued}; {t['shards']} shards ({r['shards_written']} written, "
                   f"{r['shards_kept']} already complete, {r['stale_removed']} stale removed); "
                   f"{t['bytes'] / 1e6:.1f} MB, {t['seconds'] / 3600:.3f} h; {r['wall_seconds']:.1f}s")
        return out


def _staging_dir(root: Root) -> Path:
    """Where remote tars are built. One folder per output root, so a rerun finds and clears
    what a killed run left there."""
    tag = hashlib.sha256(root.url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"laion-audio-shards-{tag}"


def _ours(root: Root, d: str) -> bool:
    """Only a split whose index this writer made may be deleted (never LAION's own shards)."""
    raw = root.read_bytes(f"{d}/{INDEX_NAME}")
    try:
        return bool(raw) and json.loads(raw).get("format") == INDEX_FORMAT
    except (ValueError, AttributeError):
        return False


def _retire_split(root: Root, d: str) -> int:
    """Delete one of our splits: sizes.json first (readers stop seeing it), then the rest."""
    root.remove(f"{d}/{SIZES_NAME}")
    root.remove(f"{d}/{INDEX_NAME}")
    for folder in (f"{d}/{RECEIPTS_DIR}", d):
        for name in root.listdir(folder):
            if _SHARD_NAME.match(name) or name.endswith(".tar.json"):
                root.remove(f"{folder}/{name}")
        if root.is_local:
            try:
                os.rmdir(folder)          # only when empty: anything else there is not ours
            except OSError:
                pass
    return 1


def write_shards(records: Iterable[Record], out: str | os.PathLike, *, seed: int = DEFAULT_SEED,
                 test_fraction: float = DEFAULT_TEST_FRACTION,
                 samples_per_shard: int | None = None, shard_bytes: int | None = None,
                 workers: int = 1, storage_options: dict | None = None,
                 on_published: Callable[[list[int]], None] | None = None) -> ShardRun:
    """Write ready records into LAION-layout shards under ``out`` (a folder or ``s3://...``).

    Every dataset/split present in ``records`` is (re)written as a whole; tars that already hold
    exactly what the plan asks for are kept. Returns the records with ``split``, ``shard`` and
    ``status=sharded`` (or failed, with a typed reason) and a report.

    ``on_published(positions)`` is called in this thread after each tar written by this run
    and its receipt are published, with the input positions of its records, already marked
    sharded in place: the build journals them and releases their FLACs tar by tar, so its work
    folder never holds a clip twice for more than a few tars (docs/scale.md)."""
    t0 = time.monotonic()
    records = list(records)
    root = Root(out, storage_options)
    shards, failed, splits = plan_shards(records, seed=seed, test_fraction=test_fraction,
                                         samples_per_shard=samples_per_shard,
                                         shard_bytes=shard_bytes, workers=workers,
                                         members_root=root.path if root.is_local else None)
    by_split: dict[tuple[str, str], list[PlannedShard]] = defaultdict(list)
    for s in shards:
        by_split[(s.dataset, s.split)].append(s)

    staging = _fresh_staging(root)
    retiring = _unplanned_splits(root, by_split)
    todo, stale, entries = _decide_tars(root, by_split)
    restored = _restore_members(root, todo, stale, retiring)
    retired = sum(_retire_split(root, d) for d in retiring)
    for path in stale:
        root.remove(path)
    published = None
    if on_published is not None:
        def published(shard: PlannedShard) -> None:
            for s in shard.samples:
                _mark_sharded(records[s.index], shard.split, shard.rel)
            on_published([s.index for s in shard.samples])
    entries.update(_write_tars(root, todo, staging, workers, published))
    _commit_splits(root, by_split, entries, seed, test_fraction)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)

    report = _report(root, by_split, entries, failed, len(records), seed=seed,
                     test_fraction=test_fraction, samples_per_shard=samples_per_shard,
                     shard_bytes=shard_bytes)
    report.update({"shards_written": len(todo), "shards_kept": len(shards) - len(todo),
                   "flac_restored_from_tars": restored,
                   "stale_removed": sum(p.endswith(".tar") for p in stale),
                   "splits_retired": retired, "wall_seconds": round(time.monotonic() - t0, 3)})
    return ShardRun(_records_out(records, shards, failed, splits), report)


def _split_dir(root: Root, ds: str, split: str) -> str:
    return root.join(ds, split)


def _fresh_staging(root: Root) -> Path | None:
    """Remote roots build tars in a local staging folder first (cleared of a killed run's files)."""
    if root.is_local:
        return None
    staging = _staging_dir(root)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _unplanned_splits(root: Root, by_split: dict[tuple[str, str], list[PlannedShard]]) -> list[str]:
    """Splits this writer made earlier that the plan no longer has (e.g. --test-fraction 0 now):
    they are retired, so no sizes.json disagrees with the ledger."""
    out = []
    for ds in sorted({ds for ds, _ in by_split}):
        for split in root.listdir(root.join(ds)):
            d = _split_dir(root, ds, split)
            if (ds, split) not in by_split and _ours(root, d):
                out.append(d)
    return out


def _restore_members(root: Root, todo: list[PlannedShard], stale: list[str],
                     retiring: list[str]) -> int:
    """Before any tar is rewritten or removed, copy out of it the FLACs that a tar to write
    reads from it, back to their ``flac_path`` (the build's keep policy deleted them once that
    tar was published). A run killed after rewriting one tar would otherwise lose a clip the
    ledger still places in the old tar; restored files stay until the ledger says where each
    clip is now (the build deletes them again then)."""
    changing = {f"{_split_dir(root, s.dataset, s.split)}/{s.name}" for s in todo}
    changing.update(p for p in stale if p.endswith(".tar"))
    restored = 0
    for shard in todo:
        for s in shard.samples:
            if s.member is None:
                continue
            tar = s.member[0]
            if tar in changing or any(tar.startswith(d + "/") for d in retiring):
                _check_moved_clip(s, tar)
                extract(tar, f"{s.key}.flac", s.flac_path)
                s.member, s.flac_mtime_ns = None, os.stat(s.flac_path).st_mtime_ns
                restored += 1
    return restored


def _decide_tars(root: Root, by_split: dict[tuple[str, str], list[PlannedShard]],
                 ) -> tuple[list[PlannedShard], list[str], dict[str, dict]]:
    """Per tar: keep it (receipt matches the plan and the size) or write it. Also find tars and
    receipts numbered past the plan, which a bigger earlier plan left behind. A split that will
    change loses its sizes.json/index.json now, so readers never see it half-rewritten."""
    todo: list[PlannedShard] = []
    stale: list[str] = []
    entries: dict[str, dict] = {}
    for (ds, split), group in by_split.items():
        d = _split_dir(root, ds, split)
        if root.is_local:
            Path(d).mkdir(parents=True, exist_ok=True)
            for folder in (d, f"{d}/{RECEIPTS_DIR}"):
                for name in root.listdir(folder):
                    if is_temp_name(name):       # left by a killed run
                        root.remove(f"{folder}/{name}")
        changing = False
        for shard in group:
            receipt_raw = root.read_bytes(f"{d}/{RECEIPTS_DIR}/{shard.name}.json")
            receipt = json.loads(receipt_raw) if receipt_raw else None
            if (receipt and receipt.get("plan") == shard.fingerprint()
                    and root.size(f"{d}/{shard.name}") == receipt.get("bytes")):
                entries[shard.rel] = receipt
            else:
                todo.append(shard)
                changing = True
        for folder, suffix in ((d, ".tar"), (f"{d}/{RECEIPTS_DIR}", ".tar.json")):
            for name in root.listdir(folder):
                number = name[: -len(suffix)] if name.endswith(suffix) else ""
                if number.isdigit() and int(number) >= len(group):
                    stale.append(f"{folder}/{name}")
                    changing = True
        if changing:
            root.remove(f"{d}/{SIZES_NAME}")
            root.remove(f"{d}/{INDEX_NAME}")
    return todo, stale, entries


def _write_tars(root: Root, todo: list[PlannedShard], staging: Path | None, workers: int,
                published: Callable[[PlannedShard], None] | None = None) -> dict[str, dict]:
    """Write each tar to a temporary file, publish it, then its receipt; returns index entries.
    ``published(shard)`` runs here, in plan order, once a tar and its receipt are out; at most
    ``2 * workers`` tars are written ahead of it, which bounds the clips held twice."""
    def write_one(shard: PlannedShard) -> dict:
        d = _split_dir(root, shard.dataset, shard.split)
        receipt_path = f"{d}/{RECEIPTS_DIR}/{shard.name}.json"
        root.remove(receipt_path)     # the old receipt must never vouch for the new bytes
        tmp_dir = Path(d) if staging is None else staging
        tmp = tmp_dir / f".{shard.dataset}.{shard.split}.{shard.name}.tmp-{os.getpid()}"
        try:
            entry = _write_tar(shard, tmp)
            root.commit_file(tmp, f"{d}/{shard.name}")
        finally:
            tmp.unlink(missing_ok=True)
        root.write_bytes_atomic(receipt_path, dumps(entry))
        return entry

    if not todo:
        return {}
    workers = max(1, workers)
    entries: dict[str, dict] = {}
    ahead: deque = deque()

    def finish_oldest() -> None:
        shard, future = ahead.popleft()
        entries[shard.rel] = future.result()
        if published is not None:
            published(shard)

    with ThreadPoolExecutor(workers) as pool:
        for shard in todo:
            if len(ahead) >= 2 * workers:
                finish_oldest()
            ahead.append((shard, pool.submit(write_one, shard)))
        while ahead:
            finish_oldest()
    return entries


def _commit_splits(root: Root, by_split: dict[tuple[str, str], list[PlannedShard]],
                   entries: dict[str, dict], seed: int, test_fraction: float) -> None:
    """Commit each split: index first, sizes.json (what readers look for) last."""
    for (ds, split), group in by_split.items():
        d = _split_dir(root, ds, split)
        shard_entries = [entries[s.rel] for s in group]
        index = {"format": INDEX_FORMAT, "version": WRITER_VERSION, "dataset": ds, "split": split,
                 "seed": seed, "test_fraction": test_fraction, "sample_rate": SAMPLE_RATE,
                 "samples": sum(e["samples"] for e in shard_entries),
                 "bytes": sum(e["bytes"] for e in shard_entries),
                 "seconds": round(sum(e["seconds"] for e in shard_entries), 6),
                 "shards": shard_entries}
        root.write_bytes_atomic(f"{d}/{INDEX_NAME}", dumps(index))
        root.write_bytes_atomic(f"{d}/{SIZES_NAME}",
                                dumps({e["name"]: e["samples"] for e in shard_entries}))


def _records_out(records: list[Record], shards: list[PlannedShard], failed: dict[int, Record],
                 splits: dict[int, str]) -> list[Record]:
    """Every input record, in input order: sharded (split, shard set on the record itself: a
    corpus-sized set is not copied) or failed."""
    shard_of: dict[int, str] = {s.index: sh.rel for sh in shards for s in sh.samples}
    out: list[Record] = []
    for i, rec in enumerate(records):
        if i in failed:
            bad = failed[i]
            bad.split, bad.shard = "", ""
            out.append(bad)
            continue
        out.append(_mark_sharded(rec, splits[i], shard_of[i]))
    return out


def _mark_sharded(rec: Record, split: str, shard: str) -> Record:
    rec.split, rec.shard, rec.status = split, shard, Status.SHARDED
    rec.failure_stage = rec.failure_code = rec.failure_message = ""
    return rec


def _report(root: Root, by_split: dict[tuple[str, str], list[PlannedShard]],
            entries: dict[str, dict], failed: dict[int, Record], inputs: int, **settings) -> dict:
    datasets: dict[str, dict[str, dict]] = defaultdict(dict)
    for (ds, split), group in sorted(by_split.items()):
        es = [entries[s.rel] for s in group]
        datasets[ds][split] = {"samples": sum(e["samples"] for e in es), "shards": len(es),
                               "bytes": sum(e["bytes"] for e in es),
                               "seconds": round(sum(e["seconds"] for e in es), 3)}
    flat = [v for splits_ in datasets.values() for v in splits_.values()]
    failures = [r for r in failed.values() if r.status == Status.FAILED]   # the rest: requeued
    return {
        "out": root.url, **settings,
        "datasets": dict(datasets),
        "totals": {"inputs": inputs, "samples": sum(v["samples"] for v in flat),
                   "failed": len(failures), "requeued": len(failed) - len(failures),
                   "shards": sum(v["shards"] for v in flat),
                   "bytes": sum(v["bytes"] for v in flat),
                   "seconds": round(sum(v["seconds"] for v in flat), 3)},
        "failed": dict(Counter(r.failure_code for r in failures)),
    }
