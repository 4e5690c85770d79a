"""``laion-audio verify --out WORK`` (or ``--shards-to ROOT``): decode every sample of every shard and check sizes.json and index."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from . import _checks
from ._checks import positive_int
from ._deprecated import announce, deprecated_positional
from .build import DEFAULT_OUT
from .shard import add_storage_option, parse_storage_options


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="check shards: every sample decodes, sizes.json and index.json agree",
        description="Opens every tar under OUT (a folder or s3://...), decodes every FLAC "
                    "(48 kHz mono) and JSON (non-empty text), checks that each sample's members "
                    "are adjacent, that sizes.json lists exactly the tars with their sample "
                    "counts and that index.json matches bytes, sha256 and seconds. Works on "
                    "LAION's own shards too (no index.json). Exit code 1 when anything is wrong.")
    p.add_argument("--out", default=DEFAULT_OUT, help="the build's work folder (checks OUT/shards)")
    p.add_argument("--shards-to", default=None, metavar="ROOT",
                   help="shard root: a folder or an fsspec URL (default: OUT/shards)")
    p.add_argument("root_pos", nargs="?", metavar="ROOT", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=positive_int, default=2, help="tars checked at once (threads)")
    add_storage_option(p)
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.set_defaults(func=run)


def validate_verify(args: argparse.Namespace) -> None:
    old = deprecated_positional(args.root_pos, "OUT", "--shards-to ROOT (or --out WORK)")
    args.shards_to = args.shards_to or old or str(Path(args.out) / "shards")
    if "://" not in args.shards_to and not Path(args.shards_to).is_dir():
        raise UserError(f"no shards at {args.shards_to} (not a folder); pass --shards-to ROOT "
                        "or the build's --out")
    _checks.writable_file(args.json_out, "--json")
    announce()


def run(args: argparse.Namespace) -> int:
    from laion_audio.shards import verify

    validate_verify(args)
    report = verify(args.shards_to, workers=args.workers,
                    storage_options=parse_storage_options(args.storage_option))
    from laion_audio.http import redact

    for line in report.lines():
        print(redact(line))       # a shard root URL may carry user:password@ or ?token=
    if args.json_out:
        # published: a local shard root becomes its last name (the terminal shows the full path)
        from crawlers.crawl import write_json
        from laion_audio.workdir import WorkDir

        root = args.shards_to
        public = redact
        if "://" not in root:
            public = lambda text: redact(WorkDir(Path(root).resolve().parent).public(text, root))  # noqa: E731
        write_json(Path(args.json_out), report.as_dict(), public)
    return 0 if report.ok else 1
