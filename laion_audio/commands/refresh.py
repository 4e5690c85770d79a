"""``laion-audio refresh SOURCE``: re-crawl a source and bring an existing corpus up to date.

New ids are added and fetched, changed metadata is updated (captions rebuilt, audio kept),
a changed audio URL or window is fetched again, and ids the source no longer lists are marked
``vanished`` in the ledger (kept, never deleted, and left out of the shards). Only new or
changed audio is downloaded. Interrupted refreshes resume.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .build import (DEFAULT_OUT, add_caption_filter_arguments, add_execution_arguments,
                    add_shard_arguments, add_source_argument, add_transcode_arguments,
                    config_from_args, finish, validate_build)
from . import _checks
from ._deprecated import announce, deprecated_positional


def register(sub) -> None:
    from crawlers import all_sources

    p = sub.add_parser("refresh", help="re-crawl sources and update an existing corpus",
                       description=__doc__.split("\n\n", 1)[1])
    add_source_argument(p, "source to refresh")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--out", default=DEFAULT_OUT, help="the work folder of the corpus to refresh")
    add_execution_arguments(p)
    add_transcode_arguments(p)
    add_caption_filter_arguments(p)
    add_shard_arguments(p)
    for cls in all_sources().values():
        cls.add_arguments(p.add_argument_group(f"source {cls.name}"))
    p.set_defaults(func=run)


def validate_refresh(args: argparse.Namespace) -> None:
    """``--source`` (or the old positional SOURCE); the corpus must exist; then the build checks."""
    args.source = (args.source or []) + deprecated_positional(args.sources, "SOURCE", "--source")
    if not args.source:
        raise UserError("name the source(s) to refresh with --source NAME")
    args.source = args.sources = _checks.sources(args.source)
    if not (Path(args.out) / "ledger").is_dir():
        raise UserError(f"no corpus in --out {args.out} (no ledger there); build it first with "
                        "`laion-audio build --source ...`")
    validate_build(args, args.source)
    announce()


def run(args: argparse.Namespace) -> int:
    from pipelines.build import run_build
    from laion_audio.report import print_summary

    validate_refresh(args)
    summary = run_build(config_from_args(args, args.sources), refresh=True)
    print_summary(summary, command="refresh")
    for st in summary["stages"]:
        if st["stage"].startswith("crawl:"):
            print(f"  {st['stage']}: added {st.get('added', 0)}, changed {st.get('changed', 0)} "
                  f"(audio {st.get('audio_changed', 0)}), unchanged {st.get('unchanged', 0)}, "
                  f"vanished {st.get('vanished', 0)}")
    return finish(summary)
