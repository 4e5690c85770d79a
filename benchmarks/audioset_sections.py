"""AudioSet fetch: downloading only [0, end] of a video (yt-dlp download_ranges) vs the whole
track, against the replay server. Prints median bytes and seconds and their ratios.

    python benchmarks/audioset_sections.py [--video-seconds 300] [--repeats 3]

The window is a real eval row (``--BfvyPmVMo``, 20-30 s); the replay video is made
``--video-seconds`` long, like a typical few-minute upload.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crawlers.audioset import AudioSetSource  # noqa: E402
from crawlers.replay import serve  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video-seconds", type=float, default=300.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with serve(plugins=["youtube"]) as (app, base), tempfile.TemporaryDirectory() as tmp:
        item = app.catalogue("youtube").items["--BfvyPmVMo"]
        item["seconds"] = args.video_seconds
        results = {}
        for mode in ("off", "prefix"):
            source = AudioSetSource(csv=[f"{base}/audioset/eval_segments.csv"],
                                    labels=f"{base}/audioset/class_labels_indices.csv",
                                    youtube_base=f"{base}/youtube/watch?v=", sections=mode,
                                    cache_dir=Path(tmp) / "c")
            rec = next(r for r in source.crawl({}) if r.original_data["youtube_id"] == "--BfvyPmVMo")
            source.fetch(rec, Path(tmp) / "warm")           # media encoded once, imports warm
            sizes, times = [], []
            for i in range(args.repeats):
                t = time.perf_counter()
                path = source.fetch(rec, Path(tmp) / f"{mode}{i}")
                times.append(time.perf_counter() - t)
                sizes.append(path.stat().st_size)
            results[mode] = (statistics.median(sizes), statistics.median(times))
            print(f"{mode:>6}: median {results[mode][0]:>9,.0f} bytes saved  {results[mode][1]:.3f} s")
        full, prefix = results["off"], results["prefix"]
        print(f"prefix/full: bytes saved {prefix[0] / full[0]:.3f}x, time {prefix[1] / full[1]:.3f}x "
              f"(window 20-30 s of a {args.video_seconds:.0f} s video)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
