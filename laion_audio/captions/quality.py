"""How good are generated captions? Keyword coverage, invented content, fluency, length.

- **coverage**: share of input keywords found in the caption, lemma-aware (``keywords.lemma``).
  A keyword with comma-separated alternatives (AudioSet's "Vehicle horn, car horn, honking")
  counts when any alternative has all its content words in the caption.
- **invented content words**: caption content words whose lemma is in no keyword.
- **misplaced words**: a word after is/are/being that human captions never put there
  (``grammar``: "Waterfall is being waterfall").
- **fluency**: per-token perplexity under a trigram model (interpolated absolute discounting)
  of held-out human captions, for the generated captions and for human references the model
  never saw; the ratio generated/human is the figure (1.0 = as fluent as people).
- **length**: words per caption, generated and human.
- **de-bias**: how many replacements ``debias`` made.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .debias import debias
from .keywords import STOPWORDS, content_words, keyword_lemmas, lemma, words


def _caption_lemmas(caption: str) -> set[str]:
    return {lemma(w) for w in words(caption)}


def keyword_covered(keyword: str, caption_lemmas: set[str]) -> bool:
    for alternative in keyword.split(","):
        need = keyword_lemmas(alternative)
        if need and all(l in caption_lemmas for l in need):
            return True
    return False


def keyword_coverage(keywords: Sequence[str], caption: str) -> float:
    """Share of keywords present in the caption (1.0 for an empty keyword list)."""
    kws = [k for k in keywords if keyword_lemmas(k)]
    if not kws:
        return 1.0
    have = _caption_lemmas(caption)
    return sum(keyword_covered(k, have) for k in kws) / len(kws)


def invented_words(keywords: Sequence[str], caption: str) -> list[str]:
    """Content words of the caption that no keyword accounts for."""
    allowed = {l for k in keywords for l in keyword_lemmas(k)}
    return [w for w in content_words(caption) if lemma(w) not in allowed]


class NgramLM:
    """A word trigram model with interpolated absolute discounting (D=0.75) down to an
    add-one unigram, so unseen words get a finite, small probability."""

    def __init__(self, sentences: Iterable[str], discount: float = 0.75):
        self.d = discount
        self.c3: Counter = Counter()
        self.c2: Counter = Counter()
        self.c1: Counter = Counter()
        self.ctx2: Counter = Counter()   # count of (u, v, *)
        self.ctx1: Counter = Counter()   # count of (v, *)
        self.n1_2: defaultdict = defaultdict(set)
        self.n1_1: defaultdict = defaultdict(set)
        for s in sentences:
            toks = ["<s>", "<s>"] + words(s) + ["</s>"]
            for i in range(2, len(toks)):
                u, v, w = toks[i - 2], toks[i - 1], toks[i]
                self.c3[(u, v, w)] += 1
                self.ctx2[(u, v)] += 1
                self.n1_2[(u, v)].add(w)
                self.c2[(v, w)] += 1
                self.ctx1[v] += 1
                self.n1_1[v].add(w)
                self.c1[w] += 1
        self.total = sum(self.c1.values())
        self.vocab = len(self.c1) + 1    # + <unk>

    def prob(self, u: str, v: str, w: str) -> float:
        p = (self.c1[w] + 1) / (self.total + self.vocab)
        if self.ctx1[v]:
            p = (max(self.c2[(v, w)] - self.d, 0) / self.ctx1[v]
                 + self.d * len(self.n1_1[v]) / self.ctx1[v] * p)
        if self.ctx2[(u, v)]:
            p = (max(self.c3[(u, v, w)] - self.d, 0) / self.ctx2[(u, v)]
                 + self.d * len(self.n1_2[(u, v)]) / self.ctx2[(u, v)] * p)
        return p

    def perplexity(self, sentences: Iterable[str], *, function_words: bool = False) -> float:
        """Per-token perplexity over all sentences (end-of-sentence counted as a token).

        ``function_words``: only over positions whose word is a stop word or the end, i.e. the
        glue around content words. Rare label words ("Bluegrass") inflate the full figure of
        a caption however well it is written; the glue figure is what tells "a dog barks in
        the background" from "a several are is dog"."""
        logp, n = 0.0, 0
        for s in sentences:
            toks = ["<s>", "<s>"] + words(s) + ["</s>"]
            for i in range(2, len(toks)):
                if function_words and toks[i] != "</s>" and toks[i] not in STOPWORDS:
                    continue
                logp += math.log(self.prob(toks[i - 2], toks[i - 1], toks[i]))
                n += 1
        return math.exp(-logp / max(n, 1))


def _lengths(captions: Sequence[str]) -> dict:
    n = sorted(len(words(c)) for c in captions) or [0]
    q = lambda f: n[min(len(n) - 1, int(f * len(n)))]
    return {"mean": round(statistics.fmean(n), 2), "median": statistics.median(n),
            "p10": q(0.1), "p90": q(0.9), "min": n[0], "max": n[-1]}


def quality_report(keyword_sets: Sequence[Sequence[str]], captions: Sequence[str], *,
                   human_references: Sequence[str] = (), lm_corpus: Sequence[str] = ()) -> dict:
    """The figures above for parallel lists of keyword sets and generated captions.

    ``lm_corpus``: human captions for the fluency model (held out from the captioner's
    training); ``human_references``: other human captions scored the same way for comparison."""
    from .grammar import misplaced_rate, misplaced_words

    if len(keyword_sets) != len(captions):
        raise ValueError("keyword_sets and captions must be the same length")
    cov = [keyword_coverage(k, c) for k, c in zip(keyword_sets, captions)]
    inv = [invented_words(k, c) for k, c in zip(keyword_sets, captions)]
    n_content = sum(len(content_words(c)) for c in captions)
    replacements = sum(debias(c).count for c in captions)
    report = {
        "n": len(captions),
        "keyword_coverage": round(statistics.fmean(cov), 4) if cov else None,
        "full_coverage_share": round(sum(c == 1.0 for c in cov) / max(len(cov), 1), 4),
        "invented_content_words_per_caption": round(sum(map(len, inv)) / max(len(inv), 1), 3),
        "invented_content_word_rate": round(sum(map(len, inv)) / max(n_content, 1), 4),
        "most_invented": Counter(w for ws in inv for w in ws).most_common(10),
        "misplaced_word_rate": round(misplaced_rate(captions), 4),
        "most_misplaced": Counter(w for c in captions for w in misplaced_words(c)).most_common(10),
        "empty_captions": sum(not c.strip() for c in captions),
        "length_words": _lengths(captions),
        "debias_replacements": replacements,
    }
    if lm_corpus:
        lm = NgramLM(lm_corpus)
        report["fluency_perplexity"] = round(lm.perplexity(captions), 2)
        if human_references:
            human = lm.perplexity(human_references)
            report["human_perplexity"] = round(human, 2)
            report["perplexity_ratio_vs_human"] = round(report["fluency_perplexity"] / human, 3)
            report["human_length_words"] = _lengths(human_references)
    return report
