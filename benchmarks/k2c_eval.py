"""Evaluate (and optionally first train) a keyword-to-caption model on AudioCaps val.

    python benchmarks/k2c_eval.py --train-minutes 30 --out /tmp/k2c_model   # train, then evaluate
    python benchmarks/k2c_eval.py --model /tmp/k2c_model                     # evaluate only

Keyword sets are extracted from AudioCaps val captions exactly as for training (content words,
base forms) and put in a seeded random order, so the caption's word order is not given away.
Fluency: a trigram model of AudioCaps *test* captions (never trained on) scores the generated
captions and the human val captions; the ratio is reported. Prints a JSON report with plain beam
search and beam search + coverage re-ranking, and ten captions for real AudioSet label sets.
"""
from __future__ import annotations

import argparse
import json
import os
import logging
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laion_audio.captions.debias import debias  # noqa: E402
from laion_audio.captions.k2c import Captioner, GenerationParams  # noqa: E402
from laion_audio.captions.keywords import AudioSetLabels, caption_keywords, read_segments  # noqa: E402
from laion_audio.captions.quality import quality_report  # noqa: E402
from laion_audio.captions.train import TrainConfig, build_pairs, load_captions, train_captioner  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="evaluate this model folder (skip training)")
    ap.add_argument("--out", default="/tmp/k2c_eval_model", help="where training writes the model")
    ap.add_argument("--train-minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 beats 2 on a contended machine (threads spin waiting for each other)")
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--vocab-size", type=int, default=3000)
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--n", type=int, default=500, help="val keyword sets to evaluate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = Path(args.data)
    import torch
    torch.set_num_threads(args.threads)

    report: dict = {}
    if not args.model:
        train_caps = load_captions("audiocaps", data / "audiocaps/dataset/train.csv")
        pairs = build_pairs(train_caps)
        rng = random.Random(args.seed)
        val_pairs = build_pairs(load_captions("audiocaps", data / "audiocaps/dataset/val.csv"))
        rng.shuffle(val_pairs)
        cfg = TrainConfig(max_steps=None, max_minutes=args.train_minutes, threads=args.threads,
                          seed=args.seed, d_model=args.d_model, d_ff=4 * args.d_model,
                          vocab_size=args.vocab_size)
        summary = train_captioner(pairs, args.out, cfg, val_pairs=val_pairs[:256], log_every=200)
        report["training"] = {k: summary[k] for k in ("steps", "epochs", "seconds", "pairs",
                                                      "parameters", "val_loss_before", "val_loss_after")}
        report["training"]["load_average_after_training"] = os.getloadavg()
        report["training"]["loss_first_last"] = [summary["loss_curve"][0], summary["loss_curve"][-1]]
        args.model = args.out

    val_caps = load_captions("audiocaps", data / "audiocaps/dataset/val.csv")
    rng = random.Random(args.seed)
    rng.shuffle(val_caps)
    val_caps = val_caps[:args.n]
    keyword_sets = []
    for cap in val_caps:
        kws = caption_keywords(cap)
        rng.shuffle(kws)
        keyword_sets.append(kws)
    lm_corpus = load_captions("audiocaps", data / "audiocaps/dataset/test.csv")

    base = Captioner.load(args.model, device="cpu")
    for label, params in (("beam", GenerationParams()),
                          ("beam_rerank", GenerationParams(rerank_by_coverage=True)),
                          ("beam_boost2_rerank", GenerationParams(rerank_by_coverage=True,
                                                                  keyword_boost=2.0))):
        cap = replace(base, params=params)
        t = time.perf_counter()
        captions = cap.generate(keyword_sets)
        seconds = time.perf_counter() - t
        r = quality_report(keyword_sets, captions, human_references=val_caps, lm_corpus=lm_corpus)
        r["seconds"] = round(seconds, 1)
        r["examples"] = [[ks, c] for ks, c in list(zip(keyword_sets, captions))[:8]]
        report[label] = r
    # chance level: the re-ranked captions scored against another caption's keywords
    report["mismatched_keyword_baseline_coverage"] = quality_report(
        keyword_sets[1:] + keyword_sets[:1], captions)["keyword_coverage"]
    report["load_average_at_end"] = os.getloadavg()

    labels = AudioSetLabels.from_dir(data / "audioset")
    segs = [s for s in read_segments(data / "audioset/balanced_train_segments.csv") if len(s.mids) >= 2]
    picks = random.Random(args.seed).sample(segs, 10)
    sets = [labels.label_names(s.mids) for s in picks]
    cap = replace(base, params=GenerationParams(rerank_by_coverage=True, keyword_boost=2.0))
    report["audioset_examples"] = [
        {"ytid": s.ytid, "labels": ls, "raw": raw, "debiased": debias(raw).text}
        for s, ls, raw in zip(picks, sets, cap.generate(sets))]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
