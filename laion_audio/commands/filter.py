"""``laion-audio filter --out WORK``: drop eval-set overlaps and duplicates (with reasons)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import _checks
from ..defaults import LOOKUP_BUDGET
from .caption import add_work_arguments, resolve_ledger
from ._deprecated import announce


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "filter", help="mark eval-set overlaps (id, content) and duplicates (exact, near) dropped in a ledger")
    add_work_arguments(p)
    p.add_argument("--evalsets-cache", help="cache filled by `laion-audio evalsets fetch` "
                   "(default: $LAION_AUDIO_EVALSETS_CACHE or ~/.cache/laion-audio/evalsets)")
    p.add_argument("--eval-audio", action="append", default=[], metavar="NAME=DIR",
                   help="a local folder of an eval set's audio, for content matching (repeatable)")
    p.add_argument("--eval-only", action="store_true",
                   help="filter against eval/test splits only (not AudioCaps train, Clotho development, FSD50K dev)")
    p.add_argument("--youtube-window", action="store_true",
                   help="YouTube ids match only when the record's window overlaps the eval segment")
    p.add_argument("--no-content", action="store_true", help="skip fingerprinting (id and exact-hash filters only)")
    p.add_argument("--no-warp", action="store_true",
                   help="skip the warp pass (sped-up, pitch-shifted, time-stretched copies of eval clips)")
    p.add_argument("--no-near-duplicates", action="store_true", help="skip near-duplicate search inside the corpus")
    p.add_argument("--source-priority", help="comma-separated sources, most preferred first (keep rule)")
    p.add_argument("--lookup-budget", type=int, default=LOOKUP_BUDGET,
                   help="postings one content lookup may touch: lower is faster on large "
                        "indexes, higher finds more short copies (see docs/filters.md)")
    p.add_argument("--fingerprint-dir",
                   help="fingerprint store to reuse and fill (default: WORK/fingerprints, the "
                        "build's store beside the ledger); 'none' disables it")
    p.add_argument("--report", help="write the JSON report here (default filter_report.json beside LEDGER_DIR)")
    p.set_defaults(func=run)


def validate_filter(args: argparse.Namespace) -> dict[str, str]:
    """The ledger exists; --eval-audio is NAME=DIR with existing folders. Returns those pairs."""
    resolve_ledger(args)
    pairs = _checks.name_dir_pairs(args.eval_audio)
    if args.lookup_budget < 1:
        raise _checks.UserError(f"--lookup-budget must be at least 1, got {args.lookup_budget}")
    _checks.writable_file(args.report, "--report")
    announce()
    return pairs


def run(args: argparse.Namespace) -> int:
    from laion_audio.filters.dedup import DEFAULT_SOURCE_PRIORITY
    from laion_audio.filters.stage import FilterConfig
    from laion_audio.ledger import sidecar, writing
    from laion_audio.workdir import WorkDir
    from crawlers.crawl import write_json
    from pipelines.stages import BY_NAME

    eval_audio = validate_filter(args)
    work = WorkDir.of_ledger(args.ledger)
    config = FilterConfig(
        evalsets_cache=args.evalsets_cache, eval_audio=eval_audio,
        roles=["eval"] if args.eval_only else None, youtube_window=args.youtube_window,
        source_priority=tuple(args.source_priority.split(",")) if args.source_priority else DEFAULT_SOURCE_PRIORITY,
        content=not args.no_content, near_duplicates=not args.no_near_duplicates,
        warp=not args.no_warp,
        lookup_budget=args.lookup_budget,
        # a build's ledger stores flac paths relative to its work folder, the ledger's parent
        audio_root=str(work.root),
        shard_root=work.released_root(),     # clips the keep policy released: read from tars
        fingerprint_dir=None if args.fingerprint_dir == "none" else
        (args.fingerprint_dir or str(work.fingerprints)))
    with writing(args.ledger) as ledger:
        report, stats = BY_NAME["filter"].fn(ledger, config)   # the build's filter entry
    print(report.table())
    print(stats.line())
    out = Path(args.report) if args.report else sidecar(args.ledger, "filter_report.json")
    write_json(out, report.as_dict(), work.public)   # published: no folder of this machine
    return 0
