"""Reading a published manifest: memory must not grow with the number of rows.

Writes an ``Epidemic_all_debiased.csv``-shaped file of N and 10*N rows and, each in a fresh
process, turns every row into a Record two ways:

* ``list``: ``csv.DictReader`` into a list, then records (what a one-off script does);
* ``ours``: :class:`crawlers.manifest.ManifestSource` ``crawl`` (pyarrow streaming blocks).

Printed per variant and size: rows/s and peak RSS growth (MiB) over the process's baseline;
then the ratios 10N/N of memory growth (flat = about 1) and ours/list of rows/s.

    python benchmarks/manifest_read.py --rows 100000
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import csv, json, resource, sys, time
sys.path.insert(0, {repo!r})
from crawlers.manifest import ManifestSource
from laion_audio.records import Record
path, variant = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
n = 0
if variant == "ours":
    for rec in ManifestSource(files=[path]).crawl({{}}):
        n += 1
else:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    recs = [Record(source="epidemic", source_id=r["epidemic_id"], url=r["url"],
                   texts=[r["caption1"], r["caption2"]]) for r in rows]
    n = len(recs)
dt = time.perf_counter() - t
print(json.dumps({{"rows": n, "seconds": dt,
                  "rss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}}))
"""


def write(path: Path, n: int) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption1", "caption2", "caption_t5", "epidemic_id"])
        for i in range(n):
            w.writerow([f"https://e.example/ES_{i}.mp3", f"Clip number {i}",
                        "the sounds of wind, rain, and thunder.", "A person hears rain.", i])


def run(path: Path, variant: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(path), variant],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.rows, 10 * args.rows):
            path = Path(tmp) / f"Epidemic_all_debiased_{n}.csv"
            write(path, n)
            for variant in ("list", "ours"):
                r = run(path, variant)
                results[(variant, n)] = r
                print(f"{variant:>5} {n:>9} rows: {r['rows'] / r['seconds']:>9.0f} rows/s, "
                      f"peak RSS +{r['rss_mib']:.0f} MiB")
    small, big = args.rows, 10 * args.rows
    for variant in ("list", "ours"):
        ratio = results[(variant, big)]["rss_mib"] / max(results[(variant, small)]["rss_mib"], 1e-9)
        print(f"{variant}: memory growth at {big} rows / at {small} rows = {ratio:.2f}")
    speed = lambda v: results[(v, big)]["rows"] / results[(v, big)]["seconds"]  # noqa: E731
    print(f"rows/s ours / list at {big} rows = {speed('ours') / speed('list'):.2f}")


if __name__ == "__main__":
    main()
