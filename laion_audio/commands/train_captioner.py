"""``laion-audio train-captioner``: train a keyword-to-caption T5 offline from caption corpora.

Each ``--corpus KIND:PATH`` adds human captions (audiocaps csv, bbc csv, soundbible json,
ledger folder, text file); their content words become the keywords. With ``--audioset-labels
DIR``, words that name an AudioSet label become that label's display name ("a dog barks" ->
"Dog", "Bark"), as the caption stage feeds AudioSet clips; ``--audioset-share`` keeps the rest
as plain words. The output folder loads with ``laion-audio caption --model OUT``.
"""
from __future__ import annotations

import argparse
import json
import sys

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
    p.add_argument("--audioset-labels", metavar="DIR_OR_CSV",
                   help="folder with class_labels_indices.csv (+ ontology.json), or that CSV: map "
                        "caption words to AudioSet label names in the training keywords")
    p.add_argument("--audioset-share", type=_share, default=1.0, metavar="P",
                   help="share of pairs whose keywords are mapped (default 1.0; the rest keep "
                        "plain words)")
    p.set_defaults(func=run)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share within [0, 1], got {text}")
    return value


def _label_mapping(folder: str, share: float, pairs_with_labels: int) -> dict:
    """The sidecar's record of the mapping: which label files (by sha256), what share, and how
    many pairs got at least one label."""
    from pathlib import Path

    from ..captions.keywords import sha256_file

    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in ("class_labels_indices.csv", "ontology.json")
             if (folder / name).exists()}
    return {"audioset_labels": str(folder.resolve()), "files_sha256": files,
            "audioset_share": share, "pairs_with_labels": pairs_with_labels}


def validate_train_captioner(args) -> None:
    import os

    from . import _checks

    for kind, path in args.corpus:
        if not os.path.exists(path):
            raise _checks.UserError(f"--corpus {kind}:{path}: {path} does not exist")
    if args.pretrained:
        _checks.caption_model(args.pretrained, "--pretrained")
    if args.audioset_labels:
        from crawlers.audioset import labels_folder

        args.audioset_labels = str(labels_folder(args.audioset_labels))


def run(args) -> int:
    import random

    validate_train_captioner(args)
    from ..captions.train import TrainConfig, build_pairs, load_captions, train_captioner

    captions = []
    for kind, path in args.corpus:
        captions += load_captions(kind, path, limit=args.limit)
    mapper = None
    if args.audioset_labels:
        from pathlib import Path

        from ..captions.label_map import LabelMapper

        if not (Path(args.audioset_labels) / "class_labels_indices.csv").is_file():
            print(f"train-captioner: {args.audioset_labels} has no class_labels_indices.csv", file=sys.stderr)
            return 2
        mapper = LabelMapper.from_dir(args.audioset_labels)
    pairs = build_pairs(captions, label_mapper=mapper, label_share=args.audioset_share, seed=args.seed)
    info: dict = {"corpora": [f"{kind}:{path}" for kind, path in args.corpus], "limit": args.limit,
                  "pairs": len(pairs), "label_mapping": None}
    if mapper is not None:
        with_labels = sum(1 for kws, _ in pairs if mapper.mapped_labels(kws))
        info["label_mapping"] = _label_mapping(args.audioset_labels, args.audioset_share, with_labels)
    random.Random(args.seed).shuffle(pairs)
    n_val = int(len(pairs) * args.val_share)
    val, train = pairs[:n_val], pairs[n_val:]
    if args.max_steps is None and args.max_minutes is None:
        args.max_steps = 3000
    cfg = TrainConfig(max_steps=args.max_steps, max_minutes=args.max_minutes, threads=args.threads,
                      batch_size=args.batch_size, lr=args.lr, vocab_size=args.vocab_size,
                      d_model=args.d_model, d_ff=4 * args.d_model, num_layers=args.layers,
                      num_decoder_layers=args.layers, seed=args.seed, pretrained=args.pretrained)
    summary = train_captioner(train, args.out, cfg, val_pairs=val, pairs_info=info)
    summary.pop("loss_curve")
    print(json.dumps(summary, indent=1))
    return 0
