"""Lexically constrained decoding: hard keyword constraints for beam search.

A small captioner trained for minutes writes fluent glue but forgets keywords, invents content
words ("a dog is animaling") and repeats itself. As in lexically constrained decoding for
CommonGen (Hokamp & Liu 2017; NeuroLogic decoding, Lu et al. 2021), the constraints are put on
the search instead of hoped for from the model: a logits processor that, per beam row,

* forbids end-of-sentence until every keyword is present (any of its comma alternatives, all of
  its content words, lemma-aware as the quality report counts them);
* forbids building a content word whose lemma is in no keyword: a word may only grow along a
  trie of allowed words (stop words, the keywords' own words, the tokenizer's whole-word
  pieces with a keyword's lemma, i.e. the inflections the training corpus used, and irregular
  forms);
* forbids completing a word equal to the previous word, or a content word a third time
  (the gate's repetition rule).

The model still chooses every token among what is allowed, so fluency is its own (and is
measured: perplexity in the quality report). A keyword the tokenizer cannot spell is not
required. A row left with no allowed token may end (EOS), so decoding always terminates; such a
caption misses a keyword and the caption stage falls back to the template for it.

Works with :mod:`.beam` (``select(item_index)`` for items leaving the batch) and with HF
``generate`` (rows grouped by item, ``num_beams`` each).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .keywords import STOPWORDS, _IRREGULAR, content_words, lemma

#: Words in a row that add no missing keyword before the next word must add one (a model that
#: cannot place a keyword would otherwise fill the caption with "in the background ...");
#: AudioCaps captions rarely hold more than 4 function words between content words.
GLUE_RUN = 4
#: Words after the last keyword before the caption must end.
TAIL_RUN = 6
#: Punctuation pieces allowed between words (AudioSet names hold hyphens: "Hi-hat").
PUNCT = frozenset(",.-")
_MARKERS = ("\u2581", "\u0120")       # SentencePiece / byte-level BPE word-start markers


def _is_word(w: str) -> bool:
    return w.isascii() and w.isalpha()


#: Stop words a caption may always use: those in at least 0.2% of AudioCaps train captions
#: (78 of the 186; measured 2026-12-01). The rest ("am", "theirs", "whom", "shall") were what a
#: weak model reached for when its preferred content word was forbidden.
GLUE = frozenset("""
a after again against along an and another are around as at background before being briefly by
continuously distance distant down during each faintly few followed foreground from he in into
is it its loudly many more multiple nearby noise noises occur occurring occurs of off on once one
or other out over quickly rapidly repeatedly several slowly softly some someone something sound
sounds that the their then there through to together twice up very which while with
""".split())
assert GLUE <= STOPWORDS


def _is_content(w: str) -> bool:
    return w not in STOPWORDS and len(w) > 1


@lru_cache(maxsize=1)
def _irregular_by_lemma() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for form in _IRREGULAR:
        out.setdefault(lemma(form), set()).add(form)
    return out


def _add_prefixes(words, prefix_words: dict[str, set[str]]) -> None:
    for w in words:
        for k in range(1, len(w) + 1):
            prefix_words.setdefault(w[:k], set()).add(w)


class TokenTable:
    """What each token id spells, for one tokenizer (built once per captioner)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.size = vocab_size
        self.eos_id = tokenizer.eos_token_id
        self.start: dict[str, list[int]] = {}    # word-start letter pieces by text
        self.cont: dict[str, list[int]] = {}     # word-continuing letter pieces by text
        self.kind: dict[int, tuple[str, str]] = {}
        space, punct = [], []
        self.punct_by_text: dict[str, list[int]] = {}
        special = set(tokenizer.all_special_ids)
        for piece, tid in tokenizer.get_vocab().items():
            if tid >= vocab_size or tid in special:
                continue
            starts = piece[:1] in _MARKERS
            text = (piece[1:] if starts else piece).lower()
            if starts and text == "":
                space.append(tid)
                self.kind[tid] = ("space", "")
            elif _is_word(text):
                (self.start if starts else self.cont).setdefault(text, []).append(tid)
                self.kind[tid] = ("start" if starts else "cont", text)
            elif text and set(text) <= PUNCT and len(text) == 1:
                punct.append(tid)
                self.punct_by_text.setdefault(text, []).append(tid)
                self.kind[tid] = ("punct", text)
        self.space_ids = torch.tensor(space, dtype=torch.long)
        self.punct_ids = torch.tensor(punct, dtype=torch.long)
        # corpus words the tokenizer holds whole, by lemma (real inflections the model knows)
        self.words_by_lemma: dict[str, set[str]] = {}
        for text in self.start:
            if len(text) > 1:
                self.words_by_lemma.setdefault(lemma(text), set()).add(text)
        # stop words: shared by every item
        self.glue = {w for w in GLUE if self.spellable(w)}
        self.glue_prefix: dict[str, set[str]] = {}
        _add_prefixes(self.glue, self.glue_prefix)
        self.glue_starts = self._starts(self.glue_prefix)
        self.glue_cont = self._conts(self.glue_prefix)
        self.glue_rem = self.remaining(self.glue)
        self._glue_start_mask = self.mask_of(i for _, ids in self.glue_starts for i in ids)

    def mask_of(self, ids) -> torch.Tensor:
        m = torch.zeros(self.size, dtype=torch.bool)
        ids = list(ids)
        if ids:
            m[torch.tensor(ids, dtype=torch.long)] = True
        return m

    def pieces(self, word: str) -> int | None:
        """The fewest pieces that spell ``word`` as one word (None: it cannot be spelled)."""
        inf = len(word) + 2
        best = [inf] * (len(word) + 1)
        for k in range(1, len(word) + 1):
            if word[:k] in self.start:
                best[k] = 1
            elif len(self.space_ids) > 0 and word[:k] in self.cont:
                best[k] = 2
        for i in range(1, len(word)):
            if best[i] < inf:
                for j in range(i + 1, len(word) + 1):
                    if word[i:j] in self.cont:
                        best[j] = min(best[j], best[i] + 1)
        return best[-1] if best[-1] < inf else None

    def spellable(self, word: str) -> bool:
        return self.pieces(word) is not None

    def remaining(self, words) -> dict[str, int]:
        """prefix -> the fewest continuation pieces that complete it to one of ``words``."""
        out: dict[str, int] = {}
        for w in words:
            n = len(w)
            cost = [n + 2] * (n + 1)
            cost[n] = 0
            for i in range(n - 1, 0, -1):
                cost[i] = min([1 + cost[j] for j in range(i + 1, n + 1) if w[i:j] in self.cont]
                              + [n + 2])
            for k in range(1, n + 1):
                if cost[k] < out.get(w[:k], n + 2):
                    out[w[:k]] = cost[k]
        return out

    def _starts(self, prefix_words) -> list[tuple[str, list[int]]]:
        return [(q, self.start[q]) for q in prefix_words if q in self.start]

    def _conts(self, prefix_words) -> dict[str, list[tuple[str, list[int]]]]:
        """partial word -> [(longer prefix, continuation piece ids)]; "" is after a bare space."""
        out: dict[str, list[tuple[str, list[int]]]] = {}
        for q in prefix_words:
            for k in range(len(q)):
                ids = self.cont.get(q[k:])
                if ids:
                    out.setdefault(q[:k], []).append((q, ids))
        return out


@dataclass
class _Item:
    """One keyword set's allowed words and required keywords."""

    table: TokenTable
    allowed_lemmas: set
    words: set                        # allowed content words
    prefix: dict                      # prefix -> allowed content words with it
    starts: list
    conts: dict
    forms_by_lemma: dict
    required: list                    # per keyword: list of alternatives (frozensets of lemmas)
    start_mask: torch.Tensor
    cost: dict                        # lemma -> fewest pieces of a form of it
    rem: dict                         # prefix -> fewest pieces to complete it to a word
    start_rem: torch.Tensor           # start piece id -> fewest pieces to complete its word
    punct_ids: torch.Tensor           # punctuation allowed between words
    masks: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)
    _required_lemmas: frozenset | None = None
    dead_ends: set = field(default_factory=set)   # prefixes where only a forced EOS was left
    _memo: dict = field(default_factory=dict)
    fused: dict = field(default_factory=dict)      # GlueFusion's per-state bonus vectors

    @classmethod
    def build(cls, table: TokenTable, keywords) -> "_Item":
        allowed = {lemma(w) for k in keywords for w in content_words(k)}
        words: set[str] = set()
        for k in keywords:
            for w in content_words(k):
                if not _is_word(w):
                    continue
                cands = {w} | table.words_by_lemma.get(lemma(w), set()) \
                    | _irregular_by_lemma().get(lemma(w), set())
                words |= {c for c in cands if c == w or lemma(c) in allowed}
        words = {w for w in words if _is_content(w) and table.spellable(w)}
        required = []
        for k in keywords:
            alts = []
            for alt in k.split(","):
                cw = content_words(alt)
                if cw and all(_is_word(w) and table.spellable(w) for w in cw):
                    alts.append(frozenset(lemma(w) for w in cw))
            if alts:
                required.append(alts)
        prefix: dict[str, set[str]] = {}
        _add_prefixes(words, prefix)
        forms: dict[str, set[str]] = {}
        for w in words:
            forms.setdefault(lemma(w), set()).add(w)
        cost = {lem: min(table.pieces(w) for w in ws) for lem, ws in forms.items()}
        starts = table._starts(prefix)
        mask = table._glue_start_mask.clone()
        for _, ids in starts:
            mask[ids] = True
        rem = table.remaining(words)
        start_rem = torch.full((table.size,), 99, dtype=torch.int16)   # per start piece id
        for q, ids in table.glue_starts:
            start_rem[ids] = table.glue_rem[q]
        for q, ids in starts:
            start_rem[ids] = torch.minimum(start_rem[ids], torch.tensor(rem[q], dtype=torch.int16))
        # a comma between words; a hyphen only where a keyword has one ("Hi-hat"); no full
        # stop inside a caption. Punctuation is invisible to a word LM, so a free "-" or "."
        # became glue that no fluency figure sees ("a-rats", "theme-then").
        punct = list(table.punct_by_text.get(",", []))
        if any("-" in k for k in keywords):
            punct += table.punct_by_text.get("-", [])
        return cls(table, allowed, words, prefix, starts, table._conts(prefix), forms, required,
                   mask, cost, rem, start_rem, torch.tensor(punct, dtype=torch.long))

    @property
    def required_lemmas(self) -> frozenset:
        if self._required_lemmas is None:
            self._required_lemmas = frozenset(l for alts in self.required for alt in alts for l in alt)
        return self._required_lemmas

    def _progress(self, lemmas: frozenset) -> tuple:
        """(missing keyword lemmas, tokens still needed) for the lemmas written (memoised)."""
        got = self._memo.get(lemmas)
        if got is None:
            open_ = [alts for alts in self.required if not any(alt <= lemmas for alt in alts)]
            missing = frozenset(l for alts in open_ for alt in alts for l in alt if l not in lemmas)
            # per missing keyword, its cheapest alternative's missing words, each spelled in
            # its fewest pieces plus one token of glue
            need = sum(min(sum(self.cost.get(l, 4) + 1 for l in alt - lemmas) for alt in alts)
                       for alts in open_)
            got = self._memo[lemmas] = (missing, need)
        return got

    def covered(self, lemmas) -> bool:
        return not self._progress(frozenset(lemmas))[0]

    def missing(self, lemmas) -> frozenset:
        """Keyword lemmas that would help: those of keywords not yet covered."""
        return self._progress(frozenset(lemmas))[0]

    def tokens_needed(self, lemmas) -> int:
        return self._progress(frozenset(lemmas))[1]

    def must_progress(self, state: "_State", left: int) -> bool:
        """The next word must add a missing keyword: too many words without one, or barely
        enough tokens left (``left``) for the words still needed."""
        need = self.tokens_needed(state.lemmas)
        return need > 0 and (state.since >= GLUE_RUN or left <= need + 2)

    def viable_missing(self, q: str, missing: frozenset, excluded: frozenset) -> bool:
        return any(w not in excluded and lemma(w) in missing for w in self.prefix.get(q, ()))

    def finishable(self, q: str, tokens: int, keyword_only: bool = False,
                   excluded: frozenset = frozenset()) -> bool:
        """``q`` can become a whole allowed word (a keyword word: ``keyword_only``), not an
        ``excluded`` one, within ``tokens`` more pieces."""
        if any(e.startswith(q) for e in excluded):      # rare: count without the excluded words
            ws = set(self.prefix.get(q, ()))
            if not keyword_only:
                ws |= self.table.glue_prefix.get(q, set())
            return self.table.remaining(ws - excluded).get(q, 99) <= tokens
        rem = self.rem.get(q, 99)
        if not keyword_only:
            rem = min(rem, self.table.glue_rem.get(q, 99))
        return rem <= tokens

    def viable(self, q: str, excluded: frozenset) -> bool:
        """Some allowed word starting with ``q`` may still be completed."""
        for group in (self.table.glue_prefix.get(q, ()), self.prefix.get(q, ())):
            for w in group:
                if w not in excluded:
                    return True
        return False

    def excluded(self, prev: str, exhausted: frozenset) -> frozenset:
        out = {prev} if prev else set()
        for lem in exhausted:
            out |= self.forms_by_lemma.get(lem, set())
        return frozenset(out)

    def complete_ok(self, word: str, prev: str, exhausted: frozenset) -> bool:
        if word == prev:
            return False
        if word in self.table.glue:
            return True
        return word in self.words and lemma(word) not in exhausted


@dataclass(frozen=True)
class _State:
    partial: str = ""
    prev: str = ""
    counts: tuple = ()                # sorted (lemma, count) of content words
    lemmas: frozenset = frozenset()
    after_punct: bool = True          # at the start, or just after punctuation or a bare space
    since: int = 0                    # words since the last one that added a keyword lemma
    forced: bool = False              # the word being built must add a missing keyword lemma
    open_word: bool = False           # after a bare space: a word spelled by continuation pieces
    hist: tuple = ("<s>", "<s>")      # the last two completed words (the fusion LM's context)

    def exhausted(self) -> frozenset:
        return frozenset(l for l, c in self.counts if c >= 2)

    def completed(self, item: "_Item") -> "_State":
        w = self.partial
        if not w:
            return self
        counts = dict(self.counts)
        lem = lemma(w)
        if _is_content(w):
            counts[lem] = counts.get(lem, 0) + 1
        progress = lem in item.required_lemmas and lem not in self.lemmas
        return _State("", w, tuple(sorted(counts.items())), self.lemmas | {lem}, False,
                      0 if progress else self.since + 1, hist=(self.hist[1], w))

    def step(self, kind: tuple[str, str] | None, item: "_Item", left: int) -> "_State":
        if kind is None:
            return self.completed(item)
        what, text = kind
        if what == "cont":
            return _State(self.partial + text, self.prev, self.counts, self.lemmas, False,
                          self.since, self.forced, hist=self.hist)
        done = self.completed(item)
        forced = False
        if what in ("start", "space") and item.must_progress(done, left + 1):
            # forced only where the mask offered missing keywords alone (not its fallback)
            missing = item.missing(done.lemmas)
            excl = item.excluded(done.prev, done.exhausted())
            forced = (item.viable_missing(text, missing, excl) if what == "start" else
                      any(item.viable_missing(q, missing, excl) for q, _ in item.conts.get("", ())))
        return _State(text if what == "start" else "", done.prev, done.counts, done.lemmas,
                      what != "start", done.since, forced, what == "space", done.hist)


#: The fusion LM's token for a content word, by ending: "-ing" (mostly verbs: "barking"),
#: "-s" (plural nouns and verbs: "dogs", "barks"), others (mostly nouns: "dog", "music"), so
#: it can tell "someone is typing" from "someone is music". (An "-ed" class too measured worse:
#: function-word perplexity 1.80x human instead of 1.64x on the development sets.)
CONTENT = "contentword"
_CONTENT_ING, _CONTENT_S = "contentwording", "contentwords"


def _glue_class(w: str) -> str:
    if w in STOPWORDS or w in ("<s>", "</s>"):
        return w
    if w == CONTENT or w.startswith(CONTENT):
        return w
    if w.endswith("ing") and len(w) > 4:
        return _CONTENT_ING
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return _CONTENT_S
    return CONTENT


class GlueFusion:
    """Shallow fusion of a class n-gram LM of human captions into the constrained search.

    The constraints fix *which* words a caption may hold; a tiny captioner still strings the
    glue badly ("a music a is again are country"). The fusion LM is a trigram model of human
    captions in which every content word is a class token (``_glue_class``): it knows how glue
    and content alternate ("a C is C-ing in the background") without needing to have seen the
    rare label words, whose contexts a word LM would only back off from. Each token's score
    gains ``weight`` x the change in the LM log-probability of the words so far. A word's
    score enters when its first piece is chosen, as the best score of the allowed words that
    piece can still become (the look-ahead of speech decoders' LM prefix trees), and is
    corrected when the word ends, so the fused score of a finished caption is exact.

    The LM must not be the quality gate's own (AudioCaps test.csv): ``fusion_lm.txt`` in the
    model folder holds the corpus it is built from (Clotho's captions for ours)."""

    def __init__(self, lm, weight: float):
        self.lm, self.weight = lm, weight
        self._scores: dict = {}
        self._glue: dict = {}
        self._tables: dict = {}

    def word(self, h: tuple, w: str) -> float:
        """The log-probability of word ``w`` (or "</s>"; a content word as its class) after
        the words ``h``."""
        raw = (h, w)
        got = self._scores.get(raw)
        if got is None:
            if len(self._scores) > 1_000_000:
                self._scores.clear()
            key = (_glue_class(h[0]), _glue_class(h[1]), _glue_class(w))
            got = self._scores[raw] = math.log(self.lm.prob(*key))
        return got

    def ahead(self, item: "_Item", h: tuple, q: str) -> float:
        """The best score of an allowed word that begins with ``q``."""
        key = ("ahead", _glue_class(h[0]), _glue_class(h[1]), q)
        got = item.fused.get(key)
        if got is None:
            best = -math.inf
            for w in item.table.glue_prefix.get(q, ()):
                best = max(best, self.word(h, w))
            for w in item.prefix.get(q, ()):
                best = max(best, self.word(h, w))
            got = item.fused[key] = 0.0 if best == -math.inf else best
        return got

    def _boundary(self, t: TokenTable) -> torch.Tensor:
        got = self._tables.get(id(t))
        if got is None:
            m = t.mask_of([i for ids in t.start.values() for i in ids])
            m[t.space_ids] = True
            m[t.punct_ids] = True
            if t.eos_id is not None:
                m[t.eos_id] = True
            got = self._tables[id(t)] = m.float()
        return got

    def _starts(self, item: "_Item", h: tuple) -> torch.Tensor:
        """Look-ahead scores of the pieces that start a word, after ``h`` (per item)."""
        key = ("starts", tuple(map(_glue_class, h)))
        got = item.fused.get(key)
        if got is None:
            t = item.table
            glue_key = (id(t), key[1])
            glue = self._glue.get(glue_key)
            if glue is None:      # stop-word starts: shared by all items
                glue = torch.zeros(t.size)
                for q, ids in t.glue_starts:
                    glue[ids] = max(self.word(h, w) for w in t.glue_prefix[q])
                self._glue[glue_key] = glue
            got = glue.clone()
            for q, ids in item.starts:
                got[ids] = self.ahead(item, h, q)
            item.fused[key] = got
        return got

    def bonus(self, item: "_Item", state: _State) -> torch.Tensor:
        """Per token id: ``weight`` x the LM score the token adds to this row (0 for tokens
        the constraints forbid anyway)."""
        key = (state.partial, tuple(map(_glue_class, state.hist)), state.open_word)
        got = item.fused.get(key)
        if got is not None:
            return got
        t = item.table
        h, p = state.hist, state.partial
        base = self.ahead(item, h, p) if p else 0.0
        if p:        # a boundary token ends word p: its exact score replaces the look-ahead
            end = self.word(h, p) - base
            h2 = (h[1], p)
        else:
            end, h2 = 0.0, h
        vec = self._starts(item, h2) + end * self._boundary(t)
        if t.eos_id is not None:
            vec[t.eos_id] += self.word(h2, "</s>")
        for group in (t.glue_cont.get(p, ()), item.conts.get(p, ())):
            for q, ids in group:
                vec[ids] = self.ahead(item, h, q) - base
        vec *= self.weight
        item.fused[key] = vec
        return vec


def load_fusion_lm(path) -> "object":
    """The fusion class n-gram model from a ``fusion_lm.txt`` (one human caption a line)."""
    from .keywords import words
    from .quality import NgramLM

    with open(path, encoding="utf-8") as f:
        return NgramLM(" ".join(map(_glue_class, words(line))) for line in f if line.strip())


class LexicalConstraint:
    """Logits processor: the hard constraints above for a batch of keyword sets (with
    ``fusion``, plus the LM's scores; see :class:`GlueFusion`)."""

    def __init__(self, table: TokenTable, keyword_sets, num_beams: int, max_new_tokens: int = 48,
                 fusion: GlueFusion | None = None):
        self.table, self.num_beams, self.max_new_tokens = table, num_beams, max_new_tokens
        self.items = [_Item.build(table, list(ks)) for ks in keyword_sets]
        self.fusion = fusion

    def select(self, items: torch.Tensor) -> "LexicalConstraint":
        """The processor for a batch reduced to ``items`` (beam.py drops finished items)."""
        kept = copy.copy(self)
        kept.items = [self.items[i] for i in items.tolist()]
        return kept

    def _state(self, item: _Item, prefix: tuple) -> _State:
        state = item.states.get(prefix)
        if state is None:
            left = self.max_new_tokens - (len(prefix) - 1)     # tokens still to come
            state = (_State() if len(prefix) <= 1
                     else self._state(item, prefix[:-1]).step(self.table.kind.get(prefix[-1]),
                                                              item, left))
            item.states[prefix] = state
        return state

    def _mask(self, item: _Item, state: _State, left: int) -> tuple[torch.Tensor, bool]:
        done = state.completed(item)
        urgent = item.must_progress(done, left)
        # everything the mask depends on (rows that agree on it share one mask)
        key = (state.partial, state.prev, state.exhausted(), done.exhausted(), state.after_punct,
               state.open_word, state.forced, urgent, min(left, 9), done.since >= TAIL_RUN,
               item.missing(state.lemmas), item.missing(done.lemmas))
        if key in item.masks:
            return item.masks[key]
        t = self.table
        p = state.partial
        exhausted = state.exhausted()
        excl = item.excluded(state.prev, exhausted)
        missing = item.missing(state.lemmas) if state.forced else None
        allowed_ids = []
        for group in (t.glue_cont.get(p, ()), item.conts.get(p, ())):
            for q, ids in group:
                if ((item.viable_missing(q, missing, excl) if state.forced
                        else item.viable(q, excl))
                        and (left > 8 or item.finishable(q, left - 1, state.forced, excl))):
                    allowed_ids += ids
        if left <= 1:                             # the last token: it must end a valid word
            allowed_ids = [i for group in (t.glue_cont.get(p, ()), item.conts.get(p, ()))
                           for q, ids in group if item.complete_ok(q, state.prev, exhausted)
                           and (not state.forced or lemma(q) in missing) for i in ids]
        mask = t.mask_of(allowed_ids)
        if state.open_word:
            pass                                  # only continuation pieces after a bare space
        elif not p or (item.complete_ok(p, state.prev, exhausted)
                     and (not state.forced or lemma(p) in missing)):
            mask |= (self._boundary(item, done, urgent, left) if left > 1
                     else self._last_boundary(item, done))
        dead = not bool(mask.any())
        if dead and t.eos_id is not None:
            mask[t.eos_id] = True                 # a dead end may stop (the caption falls back)
        item.masks[key] = mask, dead
        return mask, dead

    def _last_boundary(self, item: _Item, done: _State) -> torch.Tensor:
        """After a completed word, as the last token: EOS, punctuation, or a one-piece word."""
        t = self.table
        ex = done.exhausted()
        mask = t.mask_of(i for q, ids in t.glue_starts + item.starts
                         if item.complete_ok(q, done.prev, ex) for i in ids)
        if not done.after_punct and len(item.punct_ids) and _is_content(done.prev):
            mask[item.punct_ids] = True
        if item.covered(done.lemmas) and t.eos_id is not None:
            mask[t.eos_id] = True     # (after a comma too: the last token may leave no choice)
        return mask

    def _boundary(self, item: _Item, done: _State, urgent: bool, left: int) -> torch.Tensor:
        """Tokens that may follow a completed word (or the start): new words, space,
        punctuation, and EOS once every keyword is present."""
        t = self.table
        covered = item.covered(done.lemmas)
        excl = item.excluded(done.prev, done.exhausted())
        if covered and done.since >= TAIL_RUN and t.eos_id is not None:
            return t.mask_of([t.eos_id])
        if urgent:
            missing = item.missing(done.lemmas)
            mask = t.mask_of(i for q, ids in item.starts if item.viable_missing(q, missing, excl)
                             and (left > 8 or item.finishable(q, left - 1, True, excl)) for i in ids)
            if not done.after_punct and any(
                    item.viable_missing(q, missing, excl)
                    and (left > 8 or item.finishable(q, left - 2, True, excl))
                    for q, _ in item.conts.get("", ())):
                mask[t.space_ids] = True          # "▁" + pieces spells a missing keyword
            if bool(mask.any()):
                return mask                       # else: the keyword cannot start a word here
        mask = item.start_mask.clone()
        for e in excl:                            # starts that lead only to excluded words
            for k in range(1, len(e) + 1):
                q = e[:k]
                if q in t.start and not item.viable(q, excl):
                    mask[t.start[q]] = False
        if left <= 8:                             # near the end: only words that can still end
            mask &= item.start_rem <= left - 1
            for e in excl:
                for k in range(1, len(e) + 1):
                    if e[:k] in t.start and not item.finishable(e[:k], left - 1, False, excl):
                        mask[t.start[e[:k]]] = False
        if not done.after_punct:                  # one space or punctuation mark at a time
            if len(t.space_ids) and left > 2:
                mask[t.space_ids] = True
            if len(item.punct_ids) and _is_content(done.prev):
                mask[item.punct_ids] = True       # after a content word ("dog, ..."; not "is,")
        if covered and t.eos_id is not None and (not done.after_punct or not done.prev):
            mask[t.eos_id] = True                 # (not right after a comma)
        return mask

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows, width = scores.shape
        ids = input_ids.tolist()
        masks, bonus = [], []
        for r in range(rows):
            item = self.items[r // self.num_beams]
            prefix = tuple(ids[r])
            state = self._state(item, prefix)
            mask, dead = self._mask(item, state, self.max_new_tokens - (len(ids[r]) - 1))
            if dead:
                item.dead_ends.add(prefix)
            masks.append(mask)
            if self.fusion is not None:
                bonus.append(self.fusion.bonus(item, state))
        mask = torch.stack(masks).to(scores.device)
        if mask.shape[1] < width:
            mask = torch.nn.functional.pad(mask, (0, width - mask.shape[1]))
        if bonus:
            add = torch.stack(bonus).to(scores.device, scores.dtype)
            scores = scores.clone()
            scores[:, :add.shape[1]] += add[:, :width]
        out = scores.masked_fill(~mask[:, :width], float("-inf"))
        # an earlier processor (no-repeat-ngram) may have banned every token we allow: a dead
        # end too; let such a row stop, at a score no live hypothesis falls to
        stuck = torch.isinf(out).all(-1)
        if bool(stuck.any()) and self.table.eos_id is not None:
            out[stuck, self.table.eos_id] = -1e4
            for r in stuck.nonzero()[:, 0].tolist():
                self.items[r // self.num_beams].dead_ends.add(tuple(ids[r]))
        return out
