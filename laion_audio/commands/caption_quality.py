"""``laion-audio caption-quality``: keyword coverage, invented words, fluency and length of a
captioner's output (``--model`` on keyword sets taken from a caption corpus) or of the model
captions already in a ledger (``--ledger``). Prints a JSON report."""
from __future__ import annotations

import json
import random

from .train_captioner import _corpus


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
    p.add_argument("-n", type=int, default=500, help="keyword sets to evaluate")
    p.add_argument("--rerank", action="store_true", help="keep the beam covering most keywords")
    p.add_argument("--keyword-boost", type=float, default=0.0, help="soft keyword constraint")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def validate_caption_quality(args) -> None:
    from . import _checks

    if args.model:
        if not args.keywords_from:
            raise _checks.UserError("--model needs --keywords-from KIND:PATH")
        _checks.caption_model(args.model, "--model")
    else:
        _checks.ledger_folder(args.ledger, "--ledger")
    for opt in ("keywords_from", "lm_corpus"):
        spec = getattr(args, opt)
        if spec and not __import__("os").path.exists(spec[1]):
            raise _checks.UserError(f"--{opt.replace('_', '-')} {spec[1]} does not exist")


def run(args) -> int:
    validate_caption_quality(args)
    from ..captions.keywords import caption_keywords
    from ..captions.quality import quality_report
    from ..captions.train import load_captions

    lm = load_captions(*args.lm_corpus) if args.lm_corpus else []
    if args.model:
        from ..captions.k2c import Captioner, GenerationParams

        refs = load_captions(*args.keywords_from)
        rng = random.Random(args.seed)
        rng.shuffle(refs)
        refs = refs[:args.n]
        sets = [rng.sample(k, len(k)) for k in (caption_keywords(c) for c in refs)]
        captioner = Captioner.load(args.model, params=GenerationParams(rerank_by_coverage=args.rerank,
                                                                  keyword_boost=args.keyword_boost))
        captions = captioner.generate(sets)
        report = quality_report(sets, captions, human_references=refs, lm_corpus=lm)
    else:
        from ..ledger import Ledger

        with Ledger(args.ledger, lock=False) as ledger:
            recs = [r for r in ledger.records() if r.caption_provenance.get("rule") == "k2c"]
        sets = [r.caption_provenance.get("keywords", r.tags) for r in recs]
        raw = [r.caption_provenance.get("raw_text", r.text_augment_t5 or "") for r in recs]
        report = quality_report(sets, raw, lm_corpus=lm)
        report["debias_replacements_recorded"] = sum(
            len(r.caption_provenance.get("debias_replacements", [])) for r in recs)
    print(json.dumps(report, indent=1))
    return 0
