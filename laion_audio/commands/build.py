"""``laion-audio build``: crawl -> fetch -> transcode -> caption -> filter -> shard, resumable."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_OUT = "laion-audio-out"
ALL_STAGES = ("crawl", "fetch", "transcode", "caption", "filter", "shard")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs stages on Ray."""
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                   help="worker processes (local Ray CPUs, or tasks in flight on a cluster)")
    g.add_argument("--ray-address", default=None,
                   help="join a running Ray cluster ('auto' or host:port); default: local Ray")
    g.add_argument("--inline", action="store_true", help="run stages in this process, without Ray")
    g.add_argument("--batch-size", type=int, default=16, help="records per task (transcode: tasks of up to 32 MB of input, at most 16x this many records)")
    g.add_argument("--retry-failed", action="store_true",
                   help="retry records that failed in an earlier run")


def add_transcode_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transcode")
    g.add_argument("--min-duration", type=float, default=None, help="seconds; shorter clips fail")
    g.add_argument("--max-duration", type=float, default=None, help="seconds; longer clips fail")
    g.add_argument("--min-input-rate", type=int, default=None,
                   help="refuse sources below this sample rate (LAION used 16000)")
    g.add_argument("--silence-db", type=float, default=None,
                   help="fail clips whose peak is below this dBFS (off by default)")


def transcode_options(args: argparse.Namespace) -> dict:
    names = {"min_duration": "min_duration", "max_duration": "max_duration",
             "min_input_rate": "min_input_rate", "silence_db": "silence_db"}
    return {opt: getattr(args, a) for a, opt in names.items() if getattr(args, a, None) is not None}


def add_caption_filter_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captions and filters")
    g.add_argument("--caption-model", default=None,
                   help="T5 keyword-to-caption model folder (train-captioner output or a "
                        "keytotext-era model); default: the paper's template for tag-only records")
    g.add_argument("--caption-input-format", choices=["common_gen", "k2t", "laion-audio"],
                   default=None, help="the model's input format (default: guessed)")
    g.add_argument("--caption-min-duration", type=float, default=2.0,
                   help="no model caption for clips shorter than this (LAION: 2 s)")
    # caption quality gate and AudioSet caption join (issue 13)
    g.add_argument("--force-caption-model", action="store_true",
                   help="use a --caption-model that its quality report fails (or that has none)")
    g.add_argument("--audioset-captions", default=None, metavar="FILE.parquet",
                   help="AudioSet captions made by `laion-audio audioset-captions`: joined into "
                        "AudioSet records at the caption stage (text and text_augment_t5)")
    g.add_argument("--evalsets-cache", default=None,
                   help="folder of eval manifests fetched with `laion-audio evalsets fetch` "
                        "(default: $LAION_AUDIO_EVALSETS_CACHE or the user cache)")
    g.add_argument("--eval-audio", action="append", default=[], metavar="NAME=DIR",
                   help="local audio of an eval set, for content-overlap checks (repeatable)")


def add_shard_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shards")
    g.add_argument("--shards-to", default=None,
                   help="shard root: local folder or fsspec URL such as s3://bucket/prefix "
                        "(default: OUT/shards)")
    g.add_argument("--seed", type=int, default=1234, help="split and order seed")
    g.add_argument("--test-fraction", type=float, default=0.1)
    g.add_argument("--samples-per-shard", type=int, default=512)
    g.add_argument("--shard-bytes", type=int, default=None, help="byte target per shard instead")


def register(sub) -> None:
    from crawlers import all_sources

    p = sub.add_parser(
        "build", help="build a corpus end to end (resumable)",
        description="Crawl, fetch, transcode to 48 kHz mono FLAC, caption and shard. With no "
                    "--source, builds the demo corpus: all eight sources plus AudioSet from the "
                    "bundled replay server on 127.0.0.1. Rerun the same command to resume; "
                    "finished work is not redone.")
    p.add_argument("--source", action="append", default=None,
                   help="source to build (repeatable): " + ", ".join(sorted(all_sources())))
    p.add_argument("--out", default=DEFAULT_OUT, help="work folder: ledger, audio, shards, stats")
    p.add_argument("--stages", default=",".join(ALL_STAGES),
                   help="comma-separated subset of " + ",".join(ALL_STAGES))
    add_execution_arguments(p)
    add_transcode_arguments(p)
    add_caption_filter_arguments(p)
    add_shard_arguments(p)
    for cls in all_sources().values():
        g = p.add_argument_group(f"source {cls.name}")
        cls.add_arguments(g)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, sources: list[str], stages=ALL_STAGES):
    """A BuildConfig from the options the build-like commands share."""
    from crawlers import get_source
    from pipelines.build import BuildConfig

    options = {name: get_source(name).options_from_args(args) for name in sources}
    return BuildConfig(out=Path(args.out), sources=options, shards_to=args.shards_to,
                       seed=args.seed, test_fraction=args.test_fraction,
                       samples_per_shard=args.samples_per_shard, shard_bytes=args.shard_bytes,
                       workers=args.workers, ray_address=args.ray_address, inline=args.inline,
                       batch_size=args.batch_size, transcode=transcode_options(args),
                       retry_failed=args.retry_failed, stages=tuple(stages),
                       caption_model=getattr(args, "caption_model", None),
                       caption_input_format=getattr(args, "caption_input_format", None),
                       caption_min_duration=getattr(args, "caption_min_duration", 2.0),
                       audioset_captions=_checked_captions(args),
                       evalsets_cache=getattr(args, "evalsets_cache", None),
                       eval_audio=_pairs(getattr(args, "eval_audio", [])))


def _refuse(line: str) -> None:
    import sys

    print(line, file=sys.stderr)
    raise SystemExit(2)


def _checked_captions(args: argparse.Namespace) -> str | None:
    """Quality gate for --caption-model and a readable --audioset-captions file, before any
    stage runs (a user mistake: one line, exit 2)."""
    model = getattr(args, "caption_model", None)
    if model:
        from laion_audio.captions.gate import GateError, check_model_dir

        try:
            check_model_dir(model, force=getattr(args, "force_caption_model", False))
        except GateError as exc:
            _refuse(f"build: {exc}")
    path = getattr(args, "audioset_captions", None)
    if path:
        import pyarrow.parquet as pq

        from laion_audio.captions.stage import AudioSetCaptionTable

        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError) as exc:
            _refuse(f"build: --audioset-captions {path}: {exc}")
        if not set(AudioSetCaptionTable.COLUMNS) <= set(names):
            _refuse(f"build: --audioset-captions {path}: not an audioset-captions file")
        return str(Path(path).resolve())
    return None


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep:
            raise SystemExit(f"--eval-audio wants NAME=DIR, got {v!r}")
        out[name] = folder
    return out


def run(args: argparse.Namespace) -> int:
    from pipelines.build import print_summary, run_build

    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        print(f"unknown stage(s): {', '.join(sorted(unknown))}")
        return 2
    if args.source:
        summary = run_build(config_from_args(args, args.source, stages))
    else:
        summary = run_demo(args, stages)
    print_summary(summary)
    return 0 if summary["accounting_closes"] else 1


def run_demo(args: argparse.Namespace, stages) -> dict:
    """No --source: all eight sources plus AudioSet from the bundled replay server."""
    from pipelines.build import run_build
    from pipelines.demo import demo_sources, replay_for_demo

    print("no --source given: building the demo corpus from the bundled replay of all eight "
          "sources plus AudioSet (a real HTTP server on 127.0.0.1)")
    cfg = config_from_args(args, [], stages)
    with replay_for_demo() as base:
        cfg.sources = demo_sources(base, cfg.out)
        return run_build(cfg)
