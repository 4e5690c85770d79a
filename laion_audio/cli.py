"""The ``laion-audio`` command. Each subcommand lives in ``laion_audio/commands/<name>.py``
and defines ``register(subparsers)``, which adds its parser and sets ``func``; this file only
discovers them, so adding a command never edits this file.

It also holds what every command shares: one-line usage errors, ``-v`` before or after the
subcommand, defaults shown in every ``--help``, and the top-level handler that turns a
:class:`~laion_audio.errors.UserError` into one line on stderr and its exit code (see
docs/cli.md, "Exit codes")."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import shutil
import sys
import textwrap
from pathlib import Path

from . import __version__, commands
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, UnavailableError, UserError, disk_full

_REST_LITERAL = re.compile(r"``([^`]+)``")
_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """reST markup a docstring may carry (``x``, :class:`X`) as terminal text (`x`, X)."""
    return _REST_ROLE.sub(r"\1", _REST_LITERAL.sub(r"`\1`", text))


class HelpFormatter(argparse.HelpFormatter):
    """Every option shows its default (unless its help already names one); descriptions are
    re-wrapped paragraph by paragraph (indented blocks kept) and free of reST markup."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or default == [] or "default" in text.lower()
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})".strip()

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", plain(textwrap.dedent(text)).strip()):
            lines = para.splitlines()
            if any(line.startswith("    ") for line in lines):   # a literal block: as written
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr (and exit 2), not the whole usage block."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="laion-audio",
        description="Build, refresh and train on LAION-Audio-630K-style audio-caption corpora.")
    parser.add_argument("--version", action="version", version=f"laion-audio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(sub)
    for child in _subparsers(parser):
        child.formatter_class = HelpFormatter     # also for parsers that asked for another one
        if "-v" not in child._option_string_actions:
            child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="debug logging (also accepted before the command)")
    return parser


def _created_folder(args: argparse.Namespace) -> Path | None:
    """The local work folder this command would create, if it does not exist yet."""
    out = getattr(args, "out", None)
    if not isinstance(out, (str, os.PathLike)) or "://" in str(out):
        return None
    path = Path(out)
    return None if path.exists() else path


def _as_user_error(exc: Exception) -> UserError | None:
    """Typed errors raised below the commands that are the user's to fix."""
    if isinstance(exc, UserError):
        return exc
    full = disk_full(exc)
    if full is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return UnavailableError(f"disk full{where}: free some space (or choose another --out) "
                                "and rerun the same command; finished work is kept")
    from .ledger import LedgerError

    if isinstance(exc, LedgerError):
        return UserError(str(exc))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else EXIT_USAGE
    created = _created_folder(args)
    from .commands._deprecated import reset

    reset()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # a command that cannot resume says so in its defaults (``interrupted=...``)
        print(getattr(args, "interrupted", "interrupted; rerun the same command to resume"),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        err = _as_user_error(exc)
        if err is None:
            raise          # a bug of ours: keep the traceback
        if created is not None and created.exists() and err.exit_code == EXIT_USAGE:
            shutil.rmtree(created, ignore_errors=True)   # we made it; a config error leaves none
        print(f"laion-audio {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":      # python -m laion_audio.cli, as python -m laion_audio
    sys.exit(main())
