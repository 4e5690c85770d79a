"""``laion-audio replay``: run the offline replay of the sound sites until interrupted.

Prints the base URL; point crawlers at it (e.g. ``--bbc-api URL --bbc-media URL``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("replay", help="serve the sites' formats on 127.0.0.1 (offline demo/tests)")
    p.add_argument("--port", type=int, default=0, help="0 = any free port")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=int, default=None, metavar="N",
                   help="items per source (default: each catalogue's own, ~30); every item's "
                        "audio is distinct, so a large offline build is possible")
    p.add_argument("--shared", type=Path, default=None,
                   help="../shared/data, for real sample values in the catalogues")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="fraction of requests answered with an injected fault")
    p.add_argument("--dead-links", type=float, default=0.0,
                   help="fraction of each released list's items that answer 404 (/laion/...)")
    p.add_argument("--changed-audio", type=float, default=0.0,
                   help="fraction of each released list's items that serve different audio")
    p.add_argument("--freesound-per-day", type=int, default=None,
                   help="Freesound API requests per (simulated) day; POST /_freesound/next_day")
    p.add_argument("--freesound-per-minute", type=int, default=None,
                   help="Freesound API requests per minute")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crawlers.replay import FaultConfig, serve

    if args.items is not None and args.items < 0:
        print("laion-audio replay: --items must be >= 0", file=sys.stderr)
        return 2
    faults = FaultConfig(rate=args.fault_rate, seed=args.seed)
    sizes = {"*": args.items} if args.items is not None else None
    with serve(args.port, seed=args.seed, shared=args.shared, faults=faults, sizes=sizes) as (app, base):
        if args.dead_links or args.changed_audio:
            from crawlers.replay.laion_lists import rot

            truth = rot(app, args.dead_links, args.changed_audio, seed=args.seed)
            print("released lists under " + base + "/laion/ with " + ", ".join(
                f"{s}: {len(t['dead'])} dead, {len(t['changed'])} changed of {t['population']}"
                for s, t in truth.items()), flush=True)
        if args.freesound_per_day is not None or args.freesound_per_minute is not None:
            from crawlers.replay.freesound import set_quota

            set_quota(app, args.freesound_per_minute, args.freesound_per_day)
        counts = ", ".join(f"{name} {len(cat.items)}" for name, cat in sorted(app.catalogues.items()))
        print(f"replay server on {base} (items: {counts}); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
