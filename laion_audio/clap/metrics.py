"""Retrieval and classification metrics exactly as LAION-CLAP reports them
(reference/clap.md §4).

Ranks are 0-based positions of the relevant item in the descending sort of similarities.
* one caption per audio (``retrieval_metrics``): mean_rank = mean+1, median_rank =
  floor(median)+1, R@k = share with rank < k, mAP@10 = mean(1/(rank+1) if rank < 10 else 0).
* Clotho/AudioCaps 5-caption protocol (``five_caption_metrics``): text->audio treats each
  caption slot as its own N x N retrieval and averages over all 5N text queries; audio->text
  ranks the 5N captions for each audio, R@k and mean/median rank use the best of its 5 ranks.
  audio->text mAP@10: we implement the *sorted* variant (``a2t_map="sorted"``): the 5 ranks are
  sorted, the i-th retrieved relevant caption at rank r_i contributes i/(r_i+1) if r_i < 10,
  divided by 5. That is average precision at 10 with 5 relevant items, which LAION's docstring
  (and XinhaoMei/audio-text_retrieval, which it follows) intends; LAION's code forgets the sort
  and pairs i with the ranks in caption order, which is not a precision. ``a2t_map="laion_code"``
  reproduces that code for comparisons with published numbers.
"""
from __future__ import annotations

import numpy as np


def _ranks(sim: np.ndarray) -> np.ndarray:
    """0-based rank of item i in row i's descending order (ties broken by index)."""
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.argmax(order == np.arange(sim.shape[0])[:, None], axis=1)


def rank_summary(ranks: np.ndarray, prefix: str) -> dict:
    ranks = np.asarray(ranks)
    out = {f"{prefix}_mean_rank": float(ranks.mean() + 1),
           f"{prefix}_median_rank": float(np.floor(np.median(ranks)) + 1)}
    for k in (1, 5, 10):
        out[f"{prefix}_R@{k}"] = float(np.mean(ranks < k))
    out[f"{prefix}_mAP@10"] = float(np.mean(np.where(ranks < 10, 1 / (ranks + 1), 0.0)))
    return out


def retrieval_metrics(sim: np.ndarray) -> dict:
    """``sim[i, j]`` = similarity of audio i and caption j, caption i belongs to audio i."""
    sim = np.asarray(sim, dtype=np.float64)
    return {**rank_summary(_ranks(sim), "audio_to_text"), **rank_summary(_ranks(sim.T), "text_to_audio")}


def five_caption_metrics(sim: np.ndarray, a2t_map: str = "sorted") -> dict:
    """``sim`` (N, 5N): audio i vs caption j, caption j belongs to audio j // 5 (captions of an
    audio are consecutive: audio0 cap0..cap4, audio1 cap0..)."""
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    if sim.shape[1] != 5 * n:
        raise ValueError(f"5-caption protocol needs (N, 5N) similarities, got {sim.shape}")
    t2a = np.concatenate([_ranks(sim[:, s::5].T) for s in range(5)])
    out = rank_summary(t2a, "text_to_audio")
    order = np.argsort(-sim, axis=1, kind="stable")
    positions = np.argsort(order, axis=1)  # positions[i, j] = rank of caption j for audio i
    best, maps = [], []
    for i in range(n):
        ranks = positions[i, 5 * i:5 * i + 5]
        if a2t_map == "sorted":
            ranks = np.sort(ranks)
        elif a2t_map != "laion_code":
            raise ValueError("a2t_map must be 'sorted' or 'laion_code'")
        best.append(ranks.min())
        maps.append(np.sum(np.where(ranks < 10, np.arange(1, 6) / (ranks + 1), 0.0)) / 5)
    a2t = rank_summary(np.array(best), "audio_to_text")
    a2t["audio_to_text_mAP@10"] = float(np.mean(maps))
    out.update(a2t)
    return out


def zero_shot_metrics(sim: np.ndarray, labels: np.ndarray) -> dict:
    """``sim`` (N, C) audio vs class prompts, ``labels`` (N,) true class: R@1 = top-1 accuracy."""
    sim = np.asarray(sim, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(-sim, axis=1, kind="stable")
    ranks = np.argmax(order == labels[:, None], axis=1)
    out = rank_summary(ranks, "zeroshot")
    out["zeroshot_accuracy"] = out["zeroshot_R@1"]
    return out


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean over positives of precision at their rank."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Multilabel mAP (FSD50K style): AP per class with at least one positive, averaged."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")
