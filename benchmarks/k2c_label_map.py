"""Does training on AudioSet label names help captions for AudioSet label sets?

    python benchmarks/k2c_label_map.py --train-minutes 5 --shares 0 1

Trains one small captioner per ``--shares`` value on AudioCaps train (share 0 = plain content
words; share P = that share of the pairs mapped to AudioSet label names by ``LabelMapper``),
all at once, one thread each, so they see the same machine load; then scores each on
- real AudioSet label sets (``eval_segments.csv``, display names in file order, as the stage
  feeds them): keyword coverage counts a label when any of its comma synonyms is in the caption;
- AudioCaps val keyword sets (plain content words), to show the plain-word input still works.
Prints a JSON report; coverage is the figure to compare between shares, with the labels that
explain the difference (coverage is lexical: "Speech" rendered "a man is speaking" is a miss).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laion_audio.captions.k2c import Captioner, GenerationParams  # noqa: E402
from laion_audio.captions.keywords import (AudioSetLabels, caption_keywords, lemma,  # noqa: E402
                                           read_segments, words)
from laion_audio.captions.label_map import LabelMapper  # noqa: E402
from laion_audio.captions.quality import keyword_covered, quality_report  # noqa: E402
from laion_audio.captions.train import TrainConfig, build_pairs, load_captions, train_captioner  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _train(share: float, out: str, data: str, minutes: float, d_model: int, vocab: int, seed: int) -> dict:
    import torch
    torch.set_num_threads(1)
    data = Path(data)
    caps = load_captions("audiocaps", data / "audiocaps/dataset/train.csv")
    mapper = LabelMapper.from_dir(data / "audioset") if share > 0 else None
    pairs = build_pairs(caps, label_mapper=mapper, label_share=share, seed=seed)
    val = build_pairs(load_captions("audiocaps", data / "audiocaps/dataset/val.csv")[:256],
                      label_mapper=mapper, label_share=share, seed=seed)
    cfg = TrainConfig(max_steps=None, max_minutes=minutes, threads=1, seed=seed, d_model=d_model,
                      d_ff=4 * d_model, vocab_size=vocab)
    s = train_captioner(pairs, out, cfg, val_pairs=val, log_every=200,
                        pairs_info={"label_mapping": {"audioset_share": share}})
    return {k: s[k] for k in ("steps", "seconds", "pairs", "parameters", "val_loss_before", "val_loss_after")}


def _covered_labels(label_sets, captions) -> Counter:
    """How many times each label was covered by its caption."""
    out: Counter = Counter()
    for ls, cap in zip(label_sets, captions):
        have = {lemma(w) for w in words(cap)}
        out.update(k for k in ls if keyword_covered(k, have))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--train-minutes", type=float, default=5.0)
    ap.add_argument("--out", default="/tmp/k2c_label_map")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--n", type=int, default=300, help="label sets / val keyword sets to score")
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s")
    data = Path(args.data)
    outs = [f"{args.out}/share_{s:g}" for s in args.shares]
    with mp.get_context("spawn").Pool(len(args.shares)) as pool:
        runs = pool.starmap(_train, [(s, o, str(data), args.train_minutes, args.d_model,
                                      args.vocab_size, args.seed) for s, o in zip(args.shares, outs)])

    import torch
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    labels = AudioSetLabels.from_dir(data / "audioset")
    segs = list(read_segments(data / "audioset/eval_segments.csv"))
    label_sets = [labels.label_names(s.mids[:6]) for s in rng.sample(segs, args.n)]
    val_caps = rng.sample(load_captions("audiocaps", data / "audiocaps/dataset/val.csv"), args.n)
    val_sets = [caption_keywords(c) for c in val_caps]
    report: dict = {"train_minutes": args.train_minutes, "d_model": args.d_model,
                    "load_average": os.getloadavg(), "runs": {}}
    first_covered: Counter | None = None
    for share, out, run in zip(args.shares, outs, runs):
        base = Captioner.load(out, device="cpu")
        entry = {"training": run}
        for label, params in (("beam", GenerationParams()),
                              ("beam_rerank", GenerationParams(rerank_by_coverage=True))):
            cap = replace(base, params=params)
            as_caps = cap.generate(label_sets)
            val_gen = cap.generate(val_sets)
            as_report = quality_report(label_sets, as_caps)
            entry[label] = {
                "audioset_coverage": as_report["keyword_coverage"],
                "audioset_full_coverage_share": as_report["full_coverage_share"],
                "audiocaps_val_coverage": quality_report(val_sets, val_gen)["keyword_coverage"],
                "audioset_examples": [[ls, c] for ls, c in list(zip(label_sets, as_caps))[:6]],
            }
            if label == "beam":
                covered = _covered_labels(label_sets, as_caps)
                if first_covered is None:
                    first_covered = covered
                else:   # which labels explain the difference to the first share
                    diff = Counter(covered)
                    diff.subtract(first_covered)
                    entry["beam"]["labels_covered_more_than_first_share"] = [
                        x for x in diff.most_common() if x[1] > 0][:10]
                    entry["beam"]["labels_covered_less_than_first_share"] = [
                        x for x in sorted(diff.items(), key=lambda x: x[1]) if x[1] < 0][:10]
        report["runs"][f"share_{share:g}"] = entry
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
