"""Keyword-to-caption benchmarks (run by hand, not in CI).

    python benchmarks/k2c.py --model /tmp/k2c_model [--n 64] [--repeats 3] [--threads 1 2]

1. Generation, three ways on the same model and the same real AudioSet label sets
   (balanced_train_segments.csv), at each ``--threads`` count: our batched beam search
   (``Captioner.generate``: length-sorted batches of ``--batch-size``, laion_audio/captions/beam.py),
   HF ``model.generate`` on the same batches, and keytotext's way, one HF ``generate`` call per
   keyword set (the baseline). Runs alternate; medians, ratios to the baseline and the number of
   captions identical to the baseline's and to HF-batched's print, per ``--decodings`` entry
   (the constrained and fused decodings run their logits processor in all three ways).
2. ``--job-rows N``: the ``audioset-captions`` job end to end on the first N rows of the real
   eval_segments.csv with the model (its default decoding: the last its quality report passed
   with, else rerank + keyword boost 2), cold cache and then
   a forced rerun on the warm cache, in captions (rows) per second, against keytotext's way on
   the same rows with the same decoding: one HF ``generate`` per segment, no cache
   (``--baseline-rows`` of them; a rate is a rate).
3. Distinct/total keyword-set ratio on the real AudioSet balanced and eval CSVs: the share of
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

from laion_audio.captions.gate import FUSED_DECODING  # noqa: E402
from laion_audio.captions.keywords import AudioSetLabels, normalise_keywords, read_segments  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: The decodings ``--decodings`` names (GenerationParams fields).
DECODINGS = {"boost": {"rerank_by_coverage": True, "keyword_boost": 2.0},
             "constrained": {"rerank_by_coverage": True, "keyword_boost": 2.0, "constrained": True},
             "fused": FUSED_DECODING}


def distinct_ratio(path: Path, labels: AudioSetLabels) -> dict:
    segs = list(read_segments(path))
    ordered = {normalise_keywords(labels.label_names(s.mids)) for s in segs}
    unordered = {frozenset(s.mids) for s in segs}
    return {"segments": len(segs), "distinct_ordered": len(ordered),
            "distinct_ratio": round(len(ordered) / len(segs), 4),
            "distinct_as_sets": len(unordered), "distinct_ratio_as_sets": round(len(unordered) / len(segs), 4)}


def job_throughput(model: str, data: Path, rows: int, baseline_rows: int, labels) -> dict:
    import subprocess
    import tempfile

    import torch

    from laion_audio.captions.k2c import Captioner, GenerationParams

    lines = (data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    out: dict = {"rows": rows, "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "eval_head.csv"
        csv_path.write_text("".join(lines[:3 + rows]))
        cmd = [sys.executable, "-m", "laion_audio", "audioset-captions", str(csv_path), "--model",
               model, "--out", str(Path(tmp) / "o.parquet"), "--audioset-labels",
               str(data / "audioset"), "--no-progress", "--force-caption-model", "--force"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for run in ("cold_cache", "warm_cache"):
            t = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            wall = time.perf_counter() - t
            summary = json.loads(res.stdout)
            out[run] = {"wall_s": round(wall, 2), "job_s": summary["seconds"],
                        "captions_per_s": summary["captions_per_s"],
                        "generated": summary["captions"]["generated"],
                        "cache_hits": summary["captions"]["cache_hits"],
                        "keyword_fallback": summary["captions"]["keyword_fallback"]}
    torch.set_num_threads(1)
    from laion_audio.captions.gate import recommended_params

    # the job's own decoding: the one the model's report passed with, else rerank + boost 2
    params = recommended_params(model) or GenerationParams(rerank_by_coverage=True, keyword_boost=2.0)
    out["decoding"] = {k: v for k, v in params.__dict__.items()}
    cap = Captioner.load(model, device="cpu", params=params)
    segs = list(read_segments(data / "audioset/eval_segments.csv"))[:min(rows, baseline_rows)]
    sets = [normalise_keywords(labels.label_names(s.mids)) for s in segs]
    t = time.perf_counter()
    cap.generate_one_per_call(sets)
    base = len(sets) / (time.perf_counter() - t)
    out["one_generate_per_set"] = {"rows": len(sets), "captions_per_s": round(base, 2)}
    out["speedup_cold_vs_one_per_set"] = round(out["cold_cache"]["captions_per_s"] / base, 2)
    out["speedup_warm_vs_one_per_set"] = round(out["warm_cache"]["captions_per_s"] / base, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="captioner folder (skip the speed benchmark when absent)")
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                    help="torch thread counts to measure (default: 1 and all cores)")
    ap.add_argument("--job-rows", type=int, default=0,
                    help="also time the audioset-captions job on this many eval rows (needs --model)")
    ap.add_argument("--baseline-rows", type=int, default=200)
    ap.add_argument("--job-only", action="store_true", help="only the --job-rows measurement")
    ap.add_argument("--decodings", nargs="+", default=["boost"], choices=sorted(DECODINGS),
                    help="decodings to time (boost: rerank + keyword boost 2; constrained: with "
                         "lexical constraints; fused: with LM fusion too, needs fusion_lm.txt)")
    args = ap.parse_args()
    data = Path(args.data)
    labels = AudioSetLabels.from_dir(data / "audioset")
    report: dict = {"load_average_start": os.getloadavg()}
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        report[name] = distinct_ratio(data / "audioset" / name, labels)

    if args.model and not args.job_only:
        import torch

        from laion_audio.captions.k2c import Captioner, GenerationParams

        segs = list(read_segments(data / "audioset/balanced_train_segments.csv"))
        sets = [labels.label_names(s.mids) for s in random.Random(0).sample(segs, args.n)]
        report["generation"] = []
        for threads, decoding in [(t, d) for d in args.decodings for t in args.threads]:
            cap = Captioner.load(args.model, device="cpu", batch_size=args.batch_size,
                                 params=GenerationParams(**DECODINGS[decoding]))
            ways = {"ours_batched": cap.generate,
                    "hf_batched": lambda ks: cap.generate(ks, hf_generate=True),
                    "hf_one_per_call": cap.generate_one_per_call}
            torch.set_num_threads(threads)
            for way in ways.values():
                way(sets[:4])                     # warm-up (lazy init, allocator)
            times: dict[str, list[float]] = {name: [] for name in ways}
            captions: dict[str, list[str]] = {}
            for _ in range(args.repeats):
                for name, way in ways.items():
                    t = time.perf_counter()
                    captions[name] = way(sets)
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            base = med["hf_one_per_call"]
            report["generation"].append({
                "model": args.model, "keyword_sets": args.n, "batch_size": args.batch_size,
                "threads": threads, "decoding": decoding,
                "seconds": {name: [round(x, 3) for x in ts] for name, ts in times.items()},
                "median_s": {name: round(m, 3) for name, m in med.items()},
                "speedup_vs_one_per_call": {name: round(base / m, 2) for name, m in med.items()},
                "ours_vs_hf_batched": round(med["hf_batched"] / med["ours_batched"], 2),
                "captions_per_s": {name: round(args.n / m, 2) for name, m in med.items()},
                "identical_ours_vs_hf_batched": sum(
                    a == b for a, b in zip(captions["ours_batched"], captions["hf_batched"])),
                "identical_ours_vs_one_per_call": sum(
                    a == b for a, b in zip(captions["ours_batched"], captions["hf_one_per_call"])),
                "identical_hf_batched_vs_one_per_call": sum(
                    a == b for a, b in zip(captions["hf_batched"], captions["hf_one_per_call"])),
            })
    if args.model and args.job_rows:
        report["audioset_captions_job"] = job_throughput(args.model, data, args.job_rows,
                                                         args.baseline_rows, labels)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
