"""Does a caption use a word where human captions never do? The label-set grammar check.

A keyword-to-caption model trained on AudioCaps learns to write captions from keywords that
came out of human captions ("dog", "bark"). AudioSet label sets are keywords of another kind
(genres, instruments, objects: "Music, Bluegrass, Country"), and there a small model keeps
every keyword and invents nothing, so coverage, invented words and repetition all pass, while
it forces the nouns into the verb slot: "Waterfall is being waterfall", "Someone is clothing a
speech and a zipper", "Music is being bluegrass" (docs/captions.md, "The label-set grammar
check"). Fluency under a word trigram did not see it either.

The check: the word right after a copula or auxiliary (is, are, was, were, be, been, being;
not after "there"/"it"/"what"/..., where a noun phrase may follow) must be one that human
AudioCaps captions put in that slot: "is barking", "are heard", "is present", "being played".
The slot words ship in ``manifests/captions/predicate_words.txt`` (built from AudioCaps train
by :func:`build_predicate_words`; regenerate with ``python -m laion_audio.captions.grammar
TRAIN_CSV``), so the check needs no corpus at run time. Held-out human captions (AudioCaps val
and test) break it in 0.4% of captions ("A roaring of wind is continues outside").
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .keywords import STOPWORDS, words

#: the copulas and auxiliaries whose next word is a predicate (a participle or adjective)
COPULAS = frozenset({"is", "are", "was", "were", "be", "been", "being"})
#: after these the copula may introduce a noun ("there is music", "it is rain")
NOUN_SLOT_BEFORE = frozenset({"there", "here", "it", "what", "which", "that", "this"})
#: a slot word must occur this often in the human corpus (a single use can be a typo:
#: "is continues")
MIN_COUNT = 2
PREDICATE_WORDS_FILE = (Path(__file__).resolve().parents[1] / "manifests" / "captions"
                        / "predicate_words.txt")


def predicate_slots(caption: str) -> list[str]:
    """The content words that fill a predicate slot in ``caption``, in order."""
    ws = words(caption)
    out = []
    for i in range(len(ws) - 1):
        if ws[i] in COPULAS and (i == 0 or ws[i - 1] not in NOUN_SLOT_BEFORE):
            nxt = ws[i + 1]
            if nxt not in STOPWORDS and len(nxt) > 1:
                out.append(nxt)
    return out


def build_predicate_words(captions: Iterable[str], min_count: int = MIN_COUNT) -> list[str]:
    """The words human captions put in predicate slots at least ``min_count`` times, sorted."""
    counts = Counter(w for c in captions for w in predicate_slots(c))
    return sorted(w for w, n in counts.items() if n >= min_count)


@lru_cache(maxsize=1)
def predicate_words() -> frozenset[str]:
    """The shipped slot words (``#`` lines are provenance)."""
    try:
        text = PREDICATE_WORDS_FILE.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"the shipped predicate-word list is unreadable ({exc}); "
                           "reinstall laion-audio") from exc
    found = frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))
    if not found:
        raise RuntimeError("the shipped predicate-word list is empty; reinstall laion-audio")
    return found


def misplaced_words(caption: str, allowed: frozenset[str] | None = None) -> list[str]:
    """Words of ``caption`` in a predicate slot that human captions never put there
    ("Music is being bluegrass" -> ["bluegrass"])."""
    allowed = predicate_words() if allowed is None else allowed
    return [w for w in predicate_slots(caption) if w not in allowed]


def misplaced_rate(captions: Iterable[str], allowed: frozenset[str] | None = None) -> float:
    """Share of captions with at least one misplaced word."""
    caps = list(captions)
    return sum(bool(misplaced_words(c, allowed)) for c in caps) / max(len(caps), 1)


def _main(argv: list[str]) -> int:
    """Print the predicate-word list of an AudioCaps-format CSV (its ``caption`` column)."""
    if len(argv) != 1:
        print("usage: python -m laion_audio.captions.grammar AUDIOCAPS_TRAIN_CSV", file=sys.stderr)
        return 2
    from .keywords import sha256_file

    path = Path(argv[0])
    try:
        with open(path, newline="", encoding="utf-8") as f:
            captions = [row["caption"] for row in csv.DictReader(f)]
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        print(f"error: {path}: not a readable AudioCaps CSV ({exc})", file=sys.stderr)
        return 2
    found = build_predicate_words(captions)
    print(f"# Words that human captions put after is/are/was/were/be/been/being (not after "
          f"{'/'.join(sorted(NOUN_SLOT_BEFORE))}), at least {MIN_COUNT} times.")
    print(f"# Built by laion_audio.captions.grammar from AudioCaps {path.name} "
          f"({len(captions)} captions, sha256 {sha256_file(path)}).")
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
