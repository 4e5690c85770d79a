"""``laion-audio evalsets fetch``: download and verify the eval-set id lists into a cache."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("evalsets", help="eval-set registry: fetch the id lists the filters use")
    sub = p.add_subparsers(dest="evalsets_command", metavar="ACTION")
    f = sub.add_parser("fetch", help="download every registry file (official URL or --mirror) and verify its checksum")
    f.add_argument("--cache", help="cache folder (default $LAION_AUDIO_EVALSETS_CACHE or ~/.cache/laion-audio/evalsets)")
    f.add_argument("--mirror", help="folder or URL laid out like the registry paths "
                                    "(default $LAION_AUDIO_EVALSETS_MIRROR; e.g. ../shared/data)")
    f.add_argument("--only", nargs="*", metavar="NAME", help="eval sets to fetch (default all)")
    f.add_argument("--registry", help="registry JSON (default manifests/evalsets.json)")
    f.add_argument("--allow-unverified", action="store_true",
                   help="accept files the registry pins no checksum for (official vggsound.csv)")
    f.set_defaults(func=run_fetch)
    l = sub.add_parser("list", help="what the cache holds, per eval set and split")
    l.add_argument("--cache")
    l.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_fetch(args: argparse.Namespace) -> int:
    from laion_audio.filters import evalsets

    results = evalsets.fetch(args.cache, mirror=args.mirror, names=args.only, registry=args.registry,
                             allow_unverified=args.allow_unverified)
    width = max((len(f"{r.eval_set}/{r.split}") for r in results), default=10)
    for r in results:
        state = ("ok (substitute)" if r.substitute else "ok") if r.ok else "MISSING"
        print(f"{r.eval_set + '/' + r.split:<{width}}  {state:<16} {r.path or r.message}")
    missing = [r for r in results if not r.ok]
    print(f"{len(results) - len(missing)} of {len(results)} files fetched and verified"
          + (f"; {len(missing)} missing" if missing else ""))
    return 1 if missing else 0


def run_list(args: argparse.Namespace) -> int:
    from laion_audio.filters import evalsets

    df = evalsets.load(args.cache)
    if df.empty:
        print("the eval-set cache is empty: run `laion-audio evalsets fetch`")
        return 1
    counts = df.groupby(["eval_set", "split", "id_kind", "substitute"]).size()
    print(counts.to_string())
    return 0
