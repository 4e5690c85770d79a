"""``laion-audio refresh SOURCE``: re-crawl a source and bring an existing corpus up to date.

New ids are added and fetched, changed metadata is updated (captions rebuilt, audio kept),
a changed audio URL or window is fetched again, and ids the source no longer lists are marked
``vanished`` in the ledger (kept, never deleted, and left out of the shards). Only new or
changed audio is downloaded. Interrupted refreshes resume.
"""
from __future__ import annotations

import argparse

from .build import (DEFAULT_OUT, add_caption_filter_arguments, add_execution_arguments,
                    add_shard_arguments, add_transcode_arguments, config_from_args)


def register(sub) -> None:
    from crawlers import all_sources

    p = sub.add_parser("refresh", help="re-crawl sources and update an existing corpus",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("sources", nargs="+", metavar="SOURCE", help=", ".join(sorted(all_sources())))
    p.add_argument("--out", default=DEFAULT_OUT, help="the work folder of the corpus to refresh")
    add_execution_arguments(p)
    add_transcode_arguments(p)
    add_caption_filter_arguments(p)
    add_shard_arguments(p)
    for cls in all_sources().values():
        cls.add_arguments(p.add_argument_group(f"source {cls.name}"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.build import exit_code, run_build
    from laion_audio.report import print_summary

    summary = run_build(config_from_args(args, args.sources), refresh=True)
    print_summary(summary)
    for st in summary["stages"]:
        if st["stage"].startswith("crawl:"):
            print(f"  {st['stage']}: added {st.get('added', 0)}, changed {st.get('changed', 0)} "
                  f"(audio {st.get('audio_changed', 0)}), unchanged {st.get('unchanged', 0)}, "
                  f"vanished {st.get('vanished', 0)}")
    return exit_code(summary)
