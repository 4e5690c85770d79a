"""Keyword-to-caption benchmarks (run by hand, not in CI).

    python benchmarks/k2c.py --model /tmp/k2c_model [--n 64] [--repeats 3] [--threads 1]

1. Batched generation (``Captioner.generate``: length-sorted batches of ``--batch-size``) vs
   keytotext's one ``generate`` call per keyword set, on the same model and the same real
   AudioSet label sets (balanced_train_segments.csv). Runs alternate; medians and the ratio print.
2. Distinct/total keyword-set ratio on the real AudioSet balanced and eval CSVs: the share of
   generations the cache leaves to do (ordered label lists as the stage keys them, and as sets).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laion_audio.captions.keywords import AudioSetLabels, normalise_keywords, read_segments  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def distinct_ratio(path: Path, labels: AudioSetLabels) -> dict:
    segs = list(read_segments(path))
    ordered = {normalise_keywords(labels.label_names(s.mids)) for s in segs}
    unordered = {frozenset(s.mids) for s in segs}
    return {"segments": len(segs), "distinct_ordered": len(ordered),
            "distinct_ratio": round(len(ordered) / len(segs), 4),
            "distinct_as_sets": len(unordered), "distinct_ratio_as_sets": round(len(unordered) / len(segs), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="captioner folder (skip the speed benchmark when absent)")
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = Path(args.data)
    labels = AudioSetLabels.from_dir(data / "audioset")
    report: dict = {"load_average_start": os.getloadavg()}
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        report[name] = distinct_ratio(data / "audioset" / name, labels)

    if args.model:
        import torch

        from laion_audio.captions.k2c import Captioner

        torch.set_num_threads(args.threads)
        cap = Captioner.load(args.model, device="cpu", batch_size=args.batch_size)
        segs = list(read_segments(data / "audioset/balanced_train_segments.csv"))
        sets = [labels.label_names(s.mids) for s in random.Random(0).sample(segs, args.n)]
        cap.generate(sets[:4])                       # warm-up (lazy init, allocator)
        batched, single = [], []
        for _ in range(args.repeats):
            t = time.perf_counter(); a = cap.generate(sets); batched.append(time.perf_counter() - t)
            t = time.perf_counter(); b = cap.generate_one_per_call(sets); single.append(time.perf_counter() - t)
        mb, ms = statistics.median(batched), statistics.median(single)
        report["generation"] = {
            "model": args.model, "keyword_sets": args.n, "batch_size": args.batch_size,
            "threads": args.threads, "batched_s": [round(x, 2) for x in batched],
            "one_per_call_s": [round(x, 2) for x in single], "median_batched_s": round(mb, 3),
            "median_one_per_call_s": round(ms, 3), "speedup": round(ms / mb, 2),
            "captions_per_s_batched": round(args.n / mb, 1),
            "same_captions": sum(x == y for x, y in zip(a, b)),
        }
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
