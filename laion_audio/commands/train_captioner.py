"""``laion-audio train-captioner``: train a keyword-to-caption T5 offline from caption corpora.

Each ``--corpus KIND:PATH`` adds human captions (audiocaps csv, bbc csv, soundbible json,
ledger folder, text file); their content words become the keywords. The output folder loads
with ``laion-audio caption --model OUT``.
"""
from __future__ import annotations

import argparse
import json

from ..captions.train import CORPUS_KINDS


def _corpus(spec: str) -> tuple[str, str]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in CORPUS_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND:PATH with KIND in {CORPUS_KINDS}, got {spec!r}")
    return kind, path


def register(sub) -> None:
    p = sub.add_parser("train-captioner", help="train a keyword-to-caption T5 from caption corpora",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=_corpus, action="append", required=True, metavar="KIND:PATH")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--pretrained", help="local T5 checkpoint to fine-tune (default: train a small "
                                        "T5 and a tokenizer from scratch)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--limit", type=int, help="use at most this many captions per corpus")
    p.add_argument("--val-share", type=float, default=0.01, help="held out for validation loss")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import random

    from ..captions.train import TrainConfig, build_pairs, load_captions, train_captioner

    captions = []
    for kind, path in args.corpus:
        captions += load_captions(kind, path, limit=args.limit)
    pairs = build_pairs(captions)
    random.Random(args.seed).shuffle(pairs)
    n_val = int(len(pairs) * args.val_share)
    val, train = pairs[:n_val], pairs[n_val:]
    if args.max_steps is None and args.max_minutes is None:
        args.max_steps = 3000
    cfg = TrainConfig(max_steps=args.max_steps, max_minutes=args.max_minutes, threads=args.threads,
                      batch_size=args.batch_size, lr=args.lr, vocab_size=args.vocab_size,
                      d_model=args.d_model, d_ff=4 * args.d_model, num_layers=args.layers,
                      num_decoder_layers=args.layers, seed=args.seed, pretrained=args.pretrained)
    summary = train_captioner(train, args.out, cfg, val_pairs=val)
    summary.pop("loss_curve")
    print(json.dumps(summary, indent=1))
    return 0
