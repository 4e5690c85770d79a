"""``laion-audio evalsets fetch``: download and verify the eval-set id lists into a cache."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from ..errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("evalsets", help="eval-set registry: fetch the id lists the filters use")
    sub = p.add_subparsers(dest="evalsets_command", metavar="ACTION")
    f = sub.add_parser("fetch", help="download every registry file (official URL or --mirror) and verify its checksum")
    f.add_argument("--evalsets-cache", "--cache", dest="cache", metavar="DIR",
                   help="cache folder (default $LAION_AUDIO_EVALSETS_CACHE or "
                        "~/.cache/laion-audio/evalsets; --cache is the old spelling)")
    f.add_argument("--mirror", help="folder or URL laid out like the registry paths "
                                    "(default $LAION_AUDIO_EVALSETS_MIRROR; e.g. ../shared/data)")
    f.add_argument("--only", nargs="*", metavar="NAME", help="eval sets to fetch (default all)")
    f.add_argument("--registry", help="registry JSON (default manifests/evalsets.json)")
    f.add_argument("--allow-unverified", action="store_true",
                   help="accept files the registry pins no checksum for (official vggsound.csv)")
    f.set_defaults(func=run_fetch)
    l = sub.add_parser("list", help="what the cache holds, per eval set and split")
    l.add_argument("--evalsets-cache", "--cache", dest="cache", metavar="DIR",
                   help="cache folder (default $LAION_AUDIO_EVALSETS_CACHE or "
                        "~/.cache/laion-audio/evalsets; --cache is the old spelling)")
    l.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@contextlib.contextmanager
def quiet_retries():
    """The HTTP layer logs each retry at INFO; while fetching eval sets the per-file line (or
    the summary) already names each problem once, so retries show only with -v."""
    logger = logging.getLogger("laion_audio.http")
    old = logger.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def validate_fetch(args: argparse.Namespace) -> None:
    """--only names must be in the registry; a local --mirror must exist."""
    from pathlib import Path

    from laion_audio.filters import evalsets

    if args.registry and not Path(args.registry).is_file():
        raise UserError(f"--registry {args.registry} does not exist")
    if args.only is not None and not args.only:
        raise UserError("--only needs at least one eval-set name")
    unknown = evalsets.unknown_names(args.only, args.registry)
    if unknown:
        known = sorted(es.name for es in evalsets.load_registry(args.registry))
        raise UserError(f"unknown eval set(s) {', '.join(unknown)}; the registry has "
                        + ", ".join(known))
    if args.mirror and "://" not in args.mirror and not Path(args.mirror).is_dir():
        raise UserError(f"--mirror {args.mirror} is not a folder")


def run_fetch(args: argparse.Namespace) -> int:
    from laion_audio.filters import evalsets

    validate_fetch(args)
    width = 28

    def show(r) -> None:     # as each file is done: no silent minutes, each problem once
        state = ("ok (substitute)" if r.substitute else "ok") if r.ok else "MISSING"
        print(f"{r.eval_set + '/' + r.split:<{width}}  {state:<16} {r.path or r.message}", flush=True)

    print(f"fetching eval-set files from {args.mirror or 'their official URLs'} ...", flush=True)
    with quiet_retries():
        results = evalsets.fetch(args.cache, mirror=args.mirror, names=args.only,
                                 registry=args.registry, allow_unverified=args.allow_unverified,
                                 progress=show)
    missing = [r for r in results if not r.ok]
    print(f"{len(results) - len(missing)} of {len(results)} files fetched and verified"
          + (f"; {len(missing)} missing" if missing else ""))
    if missing and len(missing) == len(results):
        print("laion-audio evalsets: no file could be fetched (offline? pass --mirror DIR)",
              file=sys.stderr)
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


def ensure_for_filter(cache: str | None, *, skip: bool, mirror: str | None = None) -> str:
    """The eval-overlap filter never runs silently empty: with eval sets in the cache it uses
    them; without, it fetches the registry's now (from ``mirror`` when given); ``skip``
    (--skip-eval-filter) turns it off on purpose. Returns the line the stats and report show;
    raises when nothing could be fetched (before any work starts)."""
    from laion_audio.errors import UnavailableError
    from laion_audio.filters import evalsets

    if skip:
        return "skipped (--skip-eval-filter): records were NOT checked against eval sets"
    have = evalsets.fetched(cache)
    if have:
        return f"{len(have)} eval-set files from the cache"
    print(f"no eval sets fetched yet: fetching the registry's eval sets from "
          f"{mirror or 'their official URLs'} (once; `laion-audio evalsets fetch` does the same)",
          flush=True)
    with quiet_retries():
        results = evalsets.fetch(cache, mirror=mirror)
    ok = [r for r in results if r.ok]
    if not ok:
        raise UnavailableError("no eval-set file could be fetched (offline?): run `laion-audio "
                               "evalsets fetch --mirror DIR`, or pass --skip-eval-filter to build "
                               "without the eval-overlap filter")
    missing = [f"{r.eval_set}/{r.split}" for r in results if not r.ok]
    return (f"{len(ok)} of {len(results)} eval-set files fetched now"
            + (f" (missing: {', '.join(missing)})" if missing else ""))
