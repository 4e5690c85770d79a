"""``laion-audio verify OUT``: decode every sample of every shard and check sizes.json and index."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="check shards: every sample decodes, sizes.json and index.json agree",
        description="Opens every tar under OUT (a folder or s3://...), decodes every FLAC "
                    "(48 kHz mono) and JSON (non-empty text), checks that each sample's members "
                    "are adjacent, that sizes.json lists exactly the tars with their sample "
                    "counts and that index.json matches bytes, sha256 and seconds. Works on "
                    "LAION's own shards too (no index.json). Exit code 1 when anything is wrong.")
    p.add_argument("out", metavar="OUT", help="shard root: a folder or an fsspec URL")
    p.add_argument("--workers", type=int, default=2, help="tars checked at once (threads)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for OUT, e.g. endpoint_url=http://127.0.0.1:9000")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from laion_audio.commands.shard import parse_storage_options
    from laion_audio.shards import verify

    report = verify(args.out, workers=args.workers,
                    storage_options=parse_storage_options(args.storage_option))
    for line in report.lines():
        print(line)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.as_dict(), indent=1, sort_keys=True))
    return 0 if report.ok else 1
