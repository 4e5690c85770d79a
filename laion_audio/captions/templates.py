"""The paper's template captions (LAION-AI/audio-dataset, reference/sources.md §3.1).

LAION wrote AudioSet and FSD50K labels as "The sounds of A, B and C" / "The sound of A" with
no final period and no Oxford comma; UrbanSound8K as "The sound of siren." and ESC-50 as
"The sound of the insects". Label text is used verbatim (AudioSet display names keep their own
commas, e.g. "Male speech, man speaking"), as LAION's scripts did.
"""
from __future__ import annotations

from typing import Callable, Sequence


def _join(labels: Sequence[str]) -> str:
    if len(labels) == 1:
        return labels[0]
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def sounds_of(labels: Sequence[str]) -> str:
    """AudioSet / FSD50K: "The sounds of A, B and C", "The sound of A"."""
    labels = [l for l in labels if l]
    if not labels:
        raise ValueError("a template caption needs at least one label")
    return ("The sound of " if len(labels) == 1 else "The sounds of ") + _join(labels)


def sound_of_period(labels: Sequence[str]) -> str:
    """UrbanSound8K: "The sound of siren." (class names joined, final period)."""
    return sounds_of(labels) + "."


def sound_of_the(labels: Sequence[str]) -> str:
    """ESC-50: "The sound of the insects" (ESC-50 class names are lower-case nouns)."""
    labels = [l for l in labels if l]
    if not labels:
        raise ValueError("a template caption needs at least one label")
    return "The sound of the " + _join(labels)


def speech(transcript: Sequence[str]) -> str:
    """Speech corpora: 'The person is saying "<transcript>"'."""
    return f'The person is saying "{" ".join(transcript).strip()}"'


#: Selectable by name (``--template``); ``sounds_of`` is the default (AudioSet's form).
TEMPLATES: dict[str, Callable[[Sequence[str]], str]] = {
    "sounds_of": sounds_of,
    "sound_of_period": sound_of_period,
    "sound_of_the": sound_of_the,
    "speech": speech,
}


def render(name: str, labels: Sequence[str]) -> str:
    try:
        template = TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None
    return template(list(labels))
