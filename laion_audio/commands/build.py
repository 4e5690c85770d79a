"""``laion-audio build``: crawl -> fetch -> transcode -> caption -> filter -> shard, resumable."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import defaults
from ..errors import EXIT_INCOMPLETE, EXIT_OK, EXIT_UNAVAILABLE, UserError
from . import _checks
from ._checks import fraction, parse_bytes, positive_int

DEFAULT_OUT = "laion-audio-out"
ALL_STAGES = ("crawl", "fetch", "transcode", "caption", "filter", "shard")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs stages on Ray."""
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="worker processes (local Ray CPUs, or tasks in flight on a cluster; "
                        "default: the number of CPUs)")
    g.add_argument("--ray-address", default=None,
                   help="join a running Ray cluster ('auto' or host:port); default: stages of "
                        "up to 32 records run in this process, bigger ones on a local Ray")
    g.add_argument("--inline", action="store_true",
                   help="run every stage in this process, never starting Ray")
    g.add_argument("--batch-size", type=positive_int, default=16,
                   help="records per task (transcode: tasks of up to 32 MB of input, at most 16x "
                        "this many records)")
    g.add_argument("--retry-failed", action="store_true",
                   help="retry records that failed in an earlier run")
    g.add_argument("--keep-raw", action="store_true",
                   help="keep raw downloads in OUT/raw (default: each is deleted once its FLAC "
                        "is written and hashed)")


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
    g.add_argument("--skip-eval-filter", action="store_true",
                   help="build without the eval-set overlap filter (said in the stats and the "
                        "report); without it, eval sets missing from the cache are fetched first")


def add_shard_arguments(p: argparse.ArgumentParser, *, keep_audio: bool = True) -> None:
    """The shard options, the same in ``build`` (and the build-like commands) and ``shard``
    (which never deletes FLACs, so it has no ``--keep-audio``)."""
    g = p.add_argument_group("shards")
    if keep_audio:
        g.add_argument("--keep-audio", action="store_true",
                       help="keep each FLAC in OUT/audio (default: deleted once its tar is "
                            "published in a local shard root; later runs read it from the tar)")
    g.add_argument("--shards-to", default=None, metavar="ROOT",
                   help="shard root: a folder or an fsspec URL such as s3://bucket/prefix "
                        "(default: OUT/shards)")
    g.add_argument("--seed", type=int, default=defaults.SEED, help="split and order seed")
    g.add_argument("--test-fraction", type=fraction, default=defaults.TEST_FRACTION,
                   help="share of ids that go to the test split")
    g.add_argument("--samples-per-shard", type=positive_int, default=None,
                   help=f"samples per tar (default {defaults.SAMPLES_PER_SHARD}; with "
                        "--shard-bytes, an extra cap)")
    g.add_argument("--shard-bytes", type=parse_bytes, default=None, metavar="N",
                   help="roll to a new tar before N bytes (e.g. 500M, 1G; a tar is larger only "
                        "when one sample alone is)")


def add_source_argument(p: argparse.ArgumentParser, what: str, **kwargs) -> None:
    """``--source NAME``, the same in every command: repeatable, and several names after one
    flag work too."""
    from crawlers import all_sources

    p.add_argument("--source", action="extend", nargs="+", default=None, metavar="SOURCE",
                   help=f"{what} (repeatable): " + ", ".join(sorted(all_sources())), **kwargs)


def register(sub) -> None:
    from crawlers import all_sources

    p = sub.add_parser(
        "build", help="build a corpus end to end (resumable)",
        description="Crawl, fetch, transcode to 48 kHz mono FLAC, caption and shard. With no "
                    "--source, builds the demo corpus: all eight sources plus AudioSet from the "
                    "bundled replay server on 127.0.0.1. Rerun the same command to resume; "
                    "finished work is not redone.")
    add_source_argument(p, "source to build")
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
                       keep_raw=getattr(args, "keep_raw", False),
                       keep_audio=getattr(args, "keep_audio", False),
                       caption_model=getattr(args, "caption_model", None),
                       caption_input_format=getattr(args, "caption_input_format", None),
                       caption_min_duration=getattr(args, "caption_min_duration", 2.0),
                       audioset_captions=_checked_captions(args, stages),
                       evalsets_cache=getattr(args, "evalsets_cache", None),
                       eval_audio=_pairs(getattr(args, "eval_audio", [])),
                       skip_eval_filter=getattr(args, "skip_eval_filter", False),
                       eval_filter=getattr(args, "eval_filter", ""))


def _refuse(line: str) -> None:
    import sys

    print(line, file=sys.stderr)
    raise SystemExit(2)


def _checked_captions(args: argparse.Namespace, stages=ALL_STAGES) -> str | None:
    """Quality gate for --caption-model, the model loaded, and a readable --audioset-captions
    file, before any stage runs (a user mistake: one line, exit 2; a model that cannot load
    would otherwise fail every record of the caption stage)."""
    model = getattr(args, "caption_model", None)
    if model:
        from laion_audio.captions.gate import GateError, check_model_dir

        try:
            check_model_dir(model, force=getattr(args, "force_caption_model", False))
        except GateError as exc:
            _refuse(f"build: {exc}")
        if "caption" in stages:   # loaded as the stage's worker asks (caption_batch's defaults):
            from laion_audio.captions.worker import captioner_for, release

            captioner_for(model, input_format=getattr(args, "caption_input_format", None),
                          device=None, gen_batch_size=None, params=None)
            if not getattr(args, "inline", False):     # reused only when the stage runs here
                release(model)
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
    return _checks.name_dir_pairs(values)


def parse_stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(set(stages) - set(ALL_STAGES))
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)} in --stages; choose from "
                        + ",".join(ALL_STAGES))
    if not stages:
        raise UserError("--stages is empty; choose from " + ",".join(ALL_STAGES))
    return stages


def validate_build(args: argparse.Namespace, sources: list[str] | None) -> tuple[str, ...]:
    """Everything a build-like command (build, refresh) needs, checked before the work folder
    or Ray exists: stages, sources and their options (paths, CSV columns, credentials, label
    files), the caption model and the eval-audio folders. Returns the stages."""
    stages = parse_stages(getattr(args, "stages", ",".join(ALL_STAGES)))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a work folder")
    _checks.caption_model(getattr(args, "caption_model", None))
    _checks.name_dir_pairs(getattr(args, "eval_audio", []) or [])
    if sources:
        from crawlers import get_source

        for name in _checks.sources(sources):
            if "crawl" in stages:
                _checks.source_options(name, get_source(name).options_from_args(args))
    return stages


def exit_code(summary: dict) -> tuple[int, str | None]:
    """The one place that turns a run's summary into its exit code (docs/cli.md, "Exit codes"),
    with the line that explains a non-zero code.

    - hosts declared unreachable (``unreachable_hosts`` in the summary or a stage's stats,
      records left pending): 3, rerun when the network is back;
    - a full disk (records failed ``no_space``, or a stage stopped by it): 3, free space and rerun;
    - anything else left undone (``problems``: a crawl that stopped early or listed suspiciously
      little, a stage with inputs and no success): 1;
    - accounting that does not close: 1."""
    hosts = list(summary.get("unreachable_hosts") or [])
    for st in summary.get("stages", []):
        hosts += [h for h in st.get("unreachable_hosts") or [] if h not in hosts]
    if hosts:
        return EXIT_UNAVAILABLE, (f"host unreachable: {', '.join(hosts)}; its records are left "
                                  "pending: rerun the same command when the network is back")
    full = sum(n for k, n in (summary.get("failures") or {}).items() if k.endswith(":no_space"))
    if full or any(st.get("no_space") for st in summary.get("stages", [])):
        return EXIT_UNAVAILABLE, ("disk full: free space and rerun the same command (records that "
                                  "hit it are retried without --retry-failed)")
    problems = summary.get("problems") or []
    if problems:
        more = f" (and {len(problems) - 1} more; see the summary)" if len(problems) > 1 else ""
        return EXIT_INCOMPLETE, problems[0] + more
    empty = [st for st in summary.get("stages", [])
             if st.get("inputs", 0) > 0 and st.get("succeeded", 0) == 0
             and not st.get("dropped") and not st.get("pending")]
    if empty:
        st = empty[0]
        top = sorted((st.get("failures") or {}).items(), key=lambda kv: -kv[1])[:3]
        why = f" ({', '.join(f'{k}={v}' for k, v in top)})" if top else ""
        return EXIT_INCOMPLETE, (f"stage {st['stage']} finished none of its {st['inputs']} "
                                 f"records{why}; see stats/build.json")
    if not summary.get("accounting_closes", True):
        return EXIT_INCOMPLETE, "accounting does not close; see stats/build.json"
    return EXIT_OK, None


def finish(summary: dict) -> int:
    """Print the verdict line of a finished run (stderr) and return its exit code."""
    import sys

    code, line = exit_code(summary)
    if line:
        print(f"laion-audio: {line}", file=sys.stderr)
    return code


def prepare_eval_filter(args: argparse.Namespace, stages, mirror: str | None = None) -> None:
    """Eval sets present (fetched now if absent), or --skip-eval-filter: ``args.eval_filter``
    is the line the summary and the report show."""
    from .evalsets import ensure_for_filter

    args.eval_filter = (ensure_for_filter(args.evalsets_cache, skip=args.skip_eval_filter,
                                          mirror=mirror) if "filter" in stages else "")


def run(args: argparse.Namespace) -> int:
    from pipelines.build import run_build
    from laion_audio.report import print_summary

    stages = validate_build(args, args.source)
    if args.source:
        prepare_eval_filter(args, stages)
        summary = run_build(config_from_args(args, args.source, stages))
    else:
        summary = run_demo(args, stages)
    print_summary(summary)
    return finish(summary)


def run_demo(args: argparse.Namespace, stages) -> dict:
    """No --source: all eight sources plus AudioSet from the bundled replay server."""
    from pipelines.build import run_build
    from pipelines.demo import demo_sources, replay_for_demo

    print("no --source given: building the demo corpus from the bundled replay of all eight "
          "sources plus AudioSet (a real HTTP server on 127.0.0.1)")
    with replay_for_demo() as base:
        demo_eval_filter(args, stages, base)
        cfg = config_from_args(args, [], stages)
        cfg.sources = demo_sources(base, cfg.out)
        return run_build(cfg)


def demo_eval_filter(args: argparse.Namespace, stages, base: str) -> None:
    """The demo fetches the eval sets from the replay server's mirror (``/evalsets/``, the
    real files of ../shared/data); without ../shared it says the filter is skipped."""
    from laion_audio.errors import UnavailableError

    try:
        prepare_eval_filter(args, stages, mirror=f"{base}/evalsets")
    except UnavailableError:
        args.skip_eval_filter = True
        args.eval_filter = ("skipped: the demo's eval-set mirror serves ../shared/data, which is "
                            "not beside this checkout; records were NOT checked against eval sets")
        print(f"eval filter {args.eval_filter}")
