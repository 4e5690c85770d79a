"""Transcode throughput: LAION's ffmpeg-per-file loop vs our in-process stage.

The same input files go through

* ``ffmpeg``: one ``ffmpeg -nostdin -y -i IN -ac 1 -ar 48000 OUT.flac`` process per file
  (LAION's method), sequentially (1 worker) and two at a time (2 workers);
* ``ours``: :func:`laion_audio.transcode.transcode_batch` in a ``ProcessPoolExecutor`` with 1
  and 2 worker processes, over batches of records. The pool is started and warmed (imports
  done) before the clock starts, as a long-running pipeline's workers would be.

Printed: audio-seconds per wall-second for each variant (median over ``--repeats`` runs,
variants interleaved within each repeat so machine noise hits all of them), and the ratios
ours/ffmpeg at 1 worker, ours at 2 workers / ours at 1 worker. CPU-seconds per audio-minute are
printed too: on a busy shared machine they show the work each method does even when a second
core is not actually free for the 2-worker runs (check the printed load average). Two file
sets by default:
``all`` (every Debian sound file: 20 long music tracks dominate the audio-seconds) and
``clips`` (files under 30 s: sound effects, the shape of most LAION-Audio-630K sources).

    python benchmarks/transcode.py                      # Debian sound files
    python benchmarks/transcode.py --copies 3           # repeat the list: more audio-minutes
    python benchmarks/transcode.py --input DIR --sets all
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from laion_audio.records import Record, Status  # noqa: E402
from laion_audio.transcode import TranscodeOptions, transcode_batch  # noqa: E402

DEBIAN_SOUND_DIRS = [Path("/usr/share/sounds"), Path("/usr/share/games/colobot")]
AUDIO_EXTS = {".wav", ".ogg", ".oga", ".flac", ".mp3", ".opus", ".m4a", ".webm", ".aiff"}


def find_inputs(dirs: list[Path]) -> list[tuple[Path, float]]:
    files = sorted({p for d in dirs if d.is_dir() for p in d.rglob("*")
                    if p.suffix.lower() in AUDIO_EXTS and p.is_file()})
    out = []
    for p in files:
        try:
            out.append((p, sf.info(str(p)).duration))
        except Exception:  # noqa: BLE001 - the benchmark only times files both sides can read
            pass
    return out


# ----------------------------------------------------------------------------- ffmpeg loop
def _ffmpeg_one(job: tuple[str, str]) -> int:
    src, dst = job
    return subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", src,
                           "-ac", "1", "-ar", "48000", dst],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ffmpeg(files: list[Path], out: Path, workers: int) -> tuple[int, float]:
    """Returns (failed files, CPU seconds the ffmpeg processes used)."""
    jobs = [(str(p), str(out / f"{i}.flac")) for i, p in enumerate(files)]
    cpu = _children_cpu()
    if workers == 1:
        codes = [_ffmpeg_one(j) for j in jobs]
    else:  # threads only wait on the child processes: `workers` ffmpeg processes at a time
        with ThreadPoolExecutor(workers) as pool:
            codes = list(pool.map(_ffmpeg_one, jobs))
    return sum(1 for c in codes if c != 0), _children_cpu() - cpu


# ----------------------------------------------------------------------------- our stage
def _warm(_: object = None) -> int:
    return os.getpid()


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def parallel_headroom(pools: dict[int, ProcessPoolExecutor], n: int = 2_000_000) -> float:
    """Control: throughput of a pure-Python CPU loop on 2 workers / on 1 worker, right now.

    About 2.0 on an idle 2-core machine; about 1.0 when other jobs already use a core. The
    2-worker ratios of both methods can only be as good as this."""
    rates = {}
    for w in (1, 2):
        start = time.perf_counter()
        list(pools[w].map(_burn, [n] * 6))
        rates[w] = 6 / (time.perf_counter() - start)
    return rates[2] / rates[1]


def _ours_batch(args) -> tuple[int, float]:
    """Runs in a worker: (failed records, CPU seconds this batch took)."""
    records, out, options = args
    cpu = time.process_time()
    done = transcode_batch(records, out, options)
    return sum(1 for r in done if r.status != Status.TRANSCODED), time.process_time() - cpu


def run_ours(pool: ProcessPoolExecutor, files: list[Path], out: Path, batch: int,
             options: TranscodeOptions) -> tuple[int, float]:
    records = [Record("bench", str(i), audio_path=str(p), status=Status.FETCHED)
               for i, p in enumerate(files)]
    # Longest files first so no worker is left with one long track at the end.
    records.sort(key=lambda r: -os.path.getsize(r.audio_path))
    batches = [(records[i:i + batch], str(out), options) for i in range(0, len(records), batch)]
    results = list(pool.map(_ours_batch, batches))
    return sum(f for f, _ in results), sum(c for _, c in results)


def run_ray(executor, files: list[Path], out: Path, batch: int, options: TranscodeOptions,
            workers: int) -> tuple[int, float]:
    """The build pipeline's own path: ``pipelines.executor`` over Ray tasks, batched by input
    bytes as the build does (``--batch`` is only for ``ours``). One Ray instance
    with 2 CPUs serves both variants: a task asks for 2 CPUs (1 at a time) or 1 (2 at a time)."""
    records = [Record("bench", str(i), audio_path=str(p), status=Status.FETCHED)
               for i, p in enumerate(files)]
    records.sort(key=lambda r: -os.path.getsize(r.audio_path))
    # the pipeline's own batching: by input bytes (see pipelines.build.transcode)
    from pipelines.build import TRANSCODE_BATCH_BYTES, TRANSCODE_BATCH_RECORDS_PER_UNIT
    from pipelines.executor import file_size, sized_batches

    batches = sized_batches(records, file_size(lambda r: r.audio_path),
                            max_count=TRANSCODE_BATCH_RECORDS_PER_UNIT * 16,
                            target_bytes=TRANSCODE_BATCH_BYTES, min_batches=4 * workers)
    failed = []
    executor.map_batches("laion_audio.transcode:transcode_batch", batches,
                         kwargs={"out_dir": str(out), "options": options},
                         on_result=lambda _i, o: failed.extend(r for r in o if r.status != Status.TRANSCODED),
                         total=len(records), desc=f"ray x{workers}", num_cpus=2.0 / workers)
    return len(failed), float("nan")   # CPU time of Ray workers is not visible from here


# ----------------------------------------------------------------------------- driver
def bench_set(name: str, files: list[Path], audio_seconds: float, repeats: int, batch: int,
              options: TranscodeOptions, pools: dict[int, ProcessPoolExecutor],
              executor=None) -> dict:
    print(f"\n== {name}: {len(files)} files, {audio_seconds / 60:.1f} audio-minutes, "
          f"{repeats} repeats ==", flush=True)
    variants = [("ffmpeg", 1), ("ours", 1), ("ffmpeg", 2), ("ours", 2)]
    if executor is not None:
        variants += [("ray", 1), ("ray", 2)]
    speeds: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    cpu_per_audio: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    for rep in range(repeats):
        order = variants[rep % 2 * 2:] + variants[:rep % 2 * 2]   # rotate who goes first
        for kind, workers in order:
            out = Path(tempfile.mkdtemp(prefix=f"bench-{kind}{workers}-"))
            try:
                start = time.perf_counter()
                if kind == "ffmpeg":
                    failed, cpu = run_ffmpeg(files, out, workers)
                elif kind == "ray":
                    failed, cpu = run_ray(executor, files, out, batch, options, workers)
                else:
                    failed, cpu = run_ours(pools[workers], files, out, batch, options)
                wall = time.perf_counter() - start
            finally:
                shutil.rmtree(out, ignore_errors=True)
            speeds[(kind, workers)].append(audio_seconds / wall)
            cpu_per_audio[(kind, workers)].append(cpu / audio_seconds * 60)
            print(f"  repeat {rep + 1} {kind:6s} x{workers}: {wall:7.2f} s wall, "
                  f"{audio_seconds / wall:8.1f} audio-s/s, {cpu / audio_seconds * 60:6.3f} "
                  f"CPU-s per audio-minute, {failed} failed", flush=True)
    med = {v: statistics.median(s) for v, s in speeds.items()}
    print(f"  median audio-seconds per wall-second ({name}):")
    for (kind, workers), value in med.items():
        cpu = statistics.median(cpu_per_audio[(kind, workers)])
        print(f"    {kind:6s} {workers} worker(s): {value:8.1f}   ({cpu:.3f} CPU-s per audio-minute)")
    result = {
        "ours/ffmpeg 1 worker": med[("ours", 1)] / med[("ffmpeg", 1)],
        "ours/ffmpeg 2 workers": med[("ours", 2)] / med[("ffmpeg", 2)],
        "ours 2 workers / ours 1 worker": med[("ours", 2)] / med[("ours", 1)],
        "ffmpeg 2 workers / ffmpeg 1 worker": med[("ffmpeg", 2)] / med[("ffmpeg", 1)],
        **({"ray/ffmpeg 1 worker": med[("ray", 1)] / med[("ffmpeg", 1)],
            "ray 2 workers / ray 1 worker": med[("ray", 2)] / med[("ray", 1)]}
           if executor is not None else {}),
        "CPU per audio-second, ffmpeg/ours (1 worker)": (
            statistics.median(cpu_per_audio[("ffmpeg", 1)])
            / statistics.median(cpu_per_audio[("ours", 1)])),
    }
    for label, ratio in result.items():
        print(f"    {label:44s} {ratio:5.2f}x")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, action="append",
                    help="folder of audio files (default: the Debian sound folders)")
    ap.add_argument("--copies", type=int, default=1,
                    help="repeat the file list this many times (more audio-minutes)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    ap.add_argument("--batch", type=int, default=4, help="records per transcode_batch call")
    ap.add_argument("--sets", nargs="+", default=["all", "clips"], choices=["all", "clips"],
                    help="all files, and/or only files under --clip-seconds")
    ap.add_argument("--clip-seconds", type=float, default=30.0)
    ap.add_argument("--ray", action="store_true",
                    help="also run the stage through the build pipeline's Ray executor")
    args = ap.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed: no baseline to compare with", file=sys.stderr)
        return 2
    inputs = find_inputs(args.input or DEBIAN_SOUND_DIRS)
    if not inputs:
        print("no audio files found (install the Debian sound packages or pass --input)",
              file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    options = TranscodeOptions()
    pools = {w: ProcessPoolExecutor(w) for w in (1, 2)}
    executor = None
    if args.ray:
        from pipelines.executor import Executor

        executor = Executor(workers=2)
        executor.start()
    try:
        for w, pool in pools.items():   # start and warm the workers before any clock runs
            list(pool.map(_warm, range(w * 2)))
            list(pool.map(_ours_batch, [([], tempfile.gettempdir(), options)] * w))
        print(f"parallel headroom (CPU-loop control, 2 workers / 1 worker): "
              f"{parallel_headroom(pools):.2f}x", flush=True)
        for name in args.sets:
            chosen = [(p, d) for p, d in inputs if name == "all" or d < args.clip_seconds]
            files = [p for p, _ in chosen] * args.copies
            seconds = sum(d for _, d in chosen) * args.copies
            bench_set(name, files, seconds, args.repeats, args.batch, options, pools, executor)
            print(f"  parallel headroom now: {parallel_headroom(pools):.2f}x", flush=True)
    finally:
        for pool in pools.values():
            pool.shutdown()
        if executor is not None:
            executor.stop()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
