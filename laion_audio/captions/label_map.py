"""Map a human caption's words to AudioSet label names, so training pairs look like the
caption stage's input ("Male speech, man speaking", "Dog", "Bark") instead of bare words.

Every comma-separated synonym of a label ("Vehicle horn", "car horn", "honking") becomes a
sequence of content lemmas (``keywords.keyword_lemmas``, the same keys coverage uses). A
caption's content words are scanned left to right; at each position the longest run of
consecutive content words equal to some synonym wins ("car horn" before "horn" or "car") and
emits that label's full display name, each label at most once. Words no label covers stay as
their base form (``keywords.base_form``), as in ``caption_keywords``, unless an earlier word
with the same lemma was already used ("a woman speaks, then another woman whimpers and speaks"
-> "Female speech, woman speaking", "Whimper": the later "woman" and "speaks" repeat the label).

Ambiguity (one lemma sequence belongs to several labels, e.g. "crow" is both "Crow" and
"Crowing, cock-a-doodle-doo" after stemming) is settled by, in order:
0. a label this caption already emitted (the words just repeat it: "car horn honks" is one
   "Vehicle horn, car horn, honking", not also the goose's "Honk");
1. the synonym written exactly as the caption's words (base forms: "crowing" -> "Crowing",
   "crow" -> "Crow", "honking" -> "Vehicle horn, car horn, honking", "honks" -> "Honk");
2. the label's first (primary) synonym over a later one ("dog" -> "Dog", not "Canidae, dogs, wolves");
3. a label of the 527-class list over an ontology-only one (segment CSVs use the class list);
4. the lower class index (ontology order for ontology-only labels).
Ontology entries marked "abstract" or "blacklist" are never targets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from .keywords import AudioSetLabels, base_form, content_words, keyword_lemmas, lemma


@dataclass(frozen=True)
class _Synonym:
    name: str                  # the label's display name, as AudioSetLabels.label_names gives it
    surface: tuple[str, ...]   # the synonym's content words in base form (tie-break 1)
    primary: bool              # first synonym of the name (tie-break 2)
    rank: int                  # class-list index, then ontology order after all classes (3 and 4)


class LabelMapper:
    """Caption -> keywords with AudioSet label names where the caption names a label."""

    def __init__(self, labels: AudioSetLabels):
        self.labels = labels
        classes = set(labels.class_mids)
        mids = list(labels.class_mids)
        mids += [m for m in labels.names if m not in classes and m not in labels.restricted]
        self._by_lemmas: dict[tuple[str, ...], list[_Synonym]] = {}
        for rank, mid in enumerate(mids):
            name = labels.label_names([mid])[0]
            for i, alt in enumerate(name.split(",")):
                key = tuple(keyword_lemmas(alt))
                if not key:          # "Noise": only stopwords
                    continue
                syn = _Synonym(name, tuple(base_form(w) for w in content_words(alt)), i == 0, rank)
                self._by_lemmas.setdefault(key, []).append(syn)
        self.max_len = max((len(k) for k in self._by_lemmas), default=0)
        self._names = {s.name for syns in self._by_lemmas.values() for s in syns}
        self.n_labels = len(mids)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> "LabelMapper":
        """From a folder with ``class_labels_indices.csv`` (and ``ontology.json`` when present)."""
        return cls(AudioSetLabels.from_dir(folder))

    def _best(self, key: tuple[str, ...], surface: tuple[str, ...], emitted: set[str]) -> str | None:
        candidates = self._by_lemmas.get(key)
        if not candidates:
            return None
        best = min(candidates, key=lambda s: (s.name not in emitted, s.surface != surface,
                                              not s.primary, s.rank))
        return best.name

    def map_caption(self, caption: str, max_keywords: int = 6) -> list[str]:
        """Keywords in caption order: matched label display names (each once) and the
        remaining content words in base form (each lemma once); at most ``max_keywords``."""
        cw = content_words(caption)
        lemmas = [lemma(w) for w in cw]
        surface = [base_form(w) for w in cw]
        out: list[str] = []
        emitted: set[str] = set()
        seen_lemmas: set[str] = set()
        i = 0
        while i < len(cw) and len(out) < max_keywords:
            for n in range(min(self.max_len, len(cw) - i), 0, -1):
                name = self._best(tuple(lemmas[i:i + n]), tuple(surface[i:i + n]), emitted)
                if name is not None:
                    if name not in emitted:
                        emitted.add(name)
                        out.append(name)
                    seen_lemmas.update(lemmas[i:i + n])
                    i += n
                    break
            else:
                if lemmas[i] not in seen_lemmas:
                    seen_lemmas.add(lemmas[i])
                    out.append(surface[i])
                i += 1
        return out

    def mapped_labels(self, keywords: Sequence[str]) -> list[str]:
        """The keywords that are label names (for counting how often captions map)."""
        return [k for k in keywords if k in self._names]
