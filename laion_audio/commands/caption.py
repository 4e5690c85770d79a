"""``laion-audio caption --out WORK``: caption the records of a build's ledger from their tags.

Without ``--model`` the paper's template is the caption; with it, a T5 keyword-to-caption
model (a local folder, or a hub id in the local cache) writes de-biased captions, each distinct
keyword set generated once thanks to a cache kept in the work folder (``WORK/caption_cache.sqlite``,
where ``build`` keeps it too). (``caption LEDGER_DIR``, the old positional spelling, still works
for one release.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..records import Status
from . import _checks
from ._deprecated import announce, deprecated_positional
from .build import DEFAULT_OUT, add_source_argument


def register(sub) -> None:
    p = sub.add_parser("caption", help="caption records from their tags (T5 keyword-to-caption or template)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_work_arguments(p)
    p.add_argument("--model", help="captioner: model folder (train-captioner output, keytotext-era "
                                   "T5) or hub id; omit (or 'template') to use the template")
    p.add_argument("--template", default="sounds_of", help="template name (default: sounds_of, "
                                                           "'The sounds of A, B and C')")
    p.add_argument("--input-format", choices=["common_gen", "k2t", "laion-audio"],
                   help="model input format (default: from the model folder or name)")
    p.add_argument("--status", nargs="+", default=[Status.TRANSCODED],
                   help="caption records in these states (default: transcoded)")
    add_source_argument(p, "only this source")
    p.add_argument("--audioset-labels", metavar="DIR_OR_CSV",
                   help="folder with class_labels_indices.csv (+ ontology.json), or that CSV, to "
                        "name MID tags")
    p.add_argument("--min-duration", type=_checks.non_negative_float, default=2.0,
                   help="no model caption below this many seconds (LAION: 2); 0 disables")
    p.add_argument("--no-debias", action="store_true")
    p.add_argument("--rerank", action="store_true", default=None,
                   help="keep the beam covering most keywords")
    p.add_argument("--keyword-boost", type=float, default=None,
                   help="soft keyword constraint strength (0 = off, keytotext behaviour; 2.0 "
                        "took our AudioCaps captioner from 0.69 to 0.85 coverage). Without "
                        "--rerank/--keyword-boost/--constrained: the decoding the model's quality "
                        "report passed with")
    p.add_argument("--constrained", action="store_true", default=None,
                   help="hard lexical constraints: no end before every keyword, no content word "
                        "outside the keywords, no repeated words (docs/captions.md)")
    p.add_argument("--lm-fusion", type=float, default=None, metavar="W",
                   help="shallow fusion of the model folder's glue LM (fusion_lm.txt) at this "
                        "weight, in the quality report's fused decoding (constrained, rerank + "
                        "boost 2, length penalty 1.0, 8 beams; docs/captions.md)")
    # quality gate (issue 13)
    p.add_argument("--force-caption-model", action="store_true",
                   help="use a model its quality report fails (or that has no report)")
    p.add_argument("--no-keyword-fallback", action="store_true",
                   help="keep model captions that miss keywords or put a word where human "
                        "captions never do (default: the template replaces them)")
    p.add_argument("--max-new-tokens", type=_checks.positive_int, default=48)
    p.add_argument("--batch-size", type=_checks.positive_int, default=256,
                   help="records per ledger write")
    p.add_argument("--gen-batch-size", type=_checks.positive_int, default=64,
                   help="keyword sets per generate call")
    p.add_argument("--cache", help="cache file (default: caption_cache.sqlite in the work folder, the build's cache)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def add_work_arguments(p) -> None:
    """The work folder the way every command names it: ``--out WORK`` (its ``ledger/``), or
    ``--ledger DIR`` for a ledger elsewhere; the old positional LEDGER_DIR is an alias."""
    p.add_argument("--out", default=DEFAULT_OUT, help="the build's work folder (reads WORK/ledger)")
    p.add_argument("--ledger", default=None, metavar="LEDGER_DIR",
                   help="ledger folder (default: OUT/ledger)")
    p.add_argument("ledger_pos", nargs="?", metavar="LEDGER_DIR", help=argparse.SUPPRESS)


def resolve_ledger(args) -> None:
    """``args.ledger`` from --ledger, the old positional or --out; it must exist."""
    from pathlib import Path

    old = deprecated_positional(args.ledger_pos, "LEDGER_DIR", "--out WORK (or --ledger DIR)")
    args.ledger = args.ledger or old or str(Path(args.out) / "ledger")
    _checks.ledger_folder(args.ledger, "ledger")


def validate_caption(args) -> None:
    resolve_ledger(args)
    known = [v for k, v in vars(Status).items() if k.isupper() and isinstance(v, str)]
    unknown = [s for s in args.status if s not in known]
    if unknown:        # a typo captioned nothing and exited 0
        raise _checks.UserError(f"--status {', '.join(unknown)}: not a record status; one of "
                                + ", ".join(known))
    if args.source:
        args.source = _checks.sources(args.source)
    if args.model == "template":       # as audioset-captions spells it
        args.model = None
    _checks.caption_model(args.model, "--model")
    if args.audioset_labels:
        from crawlers.audioset import labels_folder

        args.audioset_labels = str(labels_folder(args.audioset_labels))
        from ..captions.keywords import AudioSetLabels

        AudioSetLabels.from_dir(args.audioset_labels)    # damaged: one line, not one per batch
    if args.cache and os.path.isdir(args.cache):
        raise _checks.UserError(f"--cache {args.cache} is a folder; it names the cache file")
    announce()


def run(args) -> int:
    validate_caption(args)
    from pipelines.executor import Executor
    from pipelines.stages import BY_NAME, Step, run_worker_stages

    from ..captions.k2c import GenerationParams
    from ..captions.stage import CaptionStats
    from ..ledger import StageStats, writing
    from ..workdir import WorkDir

    stage = BY_NAME["caption"]
    params = None     # None: the decoding the model's quality report passed with
    if (args.rerank is not None or args.keyword_boost is not None or args.constrained is not None
            or args.lm_fusion is not None or args.max_new_tokens != 48):
        from ..captions.gate import fused

        params = GenerationParams(rerank_by_coverage=bool(args.rerank),
                                  keyword_boost=args.keyword_boost or 0.0,
                                  constrained=bool(args.constrained),
                                  max_new_tokens=args.max_new_tokens)
        if args.lm_fusion:        # the gate's fused decoding at this weight
            params = GenerationParams(**{**fused(args.lm_fusion), "max_new_tokens": args.max_new_tokens})
    if args.model:
        from pathlib import Path

        from ..captions.gate import GateError, check_model_dir

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
    cache_path = str(args.cache or WorkDir.of_ledger(args.ledger).caption_cache) if args.model else None
    if cache_path:        # a damaged cache is one line now, not a failure in every batch
        from ..captions.cache import CaptionCache

        CaptionCache(cache_path).close()
    load = dict(input_format=args.input_format, device=args.device,
                gen_batch_size=args.gen_batch_size, params=vars(params) if params is not None else None)
    if args.model:     # loaded here, once (the inline worker reuses it): a model that cannot
        from ..captions.worker import captioner_for   # load is one line, not a failure per record

        fingerprint = captioner_for(args.model, **load).fingerprint
    cstats = CaptionStats()
    kwargs = dict(model=args.model, **load,
                  keyword_fallback=not args.no_keyword_fallback,
                  min_duration=args.min_duration, template=args.template,
                  debias=not args.no_debias, labels_dir=args.audioset_labels, stats=cstats,
                  cache_path=cache_path)
    stats = {"caption": StageStats("caption")}
    start = time.monotonic()
    with writing(args.ledger) as ledger:
        # the build's caption entry, in this process (the model is loaded once)
        run_worker_stages([stage], [Step(stage.name, stage.fn, tuple(args.status), kwargs)],
                          Executor(inline=True), ledger, WorkDir.of_ledger(args.ledger),
                          sources=args.source, batch_size=args.batch_size, retry_failed=False,
                          stats=stats, statuses=args.status)
    st = stats["caption"]
    st.seconds = time.monotonic() - start
    st.extra = {"captions": cstats.as_dict()}
    print(st.line())
    print(json.dumps(cstats.as_dict(), indent=1))
    if args.model:
        _other_weights(args.ledger, fingerprint)
    return 0 if st.closes and (st.succeeded or not st.inputs) else 1


def _other_weights(ledger_dir, fingerprint: str) -> None:
    """Say how many records keep captions made with other weights: a run only captions what is
    pending, so a ledger captioned (or half captioned) by another model would mix both."""
    import pyarrow.compute as pc

    from ..ledger import Ledger

    other = 0
    with Ledger(ledger_dir, lock=False) as ledger:
        for t in ledger.scan(columns=["caption_provenance"]):
            prov = t.column("caption_provenance")
            made = pc.fill_null(pc.match_substring(prov, "model_sha256"), False)
            ours = pc.fill_null(pc.match_substring(prov, fingerprint), False)
            other += pc.sum(pc.and_(made, pc.invert(ours))).as_py() or 0
    if other:
        print(f"caption: {other} records keep captions made with other weights (see their "
              "caption_provenance.model_sha256); `--status captioned` recaptions them",
              file=sys.stderr)
