"""``laion-audio report``: an HTML page with PNG plots (and figures.json) from a build's ledger."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="HTML report with plots from the ledger",
                              description="Samples and hours per source (beside the paper's counts), "
                                          "duration and caption-length histograms, licence mix, "
                                          "failures by stage/type, dropped by reason.")
    p.add_argument("--out", default="laion-audio-out",
                   help="the build's work folder (reads OUT/ledger, writes OUT/report)")
    p.add_argument("--ledger", default=None, help="ledger folder (default OUT/ledger)")
    p.add_argument("--report-dir", default=None, help="where to write (default OUT/report)")
    p.add_argument("--title", default="laion-audio corpus")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from laion_audio.report import write_report

    ledger = Path(args.ledger) if args.ledger else Path(args.out) / "ledger"
    if not ledger.is_dir():
        print(f"no ledger at {ledger}; run `laion-audio build` first or pass --ledger", file=sys.stderr)
        return 2
    page = write_report(ledger, Path(args.report_dir) if args.report_dir else Path(args.out) / "report",
                        title=args.title)
    print(page)
    return 0
