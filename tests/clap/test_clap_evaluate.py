"""Evaluation plumbing: zero-shot over shards (labels from `tag`), the 5-caption switch, and
the linear-probe head on frozen features."""
import argparse

import numpy as np
import pytest
import torch

from laion_audio.clap.data import find_shards
from laion_audio.clap.evaluate import evaluate_retrieval, linear_probe, zero_shot_shards
from laion_audio.clap.factory import create_model
from laion_audio.clap.features import AudioConfig
from laion_audio.clap.text import train_tokenizer
from tests.clap.synth import CLASSES, synth_clip, write_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    labels = list(CLASSES)[:3]
    items = []
    for i in range(6):
        meta = {"text": [f"{labels[i % 3]} take {j}" for j in range(5)], "tag": [labels[i % 3]]}
        if i == 5:
            meta.pop("tag")  # unlabelled sample
        items.append((f"e{i}", synth_clip(labels[i % 3], 0, 1, rng, seconds=0.3), meta))
    write_shards(root, "evalset", "test", items, per_shard=3)
    tok = train_tokenizer([t for _, _, m in items for t in m["text"]] + ["This is a sound of"],
                          root / "tok", "roberta", 200)
    torch.manual_seed(0)
    model = create_model("PANN-test", "roberta", tokenizer=tok).eval()
    args = argparse.Namespace(batch_size=4, data_truncating="rand_trunc", data_filling="repeatpad", seed=0,
                              text_augment_selection="none", enable_fusion=False)
    return root, tok, model, labels, args


def test_zero_shot_over_shards_and_five_caption_retrieval(setup):
    root, tok, model, labels, args = setup
    sets = find_shards(root, splits=["test"])
    zs = zero_shot_shards(model, tok, sets, AudioConfig(), labels, args, torch.device("cpu"))
    assert zs["num_samples"] == 5 and zs["unlabelled"] == 1 and zs["num_classes"] == 3
    assert 0.0 <= zs["zeroshot_accuracy"] <= 1.0 and zs["zeroshot_R@5"] == 1.0  # 3 classes
    m = evaluate_retrieval(model, sets, tok, AudioConfig(), args, torch.device("cpu"))
    assert m["evalset-test/protocol"] == "5-caption" and m["evalset-test/num_samples"] == 6
    assert m["skipped"] == 0
    one = evaluate_retrieval(model, sets, tok, AudioConfig(), args, torch.device("cpu"), five_caption="never")
    assert one["evalset-test/protocol"] == "1-caption"


def test_linear_probe_learns_separable_features():
    g = torch.Generator().manual_seed(0)
    classes = torch.randn(4, 512, generator=g) * 3

    def data(n, multilabel):
        y = torch.zeros(n, 4)
        idx = torch.randint(0, 4, (n,), generator=g)
        y[torch.arange(n), idx] = 1
        if multilabel:
            y[torch.arange(n), (idx + 1) % 4] = (torch.rand(n, generator=g) > 0.5).float()
        x = y @ classes + torch.randn(n, 512, generator=g)
        return x, y

    xtr, ytr = data(200, True)
    xte, yte = data(100, True)
    assert linear_probe(xtr, ytr, xte, yte, multilabel=True, epochs=30)["linear_probe_mAP"] > 0.9
    xtr, ytr = data(200, False)
    xte, yte = data(100, False)
    assert linear_probe(xtr, ytr, xte, yte, multilabel=False, epochs=30)["linear_probe_accuracy"] > 0.9
