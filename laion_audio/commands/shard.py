"""``laion-audio shard --out WORK``: write the ledger's ready records into LAION-layout shards."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError, disk_full
from . import _checks
from ._checks import positive_int
from ._deprecated import announce, deprecated_positional
from .build import DEFAULT_OUT, add_shard_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "shard", help="write ready records into WebDataset shards (LAION layout)",
        description="Reads the records of the ledger (OUT/ledger) that are transcoded/captioned/"
                    "sharded and have a caption, writes ROOT/<dataset>/<split>/N.tar + sizes.json "
                    "+ index.json (ROOT, --shards-to, may be s3://bucket/prefix; default OUT/shards), and records split/shard in the ledger. "
                    "Deterministic for a seed; rerun after an interruption to resume. "
                    "See docs/shard-format.md.")
    p.add_argument("--out", default=DEFAULT_OUT, help="the build's work folder (reads OUT/ledger)")
    p.add_argument("--ledger", default=None, metavar="LEDGER_DIR",
                   help="ledger folder (default: OUT/ledger)")
    p.add_argument("ledger_pos", nargs="?", metavar="LEDGER_DIR", help=argparse.SUPPRESS)
    p.add_argument("root_pos", nargs="?", metavar="ROOT", help=argparse.SUPPRESS)
    add_shard_arguments(p, keep_audio=False)
    p.add_argument("--workers", type=positive_int, default=2, help="tars written at once (threads)")
    p.add_argument("--paths-relative-to", default=None,
                   help="folder that relative flac paths in the ledger start from "
                        "(default: the folder holding LEDGER_DIR, i.e. the build's work folder)")
    add_storage_option(p)
    p.add_argument("--report", default=None, help="also write the report as JSON to this file")
    p.set_defaults(func=run)


def add_storage_option(p: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` for an fsspec shard root (``shard``, ``verify``)."""
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for the shard root, e.g. "
                        "endpoint_url=http://127.0.0.1:9000 (repeatable)")


def parse_storage_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--storage-option wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def validate_shard(args: argparse.Namespace) -> None:
    """Ledger and shard root from --ledger/--shards-to, the old positionals or --out."""
    old_ledger = deprecated_positional(args.ledger_pos, "LEDGER_DIR", "--out WORK (or --ledger DIR)")
    old_root = deprecated_positional(args.root_pos, "OUT", "--shards-to ROOT")
    args.ledger = args.ledger or old_ledger or str(Path(args.out) / "ledger")
    _checks.ledger_folder(args.ledger, "ledger")
    args.shards_to = args.shards_to or old_root or str(Path(args.ledger).parent / "shards")
    parse_storage_options(args.storage_option)
    if args.paths_relative_to:
        _checks.existing_folder(args.paths_relative_to, "--paths-relative-to")
    _checks.writable_file(args.report, "--report")
    announce()


def run(args: argparse.Namespace) -> int:
    from laion_audio.ledger import LedgerError, writing
    from laion_audio.records import Status
    from laion_audio.shards import READY_STATUSES, ShardError, ShardRun
    from laion_audio.workdir import WorkDir
    from crawlers.crawl import write_json
    from pipelines.build import shard_ledger

    validate_shard(args)
    ledger_dir = Path(args.ledger)
    work = WorkDir.of_ledger(ledger_dir, args.paths_relative_to)
    try:
        with writing(ledger_dir) as ledger:
            work.remove_partial_files()    # left by a killed run (a restore, a transcode)
            # the build's shard entry, over every ready record that has a caption
            records, report, waiting, stats = shard_ledger(
                ledger, work, args.shards_to, statuses=READY_STATUSES, require_text=True,
                seed=args.seed, test_fraction=args.test_fraction,
                samples_per_shard=args.samples_per_shard, shard_bytes=args.shard_bytes,
                workers=args.workers, storage_options=parse_storage_options(args.storage_option))
            ledger.compact()
    except (ShardError, LedgerError, ValueError) as exc:
        if disk_full(exc):
            raise
        raise UserError(str(exc)) from exc
    if stats.extra.get("no_space"):
        print(f"shard: {stats.extra['no_space']}; free space and rerun (nothing was marked sharded)",
              file=sys.stderr)
        return 3
    for line in ShardRun(records, report).lines():
        print(line)
    if waiting:
        print(f"  {waiting} transcoded records have no caption yet and were left out")
    if stats.extra.get("flac_restored"):
        print(f"  {stats.extra['flac_restored']} FLACs released to the previous shard root were "
              "copied back into the work folder first")
    if args.report:
        # published: no folder of this machine in it (the terminal above shows the full paths)
        write_json(Path(args.report), report, lambda text: work.public(text, args.shards_to))
    if records and not any(r.status == Status.SHARDED for r in records):
        print(f"shard: no record was sharded ({len(records)} ready; see the lines above)",
              file=sys.stderr)
        return 1
    return 0
