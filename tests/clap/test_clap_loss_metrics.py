"""Loss and metrics against brute-force computations on hand-made inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laion_audio.clap.loss import clip_loss
from laion_audio.clap.metrics import (average_precision, five_caption_metrics, mean_average_precision,
                                      retrieval_metrics, zero_shot_metrics)


def test_clip_loss_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    s = torch.tensor(1 / 0.07)
    total = 0.0
    for i in range(5):  # audio i vs all texts, text i vs all audio
        la = [float(s * a[i] @ t[j]) for j in range(5)]
        lt = [float(s * t[i] @ a[j]) for j in range(5)]
        total += -la[i] + math.log(sum(math.exp(x) for x in la))
        total += -lt[i] + math.log(sum(math.exp(x) for x in lt))
    assert abs(float(clip_loss(a, t, s)) - total / 10) < 1e-4


def _brute_ranks(sim):
    ranks = []
    for i, row in enumerate(sim):
        ranks.append(sum(1 for j, v in enumerate(row) if v > row[i] or (v == row[i] and j < i)))
    return np.array(ranks)


def test_one_caption_metrics_on_hand_made_matrix():
    sim = np.array([[0.9, 0.1, 0.2, 0.0],    # audio0: own caption first          -> rank 0
                    [0.8, 0.5, 0.1, 0.0],    # audio1: one caption above          -> rank 1
                    [0.3, 0.4, 0.1, 0.2],    # audio2: last                       -> rank 3
                    [0.0, 0.1, 0.2, 0.3]])   # audio3: first                      -> rank 0
    m = retrieval_metrics(sim)
    a2t = np.array([0, 1, 3, 0])
    assert m["audio_to_text_R@1"] == 0.5 and m["audio_to_text_R@5"] == 1.0
    assert m["audio_to_text_mean_rank"] == a2t.mean() + 1 == 2.0
    assert m["audio_to_text_median_rank"] == np.floor(np.median(a2t)) + 1 == 1.0
    assert m["audio_to_text_mAP@10"] == pytest.approx(np.mean(1 / (a2t + 1)))
    t2a = _brute_ranks(sim.T)
    assert m["text_to_audio_R@1"] == np.mean(t2a < 1)
    assert m["text_to_audio_mAP@10"] == pytest.approx(np.mean(1 / (t2a + 1)))


def test_map_at_10_counts_zero_beyond_ten():
    n = 12
    sim = np.eye(n)[::-1].copy()  # every item's own caption is the worst
    m = retrieval_metrics(sim)
    ranks = _brute_ranks(sim)
    assert m["audio_to_text_mAP@10"] == pytest.approx(np.mean(np.where(ranks < 10, 1 / (ranks + 1), 0)))
    assert m["audio_to_text_R@10"] == np.mean(ranks < 10)


def test_five_caption_protocol_brute_force():
    rng = np.random.default_rng(3)
    n = 4
    sim = rng.normal(size=(n, 5 * n))
    sim[:, 5:10] += 1.5  # audio1's captions are attractive to everyone
    m = five_caption_metrics(sim)
    # text->audio: 5N queries, each a N-way retrieval
    t2a = []
    for j in range(5 * n):
        col = sim[:, j]
        own = j // 5
        t2a.append(sum(1 for i in range(n) if col[i] > col[own] or (col[i] == col[own] and i < own)))
    t2a = np.array(t2a)
    assert m["text_to_audio_R@1"] == pytest.approx(np.mean(t2a < 1))
    assert m["text_to_audio_mAP@10"] == pytest.approx(np.mean(np.where(t2a < 10, 1 / (t2a + 1), 0)))
    assert m["text_to_audio_mean_rank"] == pytest.approx(t2a.mean() + 1)
    # audio->text: best of the 5 ranks for R@k; sorted AP@10 over 5 relevant captions
    best, aps = [], []
    for i in range(n):
        order = list(np.argsort(-sim[i], kind="stable"))
        ranks = sorted(order.index(j) for j in range(5 * i, 5 * i + 5))
        best.append(ranks[0])
        aps.append(sum((k + 1) / (r + 1) for k, r in enumerate(ranks) if r < 10) / 5)
    assert m["audio_to_text_R@1"] == pytest.approx(np.mean(np.array(best) < 1))
    assert m["audio_to_text_R@5"] == pytest.approx(np.mean(np.array(best) < 5))
    assert m["audio_to_text_mAP@10"] == pytest.approx(np.mean(aps))


def test_five_caption_perfect_and_laion_code_variant():
    n = 3
    sim = np.zeros((n, 5 * n))
    for i in range(n):
        sim[i, 5 * i:5 * i + 5] = [0.5, 0.9, 0.8, 0.7, 0.6]  # own captions on top, unsorted order
    m = five_caption_metrics(sim)
    assert m["audio_to_text_R@1"] == 1.0 and m["audio_to_text_mAP@10"] == pytest.approx(1.0)
    # LAION's code pairs i with ranks in caption order: ranks (4,0,1,2,3) -> not 1.0
    laion = five_caption_metrics(sim, a2t_map="laion_code")
    expected = (1 / 5 + 2 / 1 + 3 / 2 + 4 / 3 + 5 / 4) / 5
    assert laion["audio_to_text_mAP@10"] == pytest.approx(expected)
    assert m["text_to_audio_R@1"] == 1.0
    with pytest.raises(ValueError):
        five_caption_metrics(np.zeros((2, 7)))


def test_zero_shot_and_map():
    sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.3, 0.2, 0.1]])
    m = zero_shot_metrics(sim, np.array([0, 1, 0]))
    assert m["zeroshot_accuracy"] == pytest.approx(2 / 3)
    assert m["zeroshot_mean_rank"] == pytest.approx((1 + 3 + 1) / 3)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3)/2; class 1: positive at rank 2 -> 1/2
    assert average_precision(scores[:, 0], targets[:, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
