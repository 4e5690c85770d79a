"""Driver peak RSS, per-stage seconds per record and disk per folder of `build` at two corpus sizes.

Generates N clips distinct by construction (benchmarks/distinct_clips.py; clip i is the same at
every size, so the clips are made once and hard-linked), runs ``laion-audio build --source
local`` on them in a child process (local Ray with ``--workers`` CPUs, so the driver is one
process; ``--inline`` runs the stages in the driver itself) and reads the driver's own peak RSS
(``VmHWM`` of that process: Ray workers are not counted), the peak after each stage and the CPU
seconds of each stage from the build's summary. Printed side by side: driver peak RSS, wall and
CPU ms per record of each stage, work-folder bytes per folder and the work folder / shards ratio,
with the ratio largest/smallest. ``benchmarks/scale.py build`` runs this at 1k/8k/10k; the
figures are in docs/scale.md.

The pool is 16-bit WAV by default; ``--clip-format flac`` keeps the same samples in ~64% of
the bytes (what lets a large pool sit beside its build), and ``--fill-pool START:STOP`` only
writes the missing clips of a range, resumably (run it in pieces or processes, ``--part K/M``).

    python benchmarks/driver_memory.py                       # 1000 vs 8000 clips
    python benchmarks/driver_memory.py --sizes 500,2000 --stages crawl,fetch,transcode,caption
    python benchmarks/driver_memory.py --clips /work/wt/cache/clips --clip-format flac \
        --fill-pool 10000:100000 --part 0/2                  # half of the clips 10k..100k
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


#: pool formats: the same 16-bit samples either way; FLAC is ~64% of WAV's bytes, which is what
#: lets a 100k-clip pool sit beside its build on this machine's disk
FORMATS = ("wav", "flac")


def pool_folder(clips: Path, fmt: str = "wav") -> Path:
    """The pool of one clip version and format under ``clips`` (WAV keeps its old name)."""
    from distinct_clips import VERSION

    return clips / (f"v{VERSION}" if fmt == "wav" else f"v{VERSION}-{fmt}")


def clip_name(i: int, fmt: str = "wav") -> str:
    return f"clip{i:06d}.{fmt}"


def write_clip(dest: Path, i: int, seed: int = 0, wav: Path | None = None) -> None:
    """Clip ``i`` as 16-bit PCM at 48 kHz, every seventh one stereo, in ``dest``'s format,
    written atomically (a killed generation leaves no half file). With ``wav``, the samples
    are read from that WAV file (the pool's earlier format) instead of being generated."""
    from distinct_clips import SR, distinct_clip

    from laion_audio import atomic

    if wav is not None:
        x, sr = sf.read(wav, dtype="int16")     # int16 in, int16 out: the same samples
        assert sr == SR, (wav, sr)
    else:
        x = distinct_clip(i, seed=seed)
        if i % 7 == 3:      # a slightly delayed copy in the right channel
            x = np.stack([x, np.roll(x, 7 + i % 40)], axis=1)
        if dest.suffix != ".wav":   # libsndfile rounds floats to 16 bits differently per format
            buf = io.BytesIO()      # (FLAC: off by one in half the samples): WAV's rounding
            sf.write(buf, x, SR, subtype="PCM_16", format="WAV")
            buf.seek(0)
            x, _ = sf.read(buf, dtype="int16")
    with atomic.atomic_path(dest) as tmp:
        sf.write(tmp, x, SR, subtype="PCM_16", format=dest.suffix[1:].upper())


def fill_pool(pool: Path, start: int, stop: int, *, part: int = 0, parts: int = 1, seed: int = 0,
              from_wav: Path | None = None) -> int:
    """Write clips ``start..stop-1`` (those with ``i % parts == part``) missing from ``pool``,
    taking the samples from ``from_wav``'s WAV of the same clip when it has one; resumable
    (clips already there are skipped). Returns clips written."""
    fmt = pool.name.rsplit("-", 1)[1] if "-" in pool.name else "wav"
    pool.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(start, stop):
        if i % parts != part or (pool / clip_name(i, fmt)).exists():
            continue
        wav = from_wav / clip_name(i) if from_wav else None
        write_clip(pool / clip_name(i, fmt), i, seed, wav if wav and wav.exists() else None)
        written += 1
    return written


def make_corpus(folder: Path, n: int, seed: int = 0, pool: Path | None = None,
                fmt: str = "wav") -> None:
    """``n`` clips distinct by construction (benchmarks/distinct_clips.py: 0.5-3 s, one to three
    segments of six kinds), 16-bit PCM at 48 kHz in ``fmt`` (WAV or FLAC), every seventh one
    stereo. Clip ``i`` is the same at every size, so with ``pool`` each clip is generated once
    and hard-linked."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = clip_name(i, fmt)
        src = (pool or folder) / name
        if not src.exists():
            write_clip(src, i, seed)
        if pool is not None and not (folder / name).exists():
            os.link(src, folder / name)


def child(argv: list[str]) -> int:
    """Run the CLI in this process and report its own peak RSS (``VmHWM``) on the last line."""
    from laion_audio.cli import main

    rc = main(argv)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    print(json.dumps({"rc": rc, "driver_peak_rss_mb": round(hwm / 1024, 1)}))
    return 0


def _build(corpus: Path, out: Path, stages: str, workers: int, inline: bool) -> tuple[float, dict, dict]:
    """One ``laion-audio build --source local`` in a child process: (wall seconds, the child's
    last JSON line, the build's summary)."""
    cmd = [sys.executable, __file__, "--child", "build", "--source", "local", "--input",
           str(corpus), "--out", str(out), "--workers", str(workers), "--stages", stages,
           "--skip-eval-filter"] + (["--inline"] if inline else [])
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    stop, peak = threading.Event(), {}
    sampler = threading.Thread(target=_sample_disk, args=(out, stop, peak), daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not last or json.loads(last[-1])["rc"] not in (0, None):
        raise SystemExit(f"build of {corpus} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, {**json.loads(last[-1]), "disk_peak": peak}, \
        json.loads((out / "stats" / "summary.json").read_text())


def _sample_disk(out: Path, stop: threading.Event, peak: dict, every: float = 5.0) -> None:
    """The work folder's peak bytes during the build, sampled with ``du`` every ``every``
    seconds (in this process, not the build's: its CPU figures stay its own). The summary's
    disk figures are the end state; the peak is where the keep policy's timing shows (the
    input clips are hard links into the pool, counted nowhere)."""
    t0 = time.perf_counter()
    samples = 0
    while not stop.wait(every):
        folders = sorted(p for p in out.glob("*") if p.is_dir()) if out.is_dir() else []
        if not folders:
            continue
        du = subprocess.run(["du", "-s", "-B1", *map(str, folders)], capture_output=True, text=True)
        sizes = {Path(path).name: int(n) for n, path in
                 (line.split("\t", 1) for line in du.stdout.splitlines())}
        samples += 1
        total = sum(sizes.values())
        if total > peak.get("mb", 0) * 1e6:
            peak.update(mb=round(total / 1e6, 1), at_s=round(time.perf_counter() - t0, 1),
                        folders_mb={k: round(v / 1e6, 1) for k, v in sizes.items()})
        peak["samples"], peak["every_s"] = samples, every


def crawl_cpu_seconds(corpus: Path, root: Path, repeats: int) -> list[float]:
    """CPU seconds of ``repeats`` crawl-only builds of ``corpus``, each a fresh process and
    work folder. The crawl of 1,000 clips is ~0.15 s of CPU: one sample of it moves by up to
    2x with the load of a shared machine, so the in-build figure alone cannot carry a 1.3x
    claim (docs/scale.md, "The crawl's figure")."""
    cpu = []
    for r in range(repeats):
        out = root / f"crawl-{corpus.name}-{r}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        _, _, summary = _build(corpus, out, "crawl", 1, True)
        cpu.append(sum(st.get("driver_cpu_seconds") or 0.0 for st in summary["stages"]))
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return cpu


def run(size: int, root: Path, stages: str, workers: int, inline: bool = False,
        clips: Path | None = None, crawl_repeats: int = 0, clip_format: str = "wav") -> dict:
    """One build of ``size`` clips under ``root``; ``clips`` is the pool the clips are made in
    once (default ``root/clips``; a folder under /work/wt/cache/ makes reruns cheap). A work
    folder left by an earlier run is removed first: a build on it would do nothing. With
    ``crawl_repeats``, the crawl is also measured as the median of that many crawl-only
    builds, less the same median on 10 of the clips (the stage's fixed start-up: first
    imports, the ledger's first write), so its per-record figure is the marginal cost.
    ``clip_format`` is the pool's file format (the fetch+transcode figure decodes it)."""
    corpus, out = root / f"in{size}-{clip_format}", root / f"out{size}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    pool = pool_folder(clips, clip_format) if clips else root / f"clips-{clip_format}"
    t0 = time.perf_counter()
    make_corpus(corpus, size, pool=pool, fmt=clip_format)
    gen = time.perf_counter() - t0
    wall, result, summary = _build(corpus, out, stages, workers, inline)
    per_stage, cpu, cpu_sys, rss_after, near = {}, {}, {}, {}, {}
    for st in summary["stages"]:
        name = st["stage"].split(":")[0]
        if name == "filter":    # where the filter's time goes (its near-duplicate search)
            near = (st.get("report") or {}).get("near_duplicates") or {}
        if st.get("fused"):     # one task ran the fused stages: count its time once, by its tag
            if name != "transcode":
                continue
            name = st["fused"].replace("_", "+")
        per_stage[name] = per_stage.get(name, 0.0) + st["seconds"]
        cpu[name] = st.get("driver_cpu_seconds") or 0.0     # the group's: once per group
        cpu_sys[name] = st.get("driver_cpu_system_seconds") or 0.0
        rss_after[name] = st.get("driver_peak_rss_mb_so_far")
    disk = summary.get("disk_bytes", {})
    shards = disk.get("shards", 0)
    work_total = sum(disk.values())
    dropped = sum(v for st in summary["stages"] for k, v in st.get("failures", {}).items()
                  if k.startswith("dropped:duplicate"))
    out_row = {"size": size, "generate_s": round(gen, 1), "wall_s": round(wall, 1),
            "driver_peak_rss_mb": result["driver_peak_rss_mb"],
            "disk_peak_mb": result.get("disk_peak", {}).get("mb"), "disk_peak": result.get("disk_peak"),
            "ms_per_record": {k: round(1000 * v / size, 2) for k, v in per_stage.items()},
            "cpu_ms_per_record": {k: round(1000 * v / size, 2) for k, v in cpu.items()},
            "cpu_system_ms_per_record": {k: round(1000 * v / size, 2) for k, v in cpu_sys.items()},
            "peak_rss_mb_after": rss_after,
            "disk_mb": {k: round(v / 1e6, 2) for k, v in disk.items()},
            "work_over_shards": round(work_total / shards, 2) if shards else None,
            "dropped_as_duplicates": dropped, "by_status": summary["by_status"],
            "clip_format": clip_format,
            # per record: ms of each part, and counts
            "near_duplicates": {(k[:-2] + "_ms" if k.endswith("_s") else k): round(
                (1000 if k.endswith("_s") else 1) * v / size, 3) for k, v in near.items()}}
    if crawl_repeats:
        tiny = root / f"in10-{clip_format}"
        make_corpus(tiny, 10, pool=pool, fmt=clip_format)
        fixed = crawl_cpu_seconds(tiny, root, crawl_repeats)
        total = crawl_cpu_seconds(corpus, root, crawl_repeats)
        med, med_fixed = statistics.median(total), statistics.median(fixed)
        out_row["crawl_repeated"] = {
            "repeats": crawl_repeats, "cpu_s": [round(c, 3) for c in total],
            "fixed_cpu_s_at_10": [round(c, 3) for c in fixed],
            "cpu_ms_per_record": round(1000 * med / size, 3),
            "net_cpu_ms_per_record": round(1000 * (med - med_fixed) / (size - 10), 3),
            # the least-disturbed sample (timeit's rule: noise only ever adds time)
            "net_cpu_ms_per_record_min": round(1000 * (min(total) - min(fixed)) / (size - 10), 3)}
    return out_row


def print_table(results: list[dict]) -> None:
    """Sizes side by side; the last column is the largest size over the smallest."""
    small, large = results[0], results[-1]

    def row(label, values, ratio=True):
        a, b = values[0], values[-1]
        tail = f"{b / a:>9.2f}x" if ratio and isinstance(a, (int, float)) and a else ""
        print(f"  {label:<44}" + "".join(f"{v if v is not None else '-':>12}" for v in values) + tail)

    print(f"  {'records':<44}" + "".join(f"{r['size']:>12,}" for r in results) + f"{'ratio':>10}")
    row("driver peak RSS MB", [r["driver_peak_rss_mb"] for r in results])
    for stage in small["ms_per_record"]:
        row(f"ms/record {stage}", [r["ms_per_record"].get(stage) for r in results])
    for stage in small.get("cpu_ms_per_record", {}):
        row(f"CPU ms/record {stage}", [r["cpu_ms_per_record"].get(stage) for r in results])
        row("  ... of which in the kernel", [r.get("cpu_system_ms_per_record", {}).get(stage)
                                           for r in results])
    if all("crawl_repeated" in r for r in results):
        k = small["crawl_repeated"]["repeats"]
        row(f"CPU ms/record crawl, median of {k} crawl-only", [r["crawl_repeated"]["cpu_ms_per_record"] for r in results])
        row("  ... less start-up (median at 10 clips)", [r["crawl_repeated"]["net_cpu_ms_per_record"] for r in results])
        row("  ... least of the samples, less start-up", [r["crawl_repeated"]["net_cpu_ms_per_record_min"]
                                                          for r in results])
    for stage in small["ms_per_record"]:
        row(f"records/s {stage}", [round(1000 / r["ms_per_record"][stage]) if r["ms_per_record"].get(stage)
                                   else None for r in results], ratio=False)
    for stage in small.get("peak_rss_mb_after", {}):
        row(f"peak RSS MB after {stage}", [r["peak_rss_mb_after"].get(stage) for r in results])
    row("wall s (build)", [r["wall_s"] for r in results])
    row("dropped as duplicates", [r["dropped_as_duplicates"] for r in results], ratio=False)
    row("work folder / shards", [r["work_over_shards"] for r in results], ratio=False)
    row("work folder MB at its peak (du every 5 s)", [r.get("disk_peak_mb") for r in results])
    for folder in large["disk_mb"]:
        row(f"disk MB {folder}/", [r["disk_mb"].get(folder, 0) for r in results], ratio=False)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,8000")
    ap.add_argument("--stages", default="crawl,fetch,transcode,caption,filter,shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--inline", action="store_true",
                    help="no Ray: the driver also does the work (its RSS then includes decoding), "
                         "immune to other people's Ray on a shared machine")
    ap.add_argument("--keep", help="keep the work folders here")
    ap.add_argument("--clips", type=Path, default=None, help="generate the clips once into this pool")
    ap.add_argument("--clip-format", choices=FORMATS, default="wav",
                    help="the pool's file format (16-bit PCM either way; FLAC is ~64%% of the bytes)")
    ap.add_argument("--fill-pool", metavar="START:STOP", default=None,
                    help="only write clips START..STOP-1 missing from the --clips pool (resumable, "
                         "no build); with --part K/M this process writes those with i %% M == K")
    ap.add_argument("--part", default="0/1")
    ap.add_argument("--from-wav", action="store_true",
                    help="with --fill-pool: take each clip's samples from the WAV pool when it has it")
    ap.add_argument("--crawl-repeats", type=int, default=0,
                    help="also measure the crawl as the median of this many crawl-only builds")
    args = ap.parse_args()
    if args.fill_pool:
        if args.clips is None:
            ap.error("--fill-pool needs --clips")
        start, stop = (int(x) for x in args.fill_pool.split(":"))
        part, parts = (int(x) for x in args.part.split("/"))
        pool = pool_folder(args.clips, args.clip_format)
        n = fill_pool(pool, start, stop, part=part, parts=parts,
                      from_wav=pool_folder(args.clips) if args.from_wav else None)
        print(f"{n} clips written into {pool}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="driver-mem-") as tmp:
        root = Path(args.keep or tmp)
        results = []
        for n in sizes:
            results.append(run(n, root, args.stages, args.workers, args.inline, args.clips, args.crawl_repeats,
                               args.clip_format))
            print(json.dumps(results[-1]), flush=True)
    print(f"load average at the end: {os.getloadavg()}  (shared machine: figures are noisy)")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
