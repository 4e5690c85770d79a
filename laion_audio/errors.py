"""Errors a user can fix, and the exit codes of the ``laion-audio`` command.

``cli.main`` turns a :class:`UserError` into one line on stderr and its exit code, never a
traceback; any other exception is a bug of ours and keeps its traceback. Commands check their
options with ``validate_*`` functions before they create a work folder or start Ray, so a
mistake costs seconds, not a run.
"""
from __future__ import annotations

import errno

#: the command did what was asked
EXIT_OK = 0
#: it ran, but the result is incomplete: a stage ended with 0 successes of > 0 inputs, the
#: accounting does not close, ``verify`` found a problem, eval sets are missing
EXIT_INCOMPLETE = 1
#: a usage or configuration mistake, found before any work started (nothing was created)
EXIT_USAGE = 2
#: the outside world stopped the run (disk full, hosts unreachable): rerun the same command
#: once it is fixed; finished work is kept and pending records resume
EXIT_UNAVAILABLE = 3
#: interrupted (Ctrl-C); rerun the same command to resume
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake the user can fix: the message says what is wrong and what to do. A
    ValueError, so callers that already catch bad values keep working."""

    exit_code = EXIT_USAGE


class IncompleteError(UserError):
    """The run went through but produced nothing usable (exit 1): nothing to train on, a loss
    that diverged, nothing left to evaluate."""

    exit_code = EXIT_INCOMPLETE


class UnavailableError(UserError):
    """The environment, not the options, stopped the run (disk full, network down)."""

    exit_code = EXIT_UNAVAILABLE


def disk_full(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in ``exc`` or its causes, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
