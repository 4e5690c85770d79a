"""Corpus scale: the metadata path at 50k / 500k / 2,041,789 rows and small full builds.

    python benchmarks/scale.py crawl [--rows 50000,500000,2041789]
    python benchmarks/scale.py journal [--files 2000]
    python benchmarks/scale.py metadata [--audioset-rows 2041789 --other-rows 630000]
    python benchmarks/scale.py build [--sizes 10000]

``crawl`` runs ``laion-audio build --source audioset --stages crawl --inline`` (the CLI, one
process per size) on AudioSet-format segment CSVs made from the real rows of
``../shared/data/audioset`` (replicated with distinct YouTube ids), and prints wall time, the
driver's peak RSS, and the ratios against the smallest size. ``journal`` times one 16-record
ledger write as the number of batches already written grows. ``metadata`` is the 2.5M-record
run: the AudioSet CSV plus ``--other-rows`` records of the other sources written through the
ledger, the id filter's lookups and shard planning. ``build`` is a full offline build of
distinct replay items (``laion-audio replay --items N``) at each size.

Figures are medians of ``--repeats`` runs on whatever machine runs this; the sizes are printed
side by side so the ratios, not the absolute numbers, carry the claim.
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
    is the steadier figure on a shared machine."""
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("crawl")
    c.add_argument("--rows", default=f"50000,500000,{FULL_UNBALANCED}")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--python", default=sys.executable, help="interpreter with laion_audio importable")
    c.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="laion-scale-") as tmp:
        if args.what == "crawl":
            res = bench_crawl([int(x) for x in args.rows.split(",")], args.repeats, Path(tmp), args.python)
        if getattr(args, "json", None):
            args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
