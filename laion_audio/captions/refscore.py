"""Reference-based caption scores: BLEU-4, a METEOR-like unigram F with a word-order penalty,
and CIDEr-D, against human captions of the same clip.

Why: under LM fusion a glue language model writes the function words, so the gate's
function-word perplexity measures the LM as much as the model (an untrained model with the
LM scored better than trained ones). Captions compared with what people wrote about the same
clip see word order and roles ("a dog barks" vs "dog, bark" vs "bark is being dog"), which a
class LM that knows no content word cannot supply.

The protocol (``reference_sets``): per AudioCaps clip, one human caption gives the keywords
(the trainer's own extraction, ``keywords.caption_keywords``) and the clip's *other* captions
are the references, so a generated caption is scored as a fifth annotator would be.

Implemented here (no Java, no network), following the published definitions:
BLEU (Papineni et al. 2002; corpus-level, clipped counts, closest-reference brevity penalty),
METEOR (Banerjee & Lavie 2005; exact and stem matches only, alpha 0.9, beta 3, gamma 0.5;
best reference), CIDEr-D (Vedantam et al. 2015, as in pycocoevalcap: tf-idf over the
references' document frequencies, n = 1..4, clipped, Gaussian length penalty sigma 6, x10).
"""
from __future__ import annotations

import csv
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

from .keywords import lemma, words


def _ngrams(toks: Sequence[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n``: clipped n-gram precisions summed over the corpus, geometric
    mean, brevity penalty against the reference length closest to each candidate's."""
    match = [0] * max_n
    total = [0] * max_n
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c = words(cand)
        rs = [words(r) for r in refs]
        c_len += len(c)
        r_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(c)), n), default=0)
        for n in range(1, max_n + 1):
            got = _ngrams(c, n)
            most = Counter()
            for r in rs:
                most |= _ngrams(r, n)
            match[n - 1] += sum(min(k, most[g]) for g, k in got.items())
            total[n - 1] += max(len(c) - n + 1, 0)
    if not c_len or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.exp(log_p)


def _align(c: list[str], r: list[str]) -> list[tuple[int, int]]:
    """Unigram alignment: exact matches first, then stem matches, each word at most once;
    among equal words the nearest position keeps chunks long (METEOR's fewest-crossings
    choice, greedily)."""
    pairs: list[tuple[int, int]] = []
    used_c: set[int] = set()
    used_r: set[int] = set()
    for key in (lambda w: w, lemma):
        for i, w in enumerate(c):
            if i in used_c:
                continue
            cands = [j for j, v in enumerate(r) if j not in used_r and key(v) == key(w)]
            if cands:
                j = min(cands, key=lambda j: abs(j - i))
                pairs.append((i, j))
                used_c.add(i)
                used_r.add(j)
    return sorted(pairs)


def meteor_one(candidate: str, reference: str, alpha: float = 0.9, beta: float = 3.0,
               gamma: float = 0.5) -> float:
    """METEOR against one reference: F = PR / (alpha P + (1 - alpha) R), times
    1 - gamma (chunks / matches) ^ beta (a chunk: matched words adjacent in both)."""
    c, r = words(candidate), words(reference)
    pairs = _align(c, r)
    m = len(pairs)
    if not m:
        return 0.0
    p, rec = m / len(c), m / len(r)
    f = p * rec / (alpha * p + (1 - alpha) * rec)
    chunks = 1 + sum(1 for (a, b), (x, y) in zip(pairs, pairs[1:]) if not (x == a + 1 and y == b + 1))
    return f * (1 - gamma * (chunks / m) ** beta)


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over captions of the best single-reference METEOR."""
    scores = [max((meteor_one(c, r) for r in refs), default=0.0)
              for c, refs in zip(candidates, references)]
    return sum(scores) / max(len(scores), 1)


def _cider_vec(toks: list[str], df: Counter, log_n: float, max_n: int):
    vec, norm = [], []
    for n in range(1, max_n + 1):
        v = {g: k * (log_n - math.log(max(1.0, df[g]))) for g, k in _ngrams(toks, n).items()}
        vec.append(v)
        norm.append(math.sqrt(sum(x * x for x in v.values())))
    return vec, norm, len(toks)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = 6.0) -> float:
    """CIDEr-D over the corpus (pycocoevalcap's formula): document frequencies from the
    reference sets, per n the clipped tf-idf cosine with a Gaussian length penalty, mean over
    n and references, x10, mean over captions."""
    refs_toks = [[words(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for rs in refs_toks:
        df.update({g for r in rs for n in range(1, max_n + 1) for g in _ngrams(r, n)})
    log_n = math.log(float(max(len(refs_toks), 1)))
    scores = []
    for cand, rs in zip(candidates, refs_toks):
        cv, cn, cl = _cider_vec(words(cand), df, log_n, max_n)
        total = 0.0
        for r in rs:
            rv, rn, rl = _cider_vec(r, df, log_n, max_n)
            val = 0.0
            for n in range(max_n):
                dot = sum(min(x, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, x in cv[n].items())
                if cn[n] and rn[n]:
                    dot /= cn[n] * rn[n]
                val += dot * math.exp(-((cl - rl) ** 2) / (2 * sigma ** 2))
            total += val / max_n
        scores.append(10.0 * total / max(len(rs), 1))
    return sum(scores) / max(len(scores), 1)


def score(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """The three scores for parallel lists (each candidate with its clip's references)."""
    if len(candidates) != len(references):
        raise ValueError("candidates and references must be the same length")
    return {"bleu4": round(bleu(candidates, references), 4),
            "meteor": round(meteor(candidates, references), 4),
            "cider_d": round(cider_d(candidates, references), 4)}


def read_audiocaps_clips(path: str | Path) -> dict[str, list[str]]:
    """AudioCaps CSV -> {youtube_id: its captions} (val/test hold ~5 per clip)."""
    clips: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = (row.get("caption") or "").strip()
            if text and row.get("youtube_id"):
                clips[row["youtube_id"]].append(text)
    return dict(clips)


def reference_sets(path: str | Path, n: int = 300, seed: int = 0, min_refs: int = 3):
    """``n`` seeded clips with at least ``min_refs`` + 1 captions: a list of
    ``(keywords, source caption, other captions)``. The keywords are the source caption's
    content words as the trainer extracts them, so the model is asked what it was trained for."""
    from .keywords import caption_keywords

    clips = read_audiocaps_clips(path)
    ids = sorted(k for k, v in clips.items() if len(v) > min_refs)
    rng = random.Random(seed)
    out = []
    for yid in rng.sample(ids, min(n, len(ids))):
        caps = clips[yid]
        src = rng.randrange(len(caps))
        kws = caption_keywords(caps[src])
        if kws:
            out.append((tuple(kws), caps[src], [c for i, c in enumerate(caps) if i != src]))
    return out
