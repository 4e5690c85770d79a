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
import random
import re
from dataclasses import dataclass
from typing import Sequence

from .keywords import _WORD, STOPWORDS, AudioSetLabels, base_form, content_words, keyword_lemmas, lemma


@dataclass(frozen=True)
class _Synonym:
    name: str                  # the label's display name, as AudioSetLabels.label_names gives it
    surface: tuple[str, ...]   # the synonym's content words in base form (tie-break 1)
    primary: bool              # first synonym of the name (tie-break 2)
    rank: int                  # class-list index, then ontology order after all classes (3 and 4)


@dataclass(frozen=True)
class _Match:
    keyword: str               # a label's display name, or a content word's base form
    is_label: bool
    words: tuple[int, ...]     # indices of the caption words (``_WORD`` matches) it came from


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

    def _scan(self, caption: str, max_keywords: int = 6) -> list[_Match]:
        """The keywords in caption order, each with the raw words it came from."""
        raw = list(_WORD.finditer(caption))
        index = [i for i, m in enumerate(raw) if m.group(0).lower() not in STOPWORDS and len(m.group(0)) > 1]
        cw = [raw[i].group(0).lower() for i in index]
        lemmas = [lemma(w) for w in cw]
        surface = [base_form(w) for w in cw]
        out: list[_Match] = []
        emitted: set[str] = set()
        seen_lemmas: set[str] = set()
        i = 0
        while i < len(cw) and len(out) < max_keywords:
            for n in range(min(self.max_len, len(cw) - i), 0, -1):
                name = self._best(tuple(lemmas[i:i + n]), tuple(surface[i:i + n]), emitted)
                if name is not None:
                    if name not in emitted:
                        emitted.add(name)
                        out.append(_Match(name, True, tuple(index[i:i + n])))
                    seen_lemmas.update(lemmas[i:i + n])
                    i += n
                    break
            else:
                if lemmas[i] not in seen_lemmas:
                    seen_lemmas.add(lemmas[i])
                    out.append(_Match(surface[i], False, (index[i],)))
                i += 1
        return out

    def map_caption(self, caption: str, max_keywords: int = 6) -> list[str]:
        """Keywords in caption order: matched label display names (each once) and the
        remaining content words in base form (each lemma once); at most ``max_keywords``."""
        return [m.keyword for m in self._scan(caption, max_keywords)]

    def mapped_labels(self, keywords: Sequence[str]) -> list[str]:
        """The keywords that are label names (for counting how often captions map)."""
        return [k for k in keywords if k in self._names]

    # ----------------------------------------------------------------- rare labels by sibling

    def sibling_pairs(self, captions: Sequence[str], per_label: int = 30, *, seed: int = 0,
                      max_keywords: int = 6, passes: int = 3) -> list[tuple[list[str], str]]:
        """Extra (keywords, caption) pairs for the class labels the captions rarely name.

        AudioCaps train captions name 383 of AudioSet's 527 classes, and 29% of the labels in real
        eval label sets fewer than 5 times (genres, instruments, objects: "Bluegrass",
        "Zither"); a model that never saw a label cannot know where it goes and writes "Music
        is being bluegrass". Here a label the caption names as a plain noun ("country" in
        "country music plays") is replaced, in the caption text and in its keywords, by an
        ontology sibling (another child of one of its parents: "Bluegrass"), until each class
        is named ``per_label`` times or the captions run out. The sentences can be odd ("a dog
        meows"), but input and target agree, and the label sits where its kind of word goes.

        Only nouns are replaced, never a verb form (the inflection would be wrong): the
        caption's words must be in base form, not -ing/-ed, not right after a copula; the
        sibling's first synonym at most three words, not -ing/-ed, with no "or"/"and"
        ("Drawer open or close"). The new caption must map back to the sibling."""
        labels = self.labels
        mid_of = {labels.names[m]: m for m in labels.class_mids}
        classes = set(labels.class_mids)
        parents: dict[str, list[str]] = {}
        for parent, kids in labels.children.items():
            for kid in kids:
                parents.setdefault(kid, []).append(parent)
        count: dict[str, int] = {}
        scans = []
        for cap in captions:
            matches = self._scan(cap, max_keywords)
            scans.append(matches)
            for m in matches:
                if m.is_label:
                    count[m.keyword] = count.get(m.keyword, 0) + 1

        def siblings(name: str) -> list[str]:
            mid = mid_of.get(name)
            out = []
            for parent in parents.get(mid, ()):
                for kid in labels.children.get(parent, ()):
                    if kid != mid and kid in classes and kid not in labels.restricted:
                        out.append(labels.names[kid])
            return sorted(set(out))

        rng = random.Random(seed)
        order = list(range(len(captions)))
        pairs: list[tuple[list[str], str]] = []
        sibling_cache: dict[str, list[str]] = {}
        made: set[str] = set()
        for _ in range(passes):
            rng.shuffle(order)
            for ci in order:
                cap, matches = captions[ci], scans[ci]
                raw = list(_WORD.finditer(cap))
                nouns = [m for m in matches if m.is_label and m.keyword in mid_of
                         and _noun_use(raw, m.words)]
                if not nouns:
                    continue
                m = rng.choice(nouns)
                if m.keyword not in sibling_cache:
                    sibling_cache[m.keyword] = [s for s in siblings(m.keyword) if _plain_noun(s)]
                keywords = {k.keyword for k in matches}
                options = [s for s in sibling_cache[m.keyword]
                           if count.get(s, 0) < per_label and s not in keywords]
                if not options:
                    continue
                sib = rng.choice(options)
                new = _replace(cap, raw, m.words, _surface(sib))
                kws = self.map_caption(new, max_keywords)
                ws = [w.group(0).lower() for w in _WORD.finditer(new)]
                if sib not in kws or new in made or any(a == b for a, b in zip(ws, ws[1:])):
                    continue
                made.add(new)
                count[sib] = count.get(sib, 0) + 1
                pairs.append((kws, new))
        return pairs


_COPULAS = frozenset({"is", "are", "was", "were", "be", "been", "being"})


def _surface(name: str) -> str:
    """How a caption writes a label: its first synonym, without "(musical)", lower case."""
    return re.sub(r"\s*\([^)]*\)", "", name.split(",")[0]).strip().lower()


def _plain_noun(name: str) -> bool:
    ws = _surface(name).split()
    return (0 < len(ws) <= 3 and not {"or", "and"} & set(ws)
            and all(re.fullmatch(r"[a-z][a-z'-]*", w) and not w.endswith(("ing", "ed")) for w in ws))


def _noun_use(raw, index: tuple[int, ...]) -> bool:
    """The caption words at ``index`` are one run, in base form, not a verb form."""
    if index[-1] - index[0] != len(index) - 1:
        return False
    if index[0] > 0 and raw[index[0] - 1].group(0).lower() in _COPULAS:
        return False
    for i in index:
        w = raw[i].group(0).lower()
        if w != base_form(w) or w.endswith(("ing", "ed")):
            return False
    return True


def _replace(caption: str, raw, index: tuple[int, ...], text: str) -> str:
    start, end = raw[index[0]].start(), raw[index[-1]].end()
    if start == 0 or caption[:start].rstrip().endswith((".", "!", "?")):
        text = text[:1].upper() + text[1:]
    head = caption[:start]
    if index[0] > 0 and raw[index[0] - 1].group(0).lower() in ("a", "an"):
        art = raw[index[0] - 1]
        want = "an" if text[:1].lower() in "aeiou" else "a"
        want = want.capitalize() if art.group(0)[0].isupper() else want
        head = caption[:art.start()] + want + caption[art.end():start]
    return head + text + caption[end:]
