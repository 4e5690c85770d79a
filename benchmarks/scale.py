"""Corpus scale: the metadata path at 50k / 500k / 2,041,789 rows and small full builds.

    python benchmarks/scale.py crawl [--rows 50000,500000,2041789]
    python benchmarks/scale.py journal [--files 2000]
    python benchmarks/scale.py metadata [--audioset-rows 2041789 --other-rows 630000]
    python benchmarks/scale.py build [--sizes 1000,8000,10000] [--keep DIR] [--crawl-repeats 5]
    python benchmarks/scale.py table --results DIR [--sizes 10000,100000 --audioset-rows 2041789]

``crawl`` runs ``laion-audio build --source audioset --stages crawl --inline`` (the CLI, one
process per size) on AudioSet-format segment CSVs made from the real rows of
``../shared/data/audioset`` (replicated with distinct YouTube ids), and prints wall time, the
driver's peak RSS, and the ratios against the smallest size. ``journal`` times one 16-record
ledger write as the number of batches already written grows. ``metadata`` is the 2.5M-record
run: the AudioSet CSV plus ``--other-rows`` records of the other sources written through the
ledger, the id filter's lookups and shard planning. ``build`` is a full build (``--source
local --inline``, every stage, the default keep policy) of N generated clips distinct by
construction at each size (benchmarks/driver_memory.py runs each; docs/scale.md has the figures);
its crawl is also measured as the median of ``--crawl-repeats`` crawl-only builds net of the
stage's start-up. ``table`` prints the issue's table: builds at ``--sizes`` and the metadata
run side by side (records/s per stage, driver peak RSS, disk per folder); each piece is saved
in ``--results`` when measured, and a rerun measures only the missing ones (so the pieces can
take the shared lock one at a time).

Figures are medians of ``--repeats`` runs on whatever machine runs this; the sizes are printed
side by side so the ratios, not the absolute numbers, carry the claim.

Measured on the 2-core development machine shared with other jobs (load average 5-17, so wall
seconds vary 2-7x; CPU seconds are the steadier figure), one run each:

    crawl (CLI), load ~5  before (main)                      after
    50,000 rows           16.0 s (7.4 s CPU), 279 MB         7.0 s (3.4 s CPU), 250 MB
    500,000 rows          586.3 s (258.1 s CPU), 1,172 MB    55.2 s (27.6 s CPU), 407 MB
    2,041,789 rows        (quadratic: hours)                 150.5 s (120.4 s CPU), 857 MB
    500k / 50k            36.7x time, 4.20x RSS              7.9x time, 1.63x RSS

    crawl (CLI) on the merged main of 2026-12-01 (every source's text through the one cleaning
    rule, listing checks), idle machine: 50,000 rows 6.0 s, 340 MB; 500,000 rows 46.5 s,
    500 MB; 2,041,789 rows 217.6 s, 948 MB; 500k / 50k: 7.7x time, 1.47x RSS.

    crawl (CLI), branch scale4 at 1508e17 (the text rule's ASCII fast path), 2026-12-01 16:03,
    load ~2, the machine ~1.8x slower than in the morning: 50,000 rows 6.1 s, 291 MB; 500,000
    rows 69.1 s, 459 MB; 2,041,789 rows 257.1 s, 902 MB; 500k / 50k: 11.3x time, 1.58x RSS.

    metadata run, 2,675,315 records (CSV above + the paper's 633,526 of the other sources):
    crawl AudioSet 150.5 s, 857 MB; 630K other records 49.5 s (12,800 records/s), 743 MB;
    id filter over the ledger in chunks 42.2 s (63,400 records/s), 204 MB; shard planning
    13.3 s (200,000 records/s), 158 MB; ledger 40.7 MB on disk, journal empty.

    16-record write on a 100k-row ledger after k journal batches (k = 0, 125, 250, 500, 980):
    before  224, 120, 428, 1343 ms, -        after  43, 50, 39, 43, 24 ms

    full builds (``build``): see docs/scale.md (1,000 / 8,000 / 10,000 generated clips).

    ``table --sizes 10000,40000 --clip-format flac`` (FLAC clip pool, both builds in one run
    through the lock 18:47-19:13, load 6-8 then 1-4; 100k not measured: its peak disk, ~37 GB,
    is more than the 14-26 GB this shared disk had free), CPU ms per record 10k / 40k:
    crawl (median of 5, net) 0.149 / 0.131; fetch+transcode+fingerprint 16.11 / 15.40;
    caption 0.28 / 0.19; filter 1.63 / 1.33; shard 1.13 / 6.71 (the keep policy's member-list
    cache thrashing past 64 tars, fixed in 3192d43; rerun at 40k after it, 19:28-19:42, load ~1:
    fetch+transcode+fingerprint 14.46, filter 1.73, shard 1.04, wall 722 s); driver peak RSS
    428.4 / 738.2 MB (the filter's index, +10.4 MB per 1,000 clips); work folder / shards 1.25 /
    1.25; distinct clips dropped 0 / 1; build wall 303 / 1,110 s. Metadata run (2.68M records, 16:17): crawl 7,164
    records/s, id filter 81,999/s, shard planning 182,351/s, peak 903.6 MB.

    ``table --sizes 10000,40000,100000 --clip-format flac --crawl-repeats 3`` (the 100k build
    alone, branch scale6 at b671610: FLACs released tar by tar; 22:02-22:37 in one lock hold,
    load median 1.5): CPU ms per record crawl (median of 3, net) 0.133, fetch+transcode+
    fingerprint 14.04, caption 0.24, filter 2.27, shard 1.43; driver peak 1,364.8 MB; work
    folder at its peak (du every 5 s) 14,260.7 MB; 10 of 100,000 distinct clips dropped;
    build wall 2,056 s.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHARED = Path(os.environ.get("LAION_AUDIO_SHARED", ROOT.parent / "shared")) / "data" / "audioset"
FULL_UNBALANCED = 2_041_789
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"


def real_rows(shared: Path = SHARED) -> list[tuple[str, str, str, str]]:
    """(ytid, start, end, labels) of every row of the real segment CSVs."""
    rows = []
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        with open(shared / name, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh, skipinitialspace=True):
                if row and not row[0].startswith("#"):
                    rows.append((row[0], row[1], row[2], row[3]))
    if not rows:
        raise SystemExit(f"no AudioSet rows under {shared}")
    return rows


def _suffix(k: int) -> str:
    out = ""
    while True:
        k, r = divmod(k, len(_ALPHABET))
        out += _ALPHABET[r]
        if k == 0:
            return out


def write_segments_csv(path: Path, n: int, shared: Path = SHARED) -> Path:
    """An AudioSet-format CSV of ``n`` rows: real rows, copy k of a row gets YTID + "_" + k
    (ids stay within AudioSet's [A-Za-z0-9_-]{6,20} and are all distinct)."""
    rows = real_rows(shared)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(f"# Segments csv made by benchmarks/scale.py from real rows\n"
                 f"# num_ytids={n}, num_segs={n}\n# YTID, start_seconds, end_seconds, positive_labels\n")
        for i in range(n):
            k, j = divmod(i, len(rows))
            ytid, start, end, labels = rows[j]
            if k:
                ytid = f"{ytid}_{_suffix(k)}"
            fh.write(f'{ytid}, {start}, {end}, "{labels}"\n')
    return path


def run_measured(cmd: list[str], **kw) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB of the child, exit code, CPU seconds of the child). CPU time
    is the steadier figure on a shared machine. Linux counts the parent's RSS at fork in the
    child's peak, so this process stays small (no ledger index, no big tables)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def du_mb(path: Path) -> float:
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_size
    return total / 1e6


def bench_crawl(sizes: list[int], repeats: int, tmp: Path, python: str) -> list[dict]:
    labels = SHARED / "class_labels_indices.csv"
    results = []
    for n in sizes:
        csv_path = write_segments_csv(tmp / f"segments-{n}.csv", n)
        times, rss, cpu = [], [], []
        for r in range(repeats):
            out = tmp / f"crawl-{n}-{r}"
            cmd = [python, "-m", "laion_audio", "build", "--source", "audioset", "--stages", "crawl",
                   "--inline", "--out", str(out), "--audioset-csv", str(csv_path),
                   "--audioset-labels", str(labels)]
            seconds, peak, rc, cpu_s = run_measured(cmd, cwd=ROOT)
            cpu.append(cpu_s)
            if rc:
                raise SystemExit(f"crawl of {n} rows failed (exit {rc})")
            times.append(seconds)
            rss.append(peak)
            ledger_mb = du_mb(out / "ledger")
            subprocess.run(["rm", "-rf", str(out)], check=True)
        results.append({"rows": n, "seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu),
                        "peak_rss_mb": statistics.median(rss),
                        "ledger_mb": ledger_mb, "rows_per_s": n / statistics.median(times)})
        print(f"  crawl {n:>9,} rows: {statistics.median(times):7.1f} s ({statistics.median(cpu):6.1f} s CPU)  peak RSS {statistics.median(rss):7.0f} MB"
              f"  ledger {ledger_mb:6.1f} MB  {n / statistics.median(times):9.0f} records/s", flush=True)
        csv_path.unlink()
    base = results[0]
    for r in results[1:]:
        print(f"  {r['rows']:,} vs {base['rows']:,} rows ({r['rows'] / base['rows']:.0f}x): "
              f"time {r['seconds'] / base['seconds']:.1f}x (CPU {r['cpu_seconds'] / base['cpu_seconds']:.1f}x), peak RSS {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
    return results


def _bench_records(n: int, source: str, start: int = 0):
    from laion_audio.records import Record
    return [Record(source=source, source_id=f"{source}-{i:08d}", url=f"https://example.org/{source}/{i}.wav",
                   title=f"{source} sound {i}", description=f"a recorded sound, number {i}",
                   tags=["field recording", "ambience", f"t{i % 97}"], license="CC BY 4.0",
                   author=f"user{i % 1000}", duration=float(3 + i % 30),
                   original_data={"id": i, "source": source}) for i in range(start, start + n)]


def bench_journal(base_rows: int, files: int, tmp: Path) -> list[dict]:
    """Median seconds of one 16-record ledger write after ``k`` batches since the last
    compaction, on a ledger of ``base_rows`` compacted rows (as a fetch over a big corpus)."""
    from laion_audio.ledger import Ledger
    from laion_audio.records import Status

    root = tmp / "journal-bench" / "ledger"
    with Ledger(root) as led:
        for i in range(0, base_rows, 5000):
            led.upsert(_bench_records(min(5000, base_rows - i), "bench", i))
        led.compact()
        checkpoints = sorted({0, files // 8, files // 4, files // 2, files - 20})
        out, times, k = [], [], 0
        while k < files:
            recs = _bench_records(16, "bench", (k * 16) % base_rows)
            for r in recs:
                r.status, r.audio_path = Status.FETCHED, f"raw/bench/{r.source_id}.wav"
            t0 = time.perf_counter()
            led.write(recs, tag="fetch")
            times.append(time.perf_counter() - t0)
            k += 1
            for c in checkpoints:
                if k == c + 20:
                    out.append({"journal_files_before": c, "write_ms": 1000 * statistics.median(times[-20:])})
                    print(f"  16-record write after {c:>5} journal batches: "
                          f"{1000 * statistics.median(times[-20:]):7.1f} ms (median of 20)", flush=True)
    return out


#: the paper's 630K table (crawlers' ``paper_samples``)
PAPER_SOURCES = {"freesound": 515_581, "epidemic": 75_645, "bbc": 15_973, "audiostock": 10_000,
                 "free_to_use_sounds": 6_370, "sonniss_game_effects": 5_049,
                 "paramount_motion": 4_420, "wesoundeffects": 488}


def _eval_items(shared: Path):
    """Eval items from the real manifests in ../shared: AudioSet eval and AudioCaps test
    (YouTube ids), ESC-50 (Freesound ids)."""
    import pandas as pd

    frames = []
    rows = [r for r in csv.reader(open(shared / "audioset" / "eval_segments.csv"), skipinitialspace=True)
            if r and not r[0].startswith("#")]
    frames.append(pd.DataFrame({"eval_set": "audioset_eval", "split": "eval", "item_id": [r[0] for r in rows],
                                "match_id": [r[0] for r in rows], "id_kind": "youtube",
                                "start": [float(r[1]) for r in rows], "end": [float(r[2]) for r in rows]}))
    ac = pd.read_csv(shared / "audiocaps" / "dataset" / "test.csv")
    frames.append(pd.DataFrame({"eval_set": "audiocaps", "split": "test", "item_id": ac["audiocap_id"].astype(str),
                                "match_id": ac["youtube_id"], "id_kind": "youtube",
                                "start": ac["start_time"].astype(float), "end": ac["start_time"].astype(float) + 10}))
    esc = pd.read_csv(shared / "esc50" / "esc50.csv")
    frames.append(pd.DataFrame({"eval_set": "esc50", "split": "eval", "item_id": esc["filename"],
                                "match_id": esc["src_file"].astype(str), "id_kind": "freesound",
                                "start": float("nan"), "end": float("nan")}))
    return pd.concat(frames, ignore_index=True)


def metadata_phase(phase: str, work: Path, args) -> int:
    """One phase of the metadata run, in its own process (so its peak RSS is its own)."""
    from laion_audio.ledger import Ledger, writing

    if phase == "others":
        from laion_audio.records import Record
        scale_to = (args.other_rows or sum(PAPER_SOURCES.values())) / sum(PAPER_SOURCES.values())
        with writing(work / "ledger") as led:
            for source, n in PAPER_SOURCES.items():
                n = max(1, round(n * scale_to))
                for start in range(0, n, 5000):
                    batch = []
                    for i in range(start, min(n, start + 5000)):
                        sid = str(i + 1) if source == "freesound" else f"{source}-{i:07d}"   # real-looking ids
                        batch.append(Record(source=source, source_id=sid, url=f"https://example.org/{source}/{sid}",
                                            title=f"{source} sound {i}", description=f"a recorded sound, number {i}",
                                            tags=["field recording", f"t{i % 97}"], license="CC BY 4.0",
                                            author=f"user{i % 1000}", duration=float(3 + i % 30),
                                            original_data={"id": sid}))
                    led.upsert(batch, tag=f"crawl_{source}")
    elif phase == "idfilter":
        from laion_audio.filters.id_overlap import find_id_overlaps, primary_matches
        items = _eval_items(SHARED.parent)
        led = Ledger(work / "ledger", lock=False)
        matched = 0
        cols = ["source", "source_id", "original_data", "trim_start", "trim_end"]
        for chunk in led.scan(columns=cols, chunk_rows=65536):
            matched += len(primary_matches(find_id_overlaps(chunk, items)))
        print(json.dumps({"records_matched": matched, "eval_items": len(items)}))
    elif phase == "plan":
        from collections import Counter

        from laion_audio.shards import assign_split
        led = Ledger(work / "ledger", lock=False)
        counts: Counter = Counter()
        for chunk in led.scan(columns=["source", "source_id"], chunk_rows=65536):
            for src, sid in zip(chunk.column("source").to_pylist(), chunk.column("source_id").to_pylist()):
                counts[(src, assign_split(src, sid))] += 1
        shards = {f"{k[0]}/{k[1]}": -(-v // 512) for k, v in sorted(counts.items())}
        print(json.dumps({"records": sum(counts.values()), "shards_of_512": sum(shards.values())}))
    return 0


def bench_metadata(args, tmp: Path) -> list[dict]:
    """The 2.5M-record metadata run: AudioSet CSV crawl (CLI), the 630K other records, the id
    filter over the whole ledger in chunks, and shard planning; per phase: records/s, peak RSS."""
    work = tmp / "meta"
    labels = SHARED / "class_labels_indices.csv"
    csv_path = write_segments_csv(tmp / "segments.csv", args.audioset_rows)
    py = sys.executable
    me = str(Path(__file__).resolve())
    phases = [
        ("crawl audioset (CLI)", args.audioset_rows,
         [py, "-m", "laion_audio", "build", "--source", "audioset", "--stages", "crawl", "--inline",
          "--out", str(work), "--audioset-csv", str(csv_path), "--audioset-labels", str(labels)]),
        ("crawl 630K other records", args.other_rows or sum(PAPER_SOURCES.values()),
         [py, me, "metadata", "--phase", "others", "--work", str(work)] +
         (["--other-rows", str(args.other_rows)] if args.other_rows else [])),
    ]
    results = []
    for name, n, cmd in phases:
        seconds, peak, rc, cpu = run_measured(cmd, cwd=ROOT)
        if rc:
            raise SystemExit(f"{name} failed (exit {rc})")
        results.append({"phase": name, "records": n, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak})
    csv_path.unlink()
    import pyarrow.parquet as pq
    # not len(Ledger(...)): a child inherits the parent's peak RSS on Linux, so the parent
    # must not build an index before it measures children
    total = pq.ParquetFile(work / "ledger" / "ledger.parquet").metadata.num_rows
    for name, phase in (("id filter (eval ids)", "idfilter"), ("shard planning (split, shard count)", "plan")):
        seconds, peak, rc, cpu = run_measured([py, me, "metadata", "--phase", phase, "--work", str(work)], cwd=ROOT)
        if rc:
            raise SystemExit(f"{name} failed (exit {rc})")
        results.append({"phase": name, "records": total, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak})
    disk = {p.name: round(du_mb(p), 1) for p in sorted(work.iterdir()) if p.is_dir()}
    print(f"  metadata run: {total:,} records in the ledger; disk MB per folder: {disk}")
    for r in results:
        print(f"  {r['phase']:<36} {r['records']:>10,} records {r['seconds']:7.1f} s ({r['cpu_seconds']:6.1f} s CPU)"
              f" {r['records'] / r['seconds']:9.0f} records/s  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    out = results + [{"disk_mb": disk, "records": total, "measured": _when()}]
    if getattr(args, "results", None):
        _save(args.results / f"metadata-{args.audioset_rows}.json", out)
    return out


def _when() -> dict:
    """When (UTC) and under what load a piece was measured (the table prints it)."""
    return {"utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load": round(os.getloadavg()[0], 1)}


def _save(path: Path, data) -> None:
    from laion_audio import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(data, indent=2))


# ------------------------------------------------------------------------------ the table
#: (row label, stage name in a build's figures, phase name in the metadata run)
_RATE_ROWS = [("crawl", "crawl", "crawl audioset (CLI)"),
              ("crawl, the other sources' records", None, "crawl 630K other records"),
              ("fetch+transcode+fingerprint", "fetch+transcode+fingerprint", None),
              ("caption", "caption", None),
              ("filter (near-dup + content)", "filter", None),
              ("id filter (eval ids)", None, "id filter (eval ids)"),
              ("shard (write tars)", "shard", None),
              ("shard planning (split, shard count)", None, "shard planning (split, shard count)")]


def table_columns(sizes: list[int], audioset_rows: int | None, results: Path) -> list[tuple[str, object]]:
    """(heading, figures or None) per column, read from ``results``."""
    cols = []
    for n in sizes:
        f = results / f"build-{n}.json"
        cols.append((f"build {n:,}", json.loads(f.read_text()) if f.exists() else None))
    if audioset_rows:
        f = results / f"metadata-{audioset_rows}.json"
        data = json.loads(f.read_text()) if f.exists() else None
        heading = f"metadata {data[-1]['records'] / 1e6:.2f}M" if data else f"metadata {audioset_rows:,}+"
        cols.append((heading, data))
    return cols


def print_scale_table(cols: list[tuple[str, object]]) -> None:
    """Sizes side by side: records/s of each stage (wall, and per CPU second), the driver's
    peak RSS, disk MB per folder, and when and under what load each column was measured."""
    def cell(v, fmt="{:,.0f}"):
        return "-" if v is None else (fmt.format(v) if isinstance(v, (int, float)) else str(v))

    width = 22
    print(f"  {'':<46}" + "".join(f"{h:>{width}}" for h, _ in cols))

    def row(label, values, fmt="{:,.0f}"):
        print(f"  {label:<46}" + "".join(f"{cell(v, fmt):>{width}}" for v in values))

    def build_or_meta(data, build_fn, meta_fn):
        if data is None:
            return "not measured"
        return build_fn(data) if isinstance(data, dict) else meta_fn(data)

    def phase(data, name):
        return next((p for p in data if p.get("phase") == name), None)

    row("records", [build_or_meta(d, lambda b: b["size"], lambda m: m[-1]["records"]) for _, d in cols])
    for label, stage, ph in _RATE_ROWS:
        def wall(b, stage=stage):
            ms = b["ms_per_record"].get(stage) if stage else None
            return 1000 / ms if ms else None

        def cpu(b, stage=stage):
            ms = b.get("cpu_ms_per_record", {}).get(stage) if stage else None
            return 1000 / ms if ms else None

        def mwall(m, ph=ph):
            p = phase(m, ph) if ph else None
            return p["records"] / p["seconds"] if p else None

        def mcpu(m, ph=ph):
            p = phase(m, ph) if ph else None
            return p["records"] / p["cpu_seconds"] if p and p["cpu_seconds"] else None
        row(f"records/s {label}", [build_or_meta(d, wall, mwall) for _, d in cols])
        row("  ... per CPU second", [build_or_meta(d, cpu, mcpu) for _, d in cols])
    near = [("index build", "index_ms"), ("lookups", "lookup_ms"), ("pair confirmation", "confirm_ms")]
    for label, key in near:
        row(f"  filter: near-dup {label}, ms/record",
            [build_or_meta(d, lambda b, key=key: (b.get("near_duplicates") or {}).get(key), lambda m: None)
             for _, d in cols], "{:.3f}")
    row("  filter: candidate pairs checked per record",
        [build_or_meta(d, lambda b: (b.get("near_duplicates") or {}).get("pairs_checked"), lambda m: None)
         for _, d in cols], "{:.2f}")
    row("driver peak RSS MB (largest process)",
        [build_or_meta(d, lambda b: b["driver_peak_rss_mb"], lambda m: max(p["peak_rss_mb"] for p in m if "phase" in p))
         for _, d in cols], "{:,.1f}")
    folders = sorted({f for _, d in cols if d is not None
                      for f in (d["disk_mb"] if isinstance(d, dict) else d[-1]["disk_mb"])})
    for folder in folders:
        row(f"disk MB {folder}/", [build_or_meta(d, lambda b: b["disk_mb"].get(folder, 0),
                                                 lambda m: m[-1]["disk_mb"].get(folder, 0)) for _, d in cols],
            "{:,.1f}")
    row("disk MB work folder at its peak (du every 5 s)",
        [build_or_meta(d, lambda b: b.get("disk_peak_mb"), lambda m: None) for _, d in cols], "{:,.1f}")
    row("  ... audio/ + shards/ then", [build_or_meta(
        d, lambda b: "{:,.0f} + {:,.0f}".format(*((b.get("disk_peak") or {}).get("folders_mb", {}).get(f, 0)
                                                  for f in ("audio", "shards")))
        if b.get("disk_peak") else None, lambda m: None) for _, d in cols], "{}")
    row("input clips' format", [build_or_meta(d, lambda b: b.get("clip_format", "wav").upper(), lambda m: None)
                                for _, d in cols], "{}")
    row("distinct clips dropped as duplicates", [build_or_meta(d, lambda b: b.get("dropped_as_duplicates"),
                                                               lambda m: None) for _, d in cols])
    row("work folder / shards", [build_or_meta(d, lambda b: b.get("work_over_shards"), lambda m: None)
                                 for _, d in cols], "{:.2f}")
    when = [build_or_meta(d, lambda b: b.get("measured") or {}, lambda m: m[-1].get("measured") or {})
            for _, d in cols]
    row("measured at (UTC)", [w.get("utc") if isinstance(w, dict) else w for w in when], "{}")
    row("  ... load average (1 min) at its end", [w.get("load") if isinstance(w, dict) else w for w in when],
        "{:.1f}")


def bench_table(args, tmp: Path) -> list:
    """The issue's table: full builds at ``--sizes`` and the 2.5M-record metadata run, each
    measured once and saved in ``--results`` as soon as it is done, so a rerun measures only
    what is missing (each piece is one uninterrupted run: a resumed build would mix two
    processes' figures) and the pieces can take the shared lock one at a time."""
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else []
    if not args.no_run:
        for n in sizes:
            if not (args.results / f"build-{n}.json").exists():
                bench_build([n], tmp, clips=args.clips, crawl_repeats=args.crawl_repeats,
                            results_dir=args.results, clip_format=args.clip_format)
        if args.audioset_rows and not (args.results / f"metadata-{args.audioset_rows}.json").exists():
            bench_metadata(args, tmp)
    cols = table_columns(sizes, args.audioset_rows, args.results)
    print_scale_table(cols)
    return [{"column": h, "figures": d} for h, d in cols]


def bench_build(sizes: list[int], tmp: Path, keep: Path | None = None,
                clips: Path | None = None, crawl_repeats: int = 5,
                results_dir: Path | None = None, clip_format: str = "wav") -> list[dict]:
    """Full builds (``build --source local --inline``, every stage, the default keep policy) of
    N clips distinct by construction (benchmarks/distinct_clips.py), side by side: per-stage
    records/s, the driver's peak RSS (and after which stage it rose), disk per folder. The
    clips are generated once (into ``clips`` when given, kept for the next run) and hard-linked
    into each size's input. The crawl is also measured as the median of ``crawl_repeats``
    crawl-only builds net of its start-up (one sample is too short to read: docs/scale.md).
    With ``results_dir`` each size's figures are saved there as ``build-N.json`` (``table``
    reads them). ``clip_format`` is the pool's format (WAV or FLAC: the same samples)."""
    from driver_memory import print_table, run

    root = keep or tmp
    results = []
    for n in sizes:
        results.append(run(n, root, "crawl,fetch,transcode,caption,filter,shard", 1, inline=True,
                           clips=clips, crawl_repeats=crawl_repeats, clip_format=clip_format))
        results[-1]["measured"] = _when()
        print(json.dumps(results[-1]), flush=True)
        if results_dir:
            _save(results_dir / f"build-{n}.json", results[-1])
        if keep is None:
            subprocess.run(["rm", "-rf", str(root / f"out{n}"), str(root / f"in{n}-{clip_format}")],
                           check=True)
    print(f"  load average at the end: {os.getloadavg()}")
    print_table(results)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("crawl")
    c.add_argument("--rows", default=f"50000,500000,{FULL_UNBALANCED}")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--python", default=sys.executable, help="interpreter with laion_audio importable")
    c.add_argument("--json", type=Path, default=None)
    j = sub.add_parser("journal")
    j.add_argument("--base-rows", type=int, default=100_000)
    j.add_argument("--files", type=int, default=2000)
    j.add_argument("--json", type=Path, default=None)
    m = sub.add_parser("metadata")
    m.add_argument("--audioset-rows", type=int, default=FULL_UNBALANCED)
    m.add_argument("--other-rows", type=int, default=None, help="default: the paper's 633,526")
    m.add_argument("--json", type=Path, default=None)
    m.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    m.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    b = sub.add_parser("build")
    b.add_argument("--sizes", default="1000,8000,10000")
    b.add_argument("--json", type=Path, default=None)
    b.add_argument("--keep", type=Path, default=None, help="keep clips and work folders here")
    b.add_argument("--clips", type=Path, default=None,
                   help="generate the clips once into this folder (e.g. /work/wt/cache/clips)")
    b.add_argument("--crawl-repeats", type=int, default=5,
                   help="also measure the crawl as the median of this many crawl-only builds")
    b.add_argument("--results", type=Path, default=None, help="save each size's figures here (for table)")
    b.add_argument("--clip-format", choices=("wav", "flac"), default="wav",
                   help="the pool's format (16-bit PCM either way; FLAC is ~64%% of the bytes)")
    m.add_argument("--results", type=Path, default=None, help="save the figures here (for table)")
    t = sub.add_parser("table", help="builds at --sizes and the metadata run, side by side")
    t.add_argument("--sizes", default="10000,100000")
    t.add_argument("--audioset-rows", type=int, default=FULL_UNBALANCED,
                   help="the metadata run's AudioSet CSV rows (0: no metadata column)")
    t.add_argument("--other-rows", type=int, default=None, help="default: the paper's 633,526")
    t.add_argument("--results", type=Path, required=True,
                   help="folder of measured pieces: missing ones are measured and saved here")
    t.add_argument("--no-run", action="store_true", help="only print what --results holds")
    t.add_argument("--clips", type=Path, default=None, help="clip pool (as for build)")
    t.add_argument("--crawl-repeats", type=int, default=5)
    t.add_argument("--clip-format", choices=("wav", "flac"), default="wav", help="the pool's format (as for build)")
    t.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="laion-scale-") as tmp:
        if args.what == "crawl":
            res = bench_crawl([int(x) for x in args.rows.split(",")], args.repeats, Path(tmp), args.python)
        elif args.what == "journal":
            res = bench_journal(args.base_rows, args.files, Path(tmp))
        elif args.what == "metadata" and args.phase:
            return metadata_phase(args.phase, args.work, args)
        elif args.what == "build":
            res = bench_build([int(x) for x in args.sizes.split(",")], Path(tmp), args.keep, args.clips,
                              args.crawl_repeats, args.results, args.clip_format)
        elif args.what == "table":
            res = bench_table(args, Path(tmp))
        elif args.what == "metadata":
            res = bench_metadata(args, Path(tmp))
        if getattr(args, "json", None):
            args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
