"""Shared by the caption tests: a tiny captioner trained once per session on real AudioCaps
captions, and real AudioSet label sets."""
from __future__ import annotations

import pytest

from laion_audio.captions.k2c import Captioner
from laion_audio.captions.keywords import AudioSetLabels, read_segments
from laion_audio.captions.train import TrainConfig, build_pairs, load_captions, train_captioner


@pytest.fixture(scope="session")
def tiny(shared_data, tmp_path_factory):
    """Train a ~0.6M-parameter captioner on 2,000 AudioCaps train captions (~30-60 s)."""
    caps = load_captions("audiocaps", shared_data / "audiocaps/dataset/train.csv", limit=2000)
    val = build_pairs(load_captions("audiocaps", shared_data / "audiocaps/dataset/val.csv", limit=100))
    out = tmp_path_factory.mktemp("k2c") / "model"
    cfg = TrainConfig(max_steps=300, batch_size=32, d_model=96, d_ff=384, num_layers=2,
                      num_decoder_layers=2, vocab_size=1000, lr=3e-3, threads=1)
    summary = train_captioner(build_pairs(caps), out, cfg, val_pairs=val, log_every=50)
    return out, summary, val


@pytest.fixture(scope="session")
def captioner(tiny):
    return Captioner.load(tiny[0], device="cpu", batch_size=64)


@pytest.fixture(scope="session")
def audioset_sets(shared_data):
    labels = AudioSetLabels.from_dir(shared_data / "audioset")
    segs = list(read_segments(shared_data / "audioset/balanced_train_segments.csv"))[:40]
    return labels, segs
