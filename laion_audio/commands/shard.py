"""``laion-audio shard LEDGER_DIR OUT``: write the ledger's ready records into LAION-layout shards."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "shard", help="write ready records into WebDataset shards (LAION layout)",
        description="Reads the records of LEDGER_DIR that are transcoded/captioned/sharded and have "
                    "a caption, writes OUT/<dataset>/<split>/N.tar + sizes.json + index.json "
                    "(OUT may be s3://bucket/prefix), and records split/shard in the ledger. "
                    "Deterministic for a seed; rerun after an interruption to resume. "
                    "See docs/shard-format.md.")
    p.add_argument("ledger", metavar="LEDGER_DIR", help="ledger folder (as written by build)")
    p.add_argument("out", metavar="OUT", help="shard root: a folder or an fsspec URL (s3://...)")
    p.add_argument("--seed", type=int, default=1234, help="split and order seed (default 1234)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of ids that go to the test split (default 0.1)")
    p.add_argument("--samples-per-shard", type=int, default=None,
                   help="samples per tar (default 512; with --shard-bytes, an extra cap)")
    p.add_argument("--shard-bytes", type=parse_bytes, default=None, metavar="N",
                   help="roll to a new tar before N bytes (e.g. 500M, 1G; a tar is larger only "
                        "when one sample alone is)")
    p.add_argument("--workers", type=int, default=2, help="tars written at once (threads)")
    p.add_argument("--paths-relative-to", default=None,
                   help="folder that relative flac paths in the ledger start from "
                        "(default: the folder holding LEDGER_DIR, i.e. the build's work folder)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for OUT, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)")
    p.add_argument("--report", default=None, help="also write the report as JSON to this file")
    p.set_defaults(func=run)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_bytes(text: str) -> int:
    """``1000000``, ``500M``, ``1G``, ``1GiB`` -> bytes (decimal units; ``Ki``/``Mi``/``Gi`` binary)."""
    t = text.strip().upper().removesuffix("B")
    num = t.rstrip("KMGTI")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (try 500M or 1G)")
    if value < 1:
        raise argparse.ArgumentTypeError(f"byte size must be positive: {text!r}")
    return int(value)


def parse_storage_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--storage-option wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from laion_audio.ledger import LedgerError, writing
    from laion_audio.shards import READY_STATUSES, ShardError, ShardRun
    from laion_audio.workdir import WorkDir
    from pipelines.build import shard_ledger

    ledger_dir = Path(args.ledger)
    if not ledger_dir.is_dir():
        print(f"no ledger at {ledger_dir}")
        return 2
    work = WorkDir.of_ledger(ledger_dir, args.paths_relative_to)
    try:
        with writing(ledger_dir) as ledger:
            # the build's shard entry, over every ready record that has a caption
            records, report, waiting, stats = shard_ledger(
                ledger, work, args.out, statuses=READY_STATUSES, require_text=True,
                seed=args.seed, test_fraction=args.test_fraction,
                samples_per_shard=args.samples_per_shard, shard_bytes=args.shard_bytes,
                workers=args.workers, storage_options=parse_storage_options(args.storage_option))
            ledger.compact()
    except (ShardError, LedgerError, ValueError) as exc:
        print(f"shard: {exc}")
        return 2
    if stats.extra.get("no_space"):
        print(f"shard: {stats.extra['no_space']}; free space and rerun (nothing was marked sharded)",
              file=sys.stderr)
        return 1
    for line in ShardRun(records, report).lines():
        print(line)
    if waiting:
        print(f"  {waiting} transcoded records have no caption yet and were left out")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0
