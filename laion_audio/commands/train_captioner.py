"""``laion-audio train-captioner``: train a keyword-to-caption T5 offline from caption corpora.

Each ``--corpus KIND:PATH`` adds human captions (audiocaps csv, bbc csv, soundbible json,
ledger folder, text file); their content words become the keywords. With ``--audioset-labels
DIR``, words that name an AudioSet label become that label's display name ("a dog barks" ->
"Dog", "Bark"), as the caption stage feeds AudioSet clips; ``--audioset-share`` keeps the rest
as plain words. The output folder loads with ``laion-audio caption --model OUT``.

Model size, threads and learning rate follow the budget (``--max-minutes`` times the cores not
already busy) unless given; training stops early when the validation loss stops improving and
keeps the best weights. At the end the model is scored against the template on held-out real
AudioSet label sets (``--report-segments``, default the AudioSet eval CSV when found) and the
report is saved beside the weights (``caption_quality.json`` + ``.md``); ``caption``, ``build``
and ``audioset-captions`` refuse a model whose report fails the quality gate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..captions.train import CORPUS_KINDS
from . import _checks


def _corpus(spec: str) -> tuple[str, str]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in CORPUS_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND:PATH with KIND in {CORPUS_KINDS}, got {spec!r}")
    return kind, path


def add_fusion_lm(p, default: str) -> None:
    """``--fusion-lm`` (train-captioner, caption-quality)."""
    p.add_argument("--fusion-lm", type=_corpus, action="append", metavar="KIND:PATH",
                   help="human captions for the glue LM fused into constrained decoding, written "
                        f"beside the weights as fusion_lm.txt; never the --lm-corpus ({default})")


def register(sub) -> None:
    p = sub.add_parser("train-captioner", help="train a keyword-to-caption T5 from caption corpora",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=_corpus, action="append", required=True, metavar="KIND:PATH")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--pretrained", help="local T5 checkpoint to fine-tune (default: train a small "
                                        "T5 and a tokenizer from scratch)")
    p.add_argument("--max-steps", type=_checks.positive_int)
    p.add_argument("--max-minutes", type=_checks.positive_float)
    p.add_argument("--limit", type=_checks.positive_int, help="use at most this many captions per corpus")
    p.add_argument("--val-share", type=_checks.fraction, default=0.01, help="held out for validation loss")
    p.add_argument("--threads", type=_checks.positive_int, help="default: from the free cores")
    p.add_argument("--batch-size", type=_checks.positive_int, default=64)
    p.add_argument("--lr", type=_checks.positive_float, help="default: by model size")
    p.add_argument("--vocab-size", type=_checks.positive_int, help="default: by budget")
    p.add_argument("--d-model", type=_checks.positive_int, help="default: by budget and free cores")
    p.add_argument("--layers", type=_checks.positive_int, help="default: by budget")
    p.add_argument("--keep-incomplete-pairs", action="store_true",
                   help="also train on captions with more content words than keywords (teaches "
                        "inventing words; off by default)")
    p.add_argument("--report-segments", metavar="CSV",
                   help="AudioSet segments CSV whose label sets score the model at the end "
                        "(default: eval_segments.csv next to --audioset-labels or in "
                        "../shared/data/audioset)")
    p.add_argument("--report-n", type=_checks.positive_int, default=300, help="label sets (and AudioCaps clips for the reference scores) in the quality report")
    p.add_argument("--lm-corpus", type=_corpus, metavar="KIND:PATH",
                   help="human captions for the report's fluency model (default: AudioCaps "
                        "test.csv beside an audiocaps corpus)")
    add_fusion_lm(p, "default: Clotho's caption CSVs in ../shared/data when found")
    p.add_argument("--no-fusion-lm", action="store_true", help="no glue LM for LM fusion")
    p.add_argument("--no-report", action="store_true", help="skip the quality report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audioset-labels", metavar="DIR_OR_CSV",
                   help="folder with class_labels_indices.csv (+ ontology.json), or that CSV: map "
                        "caption words to AudioSet label names in the training keywords")
    p.add_argument("--audioset-share", type=_share, default=1.0, metavar="P",
                   help="share of pairs whose keywords are mapped (default 1.0; the rest keep "
                        "plain words)")
    p.add_argument("--rare-labels", type=_checks.non_negative_int, default=0, metavar="N",
                   help="with --audioset-labels (and its ontology.json): add pairs that put each "
                        "class the corpus names fewer than N times in the place of an ontology "
                        "sibling it does name, up to N (0: off)")
    p.set_defaults(func=run, interrupted="interrupted; training does not resume: rerun with an "
                                          "empty or new --out folder")


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share within [0, 1], got {text}")
    return value


def _label_mapping(folder: str, share: float, pairs_with_labels: int, rare_labels: int = 0,
                   sibling_pairs: int = 0) -> dict:
    """The sidecar's record of the mapping: which label files (by sha256), what share, and how
    many pairs got at least one label."""
    from ..captions.keywords import sha256_file

    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in ("class_labels_indices.csv", "ontology.json")
             if (folder / name).exists()}
    # the folder's name and its files' hashes, never a path of this machine (the sidecar ships)
    return {"audioset_labels": folder.resolve().name, "files_sha256": files,
            "audioset_share": share, "pairs_with_labels": pairs_with_labels,
            "rare_labels": rare_labels, "sibling_pairs": sibling_pairs}


def validate_train_captioner(args) -> None:
    import os

    from . import _checks

    for kind, path in args.corpus + (args.fusion_lm or []) + ([args.lm_corpus] if args.lm_corpus else []):
        if not os.path.exists(path):     # --lm-corpus is read after training: checked here too
            raise _checks.UserError(f"--corpus/--fusion-lm/--lm-corpus {kind}:{path}: {path} does not exist")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # saving over another model mixes its leftovers (tokenizer files, weights of another
        # format, fusion_lm.txt, a report) with the new weights in one folder
        raise _checks.UserError(f"--out {args.out} " + ("is a file" if not out.is_dir() else
                                "already holds files (another model?)") + "; give a new folder")
    _checks.writable_folder(out, "--out")      # /proc, a read-only mount: before the corpora load
    if args.report_segments:        # found before training, not after it
        _checks.existing_file(args.report_segments, "--report-segments")
    if args.pretrained:
        _checks.caption_model(args.pretrained, "--pretrained")
    if args.audioset_labels:
        from crawlers.audioset import labels_folder

        args.audioset_labels = str(labels_folder(args.audioset_labels))
    if args.rare_labels:
        # siblings come from the ontology; without it the option would add nothing, silently
        if not args.audioset_labels or not (Path(args.audioset_labels) / "ontology.json").is_file():
            raise _checks.UserError("--rare-labels needs --audioset-labels DIR with ontology.json in it")


def run(args) -> int:
    import random

    validate_train_captioner(args)
    from ..captions.train import TrainConfig, build_pairs, load_captions, train_captioner

    captions = []
    for kind, path in args.corpus:
        captions += load_captions(kind, path, limit=args.limit)
    mapper = None
    if args.audioset_labels:
        from ..captions.label_map import LabelMapper

        if not (Path(args.audioset_labels) / "class_labels_indices.csv").is_file():
            print(f"train-captioner: {args.audioset_labels} has no class_labels_indices.csv", file=sys.stderr)
            return 2
        mapper = LabelMapper.from_dir(args.audioset_labels)
    made: dict = {}
    pairs = build_pairs(captions, label_mapper=mapper, label_share=args.audioset_share, seed=args.seed,
                        complete_only=not args.keep_incomplete_pairs, rare_labels=args.rare_labels,
                        stats=made)
    if not pairs:
        print("train-captioner: the corpora gave no training pairs", file=sys.stderr)
        return 2
    info: dict = {"corpora": [f"{kind}:{Path(path).name}" for kind, path in args.corpus],
                  "limit": args.limit,
                  "pairs": len(pairs), "label_mapping": None}
    if mapper is not None:
        with_labels = sum(1 for kws, _ in pairs if mapper.mapped_labels(kws))
        info["label_mapping"] = _label_mapping(args.audioset_labels, args.audioset_share, with_labels,
                                               args.rare_labels, made.get("sibling_pairs", 0))
    random.Random(args.seed).shuffle(pairs)
    n_val = int(len(pairs) * args.val_share)
    val, train = pairs[:n_val], pairs[n_val:]
    if args.max_steps is None and args.max_minutes is None:
        args.max_steps = 3000
    from ..captions.train import auto_config

    auto, why = auto_config(args.max_minutes, args.max_steps)
    given = {"d_model": args.d_model, "num_layers": args.layers, "num_decoder_layers": args.layers,
             "vocab_size": args.vocab_size, "lr": args.lr, "threads": args.threads}
    sizes = {**auto, **{k: v for k, v in given.items() if v is not None}}
    if args.d_model is not None:
        sizes["d_ff"] = 4 * args.d_model
    if not args.pretrained:     # a checkpoint brings its own sizes: the line would be wrong
        print(f"train-captioner: {why}" + (" (overridden by options)" if any(
            v is not None for v in given.values()) else ""), file=sys.stderr)
    info["auto_config"] = why
    cfg = TrainConfig(max_steps=args.max_steps, max_minutes=args.max_minutes,
                      batch_size=args.batch_size, seed=args.seed, pretrained=args.pretrained, **sizes)
    summary = train_captioner(train, args.out, cfg, val_pairs=val[:1000], pairs_info=info)
    summary.pop("loss_curve")
    print(json.dumps(summary, indent=1))
    from ..captions.gate import (GateError, attach_fusion_lm, default_fusion_corpora,
                                 default_segments, write_model_report)

    lm = args.lm_corpus or _default_lm(args.corpus)
    fusion = [] if args.no_fusion_lm else (args.fusion_lm or default_fusion_corpora())
    if fusion:
        try:
            attach_fusion_lm(args.out, fusion, lm)
        except GateError as exc:
            print(f"train-captioner: {exc}", file=sys.stderr)
            return 2
    if args.no_report:
        return 0
    segments = args.report_segments or default_segments(args.audioset_labels)
    if not segments or not lm:
        print("train-captioner: no quality report (give --report-segments CSV and --lm-corpus "
              "KIND:PATH); the quality gate will refuse this model", file=sys.stderr)
        return 0
    try:
        report = write_model_report(args.out, segments, lm, n=args.report_n, ref_n=args.report_n,
                                    seed=args.seed,
                                    labels_dir=args.audioset_labels)
    except GateError as exc:      # the weights are saved; only the report is missing
        print(f"train-captioner: {exc}; the model is saved but has no quality report (rerun "
              "`laion-audio caption-quality --model DIR --write-report`)", file=sys.stderr)
        return 1
    print(report["markdown"])
    return 0


def _default_lm(corpora) -> tuple[str, str] | None:
    """AudioCaps test.csv beside an AudioCaps training corpus (never trained on)."""
    for kind, path in corpora:
        test = Path(path).with_name("test.csv")
        if kind == "audiocaps" and test.is_file() and Path(path).name != "test.csv":
            return ("audiocaps", str(test))
    return None
