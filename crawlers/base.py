"""What a source is: something that lists records and can fetch one record's audio.

A new source is one module in ``crawlers/`` that defines ``SOURCE = MySource`` (a subclass of
:class:`Source`) plus its replay fixtures; :func:`crawlers.get_source` finds it by name. The
source also owns its caption rule: ``crawl`` yields records whose ``texts`` (and
``caption_provenance``) are already set, or left empty for the keyword-to-caption stage.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

from laion_audio.records import Record


class Source:
    #: registry name, also the shard folder (``<out>/<name>/<split>/N.tar``)
    name: str = ""
    #: the paper's count for this source, for reports (None when not part of the 630K table)
    paper_samples: int | None = None

    def __init__(self, **options: Any):
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Source-specific CLI options (``laion-audio build --source NAME ...``)."""

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict:
        """The constructor options this source registered in :meth:`add_arguments` and that
        the user set on the command line."""
        probe = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(probe)
        dests = [a.dest for a in probe._actions]
        return {d: getattr(args, d) for d in dests if getattr(args, d, None) is not None}

    def crawl(self, state: dict) -> Iterator[Record]:
        """Yield records. ``state`` is a small JSON-able dict persisted between calls, so an
        interrupted crawl can resume paging where it stopped."""
        raise NotImplementedError

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        """Put the record's raw audio on local disk and return its path; raise
        :class:`laion_audio.records.Failure` for a typed failure. Local sources return the
        file they already point at."""
        raise NotImplementedError
