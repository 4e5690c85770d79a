"""Old spellings kept for one release (positional work folders, ``--cache``): they still work
and, once the command's options are valid, say on stderr what the new spelling is (a usage
error stays one line)."""
from __future__ import annotations

import sys

_notes: list[str] = []


def deprecated_positional(value, old: str, new: str):
    """``value`` of an old positional argument (a list or a string); notes the new spelling
    when it was given."""
    if value not in (None, [], ""):
        _notes.append(f"the positional {old} is deprecated; use {new}")
    return value


def deprecated_option(old: str, new: str) -> None:
    _notes.append(f"{old} is deprecated; use {new}")


def reset() -> None:
    """Forget notes of an earlier command in this process (``cli.main`` called twice)."""
    _notes.clear()


def announce() -> None:
    """Print the collected notes (call at the end of a command's validation)."""
    for note in dict.fromkeys(_notes):
        print(f"laion-audio: note: {note} (the old spelling goes in the next release)",
              file=sys.stderr)
    _notes.clear()
