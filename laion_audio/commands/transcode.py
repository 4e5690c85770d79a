"""``laion-audio transcode IN_DIR OUT_DIR``: every audio file in a folder -> 48 kHz mono FLAC.

The build pipeline's first stages on the local source: resumable, on Ray, with the ledger in
``OUT_DIR/ledger`` mapping each input file (``source_id``) to its FLAC (``flac_path``) or to
its typed failure. ``OUT_DIR/transcoded.csv`` lists the same for people and spreadsheets.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .build import add_execution_arguments, add_transcode_arguments, transcode_options


def register(sub) -> None:
    p = sub.add_parser("transcode", help="transcode a folder of audio to 48 kHz mono FLAC",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("input", metavar="IN_DIR", help="folder of audio files (searched recursively)")
    p.add_argument("out", metavar="OUT_DIR", help="work folder: audio/, ledger/, transcoded.csv")
    add_execution_arguments(p)
    add_transcode_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from laion_audio.ledger import Ledger
    from laion_audio.records import Record
    from laion_audio.report import print_summary
    from pipelines.build import BuildConfig, run_build

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
    print_summary(summary)
    print(f"  list: {out / 'transcoded.csv'}")
    return 0 if summary["accounting_closes"] else 1
