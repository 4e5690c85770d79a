"""``laion-audio caption LEDGER_DIR``: caption the ledger's records from their tags.

Without ``--model`` the paper's template is the caption; with it, a T5 keyword-to-caption
model (a local folder, or a hub id when online) writes de-biased captions, each distinct keyword
set generated once thanks to a cache kept in ``LEDGER_DIR/caption_cache.sqlite``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..records import Status


def register(sub) -> None:
    p = sub.add_parser("caption", help="caption records from their tags (T5 keyword-to-caption or template)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ledger", metavar="LEDGER_DIR")
    p.add_argument("--model", help="captioner: model folder (train-captioner output, keytotext-era "
                                   "T5) or hub id; omit to use the template")
    p.add_argument("--template", default="sounds_of", help="template name (default: sounds_of, "
                                                           "'The sounds of A, B and C')")
    p.add_argument("--input-format", choices=["common_gen", "k2t", "laion-audio"],
                   help="model input format (default: from the model folder or name)")
    p.add_argument("--status", nargs="+", default=[Status.TRANSCODED],
                   help="caption records in these states (default: transcoded)")
    p.add_argument("--source", nargs="+", help="only these sources")
    p.add_argument("--audioset-labels", metavar="DIR",
                   help="folder with class_labels_indices.csv (+ ontology.json) to name MID tags")
    p.add_argument("--min-duration", type=float, default=2.0,
                   help="no model caption below this many seconds (LAION: 2); 0 disables")
    p.add_argument("--no-debias", action="store_true")
    p.add_argument("--rerank", action="store_true", default=None,
                   help="keep the beam covering most keywords")
    p.add_argument("--keyword-boost", type=float, default=None,
                   help="soft keyword constraint strength (0 = off, keytotext behaviour; 2.0 "
                        "took our AudioCaps captioner from 0.69 to 0.85 coverage). Without "
                        "--rerank/--keyword-boost: the decoding the model's quality report passed with")
    # quality gate (issue 13)
    p.add_argument("--force-caption-model", action="store_true",
                   help="use a model its quality report fails (or that has no report)")
    p.add_argument("--no-keyword-fallback", action="store_true",
                   help="keep model captions that miss keywords (default: the template replaces them)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=256, help="records per ledger write")
    p.add_argument("--gen-batch-size", type=int, default=64, help="keyword sets per generate call")
    p.add_argument("--cache", help="cache file (default: LEDGER_DIR/caption_cache.sqlite)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..captions.cache import CaptionCache
    from ..captions.k2c import Captioner, GenerationParams
    from ..captions.keywords import AudioSetLabels
    from ..captions.stage import CaptionOptions, CaptionStats, caption_batch
    from ..ledger import Ledger, StageStats

    opts = CaptionOptions(min_duration=args.min_duration or None, template=args.template,
                          debias=not args.no_debias, keyword_fallback=not args.no_keyword_fallback,
                          labels=AudioSetLabels.from_dir(args.audioset_labels) if args.audioset_labels else None)
    captioner = None
    if args.model:
        from pathlib import Path

        from ..captions.gate import GateError, check_model_dir

        params = None
        if args.rerank is not None or args.keyword_boost is not None or args.max_new_tokens != 48:
            params = GenerationParams(rerank_by_coverage=bool(args.rerank),
                                      keyword_boost=args.keyword_boost or 0.0,
                                      max_new_tokens=args.max_new_tokens)
        if Path(args.model).is_dir():       # a hub id has no report: only with --force-caption-model
            try:    # before loading the weights: a refused model costs nothing
                check_model_dir(args.model, params, force=args.force_caption_model)
            except GateError as exc:
                print(f"caption: {exc}", file=sys.stderr)
                return 2
        elif not args.force_caption_model:
            print(f"caption: {args.model} is not a model folder with a quality report; use "
                  "--force-caption-model to use it anyway", file=sys.stderr)
            return 2
        captioner = Captioner.load(args.model, input_format=args.input_format, device=args.device,
                                   batch_size=args.gen_batch_size, params=params)
    cstats = CaptionStats()
    stage = StageStats("caption")
    start = time.monotonic()
    with Ledger(args.ledger) as ledger:
        cache = CaptionCache(args.cache or ledger.root / "caption_cache.sqlite") if captioner else None
        todo = ledger.records(status=args.status, source=args.source)
        for batch in ledger.iter_batches(todo, args.batch_size):
            caption_batch(batch, captioner, opts, cache=cache, stats=cstats)
            for rec in batch:
                stage.add(rec, rec)
            ledger.write(batch, tag="caption")
        if cache:
            cache.close()
    stage.seconds = time.monotonic() - start
    stage.extra = {"captions": cstats.as_dict()}
    print(stage.line())
    print(json.dumps(cstats.as_dict(), indent=1))
    return 0 if stage.closes else 1
