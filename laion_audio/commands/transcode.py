"""``laion-audio transcode --input IN_DIR --out OUT_DIR``: every audio file in a folder -> 48 kHz mono FLAC.

The build pipeline's first stages on the local source: resumable, with the ledger in
``OUT_DIR/ledger`` mapping each input file (``source_id``) to its FLAC (``flac_path``) or to
its typed failure. ``OUT_DIR/transcoded.csv`` lists the same for people and spreadsheets.
(``transcode IN_DIR OUT_DIR``, the old positional spelling, still works for one release.)
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..errors import UserError
from . import _checks
from ._deprecated import announce, deprecated_positional
from .build import add_execution_arguments, add_transcode_arguments, finish, transcode_options


def register(sub) -> None:
    p = sub.add_parser("transcode", help="transcode a folder of audio to 48 kHz mono FLAC",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--input", metavar="IN_DIR", help="folder of audio files (searched recursively)")
    p.add_argument("--out", metavar="OUT_DIR", help="work folder: audio/, ledger/, transcoded.csv")
    p.add_argument("input_pos", nargs="?", metavar="IN_DIR", help=argparse.SUPPRESS)
    p.add_argument("out_pos", nargs="?", metavar="OUT_DIR", help=argparse.SUPPRESS)
    add_execution_arguments(p)
    add_transcode_arguments(p)
    p.set_defaults(func=run)


def validate_transcode(args: argparse.Namespace) -> None:
    """IN_DIR exists, OUT_DIR is given and is not a file (old positional spellings folded in)."""
    args.input = args.input or deprecated_positional(args.input_pos, "IN_DIR", "--input IN_DIR")
    args.out = args.out or deprecated_positional(args.out_pos, "OUT_DIR", "--out OUT_DIR")
    if not args.input:
        raise UserError("name the folder of audio files with --input IN_DIR")
    _checks.existing_folder(args.input, "--input")
    if not args.out:
        raise UserError("name the work folder with --out OUT_DIR")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a work folder")
    announce()


def run(args: argparse.Namespace) -> int:
    from laion_audio.ledger import Ledger
    from laion_audio.records import Record
    from laion_audio.report import print_summary
    from pipelines.build import BuildConfig, run_build

    validate_transcode(args)
    out = Path(args.out)
    cfg = BuildConfig(out=out, sources={"local": {"input": args.input}}, workers=args.workers,
                      ray_address=args.ray_address, inline=args.inline, batch_size=args.batch_size,
                      transcode=transcode_options(args), retry_failed=args.retry_failed,
                      keep_raw=getattr(args, "keep_raw", False),
                      stages=("crawl", "fetch", "transcode"))
    summary = run_build(cfg)
    with Ledger(out / "ledger", lock=False) as ledger, \
            (out / "transcoded.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["input", "flac", "seconds", "input_rate", "input_channels", "status",
                         "failure_code", "failure_message"])
        for batch in ledger.select().to_batches(max_chunksize=4096):   # not the corpus at once
            for row in batch.to_pylist():
                r = Record.from_row(row)
                writer.writerow([r.source_id, r.flac_path, r.audio_duration, r.input_sample_rate,
                                 r.input_channels, r.status, r.failure_code, r.failure_message])
    print_summary(summary, command="transcode")
    print(f"  list: {out / 'transcoded.csv'}")
    return finish(summary)
