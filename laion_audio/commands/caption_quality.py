"""``laion-audio caption-quality``: keyword coverage, invented words, fluency and length of a
captioner's output (``--model`` on keyword sets taken from a caption corpus) or of the model
captions already in a ledger (``--ledger``). Prints a JSON report.

``--model DIR --write-report`` scores the model against the template on real AudioSet label sets
(``--segments``, default eval_segments.csv) and saves ``caption_quality.json`` + ``.md`` in the
model folder: the report the quality gate of ``caption``, ``build`` and ``audioset-captions``
reads (e.g. for a keytotext-era checkpoint, which comes without one). With an AudioCaps corpus
(``--references``, or ``--lm-corpus audiocaps:...``) it also scores captions against human
references of the same clips."""
from __future__ import annotations

import json
import random

from . import _checks
from .train_captioner import _corpus, add_fusion_lm


def register(sub) -> None:
    p = sub.add_parser("caption-quality", help="quality report for keyword-to-caption output",
                       description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="captioner folder or hub id to evaluate")
    src.add_argument("--ledger", help="report on the k2c captions in this ledger")
    p.add_argument("--keywords-from", type=_corpus, metavar="KIND:PATH",
                   help="with --model: caption corpus whose content words are the keyword sets")
    p.add_argument("--lm-corpus", type=_corpus, metavar="KIND:PATH",
                   help="held-out human captions for the fluency n-gram model")
    p.add_argument("-n", type=_checks.positive_int, default=None,
                   help="keyword sets to evaluate (default 500; --write-report: 300 label sets and 300 "
                        "reference clips, as train-captioner)")
    p.add_argument("--rerank", action="store_true", help="keep the beam covering most keywords")
    p.add_argument("--keyword-boost", type=float, default=0.0, help="soft keyword constraint")
    p.add_argument("--constrained", action="store_true",
                   help="hard lexical constraints (keywords required, no invented or repeated words)")
    p.add_argument("--lm-fusion", type=float, default=None, metavar="W",
                   help="with --constrained: shallow fusion of the folder's glue LM at this "
                        "weight (length penalty 1.0, 8 beams, rerank + boost 2)")
    add_fusion_lm(p, "with --write-report, before scoring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-report", action="store_true",
                   help="with --model: gate report on AudioSet label sets, saved beside the model")
    p.add_argument("--segments", metavar="CSV", help="AudioSet segments CSV for --write-report")
    p.add_argument("--audioset-labels", metavar="DIR", help="class list (default: the copy "
                                                            "shipped in manifests/audioset)")
    p.add_argument("--references", metavar="CSV",
                   help="with --write-report: AudioCaps CSV (several captions per clip) for the "
                        "reference scores (BLEU-4, METEOR, CIDEr-D); default: --lm-corpus when "
                        "it is audiocaps")
    p.add_argument("--input-format", choices=["common_gen", "k2t", "laion-audio"])
    p.set_defaults(func=run)


def validate_caption_quality(args) -> None:
    from . import _checks

    if getattr(args, "write_report", False) and not args.model:
        raise _checks.UserError("--write-report needs --model")
    if getattr(args, "fusion_lm", None) and not getattr(args, "write_report", False):
        raise _checks.UserError("--fusion-lm needs --write-report")
    for spec in getattr(args, "fusion_lm", None) or ():
        if not __import__("os").path.exists(spec[1]):
            raise _checks.UserError(f"--fusion-lm {spec[1]} does not exist")
    if args.model:
        if not args.keywords_from and not getattr(args, "write_report", False):
            raise _checks.UserError("--model needs --keywords-from KIND:PATH")
        _checks.caption_model(args.model, "--model")
    else:
        _checks.ledger_folder(args.ledger, "--ledger")
    if getattr(args, "segments", None):
        _checks.existing_file(args.segments, "--segments")
    refs = getattr(args, "references", None)
    if refs and not getattr(args, "write_report", False):
        raise _checks.UserError("--references needs --write-report")
    if refs and not __import__("os").path.isfile(refs):
        raise _checks.UserError(f"--references {refs} does not exist")
    for opt in ("keywords_from", "lm_corpus"):
        spec = getattr(args, opt)
        if spec and not __import__("os").path.exists(spec[1]):
            raise _checks.UserError(f"--{opt.replace('_', '-')} {spec[1]} does not exist")


def _write_report(args) -> int:
    import sys

    from ..captions.gate import (DEFAULT_DECODINGS, GateError, attach_fusion_lm, default_segments,
                                 write_model_report)

    segments = args.segments or default_segments(args.audioset_labels)
    if not segments:
        print("caption-quality: no segments CSV: give --segments CSV", file=sys.stderr)
        return 2
    decodings = list(DEFAULT_DECODINGS)
    if args.rerank or args.keyword_boost or args.constrained or args.lm_fusion:
        asked = {"rerank_by_coverage": bool(args.rerank), "keyword_boost": args.keyword_boost}
        if args.constrained or args.lm_fusion:
            asked["constrained"] = True
        if args.lm_fusion:
            from ..captions.gate import fused

            asked = fused(args.lm_fusion)
        decodings = [d for d in decodings if d != asked] + [asked]
    try:
        if args.fusion_lm:
            attach_fusion_lm(args.model, args.fusion_lm, args.lm_corpus)
        report = write_model_report(args.model, segments, args.lm_corpus, n=args.n or 300,
                                    ref_n=args.n or 300, seed=args.seed,
                                    labels_dir=args.audioset_labels, decodings=decodings,
                                    input_format=args.input_format, references=args.references)
    except GateError as exc:
        print(f"caption-quality: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    return 0


def run(args) -> int:
    validate_caption_quality(args)
    from ..captions.keywords import caption_keywords
    from ..captions.quality import quality_report
    from ..captions.train import load_captions

    if args.write_report:
        return _write_report(args)
    lm = load_captions(*args.lm_corpus) if args.lm_corpus else []
    if args.model:
        from ..captions.k2c import Captioner, GenerationParams

        refs = load_captions(*args.keywords_from)
        if not refs:
            raise _checks.UserError(f"--keywords-from {args.keywords_from[0]}:"
                                    f"{__import__('os').path.basename(args.keywords_from[1])} holds no "
                                    "captions to take keyword sets from")
        rng = random.Random(args.seed)
        rng.shuffle(refs)
        refs = refs[:args.n or 500]
        sets = [rng.sample(k, len(k)) for k in (caption_keywords(c) for c in refs)]
        from ..captions.gate import fused

        params = GenerationParams(rerank_by_coverage=args.rerank, keyword_boost=args.keyword_boost,
                                  constrained=args.constrained)
        if args.lm_fusion:
            params = GenerationParams(**fused(args.lm_fusion))
        captioner = Captioner.load(args.model, params=params)
        captions = captioner.generate(sets)
        report = quality_report(sets, captions, human_references=refs, lm_corpus=lm)
    else:
        from ..ledger import Ledger

        with Ledger(args.ledger, lock=False) as ledger:
            recs = [r for r in ledger.records() if r.caption_provenance.get("rule") == "k2c"]
        if not recs:        # a report on nothing is not a report
            import sys

            print(f"caption-quality: no model captions (rule k2c) in {args.ledger}; caption with "
                  "--model first", file=sys.stderr)
            return 1
        sets = [r.caption_provenance.get("keywords", r.tags) for r in recs]
        raw = [r.caption_provenance.get("raw_text", r.text_augment_t5 or "") for r in recs]
        report = quality_report(sets, raw, lm_corpus=lm)
        report["debias_replacements_recorded"] = sum(
            len(r.caption_provenance.get("debias_replacements", [])) for r in recs)
    print(json.dumps(report, indent=1))
    return 0
