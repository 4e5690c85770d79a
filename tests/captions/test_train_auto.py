"""train-captioner's choices: model size from the budget and free cores, complete pairs only,
early stop on validation loss with the best weights kept."""
from __future__ import annotations

import json

import pytest

from laion_audio.captions.k2c import SIDECAR
from laion_audio.captions.train import TrainConfig, auto_config, build_pairs, load_captions, train_captioner


def test_budget_and_free_cores_pick_the_size():
    five_busy, why = auto_config(5, cores=(2, 0.25))
    assert five_busy["d_model"] == 128 and five_busy["threads"] == 1 and "d_model 128" in why
    thirty_idle, _ = auto_config(30, cores=(2, 2.0))
    assert thirty_idle["d_model"] == 192 and thirty_idle["threads"] == 2
    long_run, _ = auto_config(120, cores=(8, 8.0))
    assert long_run["d_model"] == 256 and long_run["threads"] == 4
    # the 5-minute default that wrote "A vehicle engine is by is running" was d_model 256
    assert auto_config(5, cores=(2, 2.0))[0]["d_model"] < 256


def test_complete_pairs_drop_captions_whose_words_the_keywords_lack():
    caps = ["A dog barks", "A man speaks while a dog barks and a car passes by on a wet road nearby "
            "with birds chirping and wind blowing"]
    assert [c for _, c in build_pairs(caps)] == caps
    assert [c for _, c in build_pairs(caps, complete_only=True)] == caps[:1]


@pytest.mark.needs_shared
def test_early_stop_keeps_the_best_weights(shared_data, tmp_path):
    caps = load_captions("audiocaps", shared_data / "audiocaps/dataset/val.csv", limit=600)
    pairs = build_pairs(caps[:500])
    val = build_pairs(caps[500:])
    # a learning rate this high makes the loss climb after the first steps
    cfg = TrainConfig(max_steps=400, batch_size=16, d_model=32, d_ff=64, num_layers=1,
                      num_decoder_layers=1, num_heads=2, vocab_size=300, lr=0.3, warmup=0.01,
                      threads=1, eval_every=5, patience=2)
    summary = train_captioner(pairs, tmp_path / "m", cfg, val_pairs=val, log_every=50)
    assert summary["stopped"].startswith("validation loss did not improve")
    assert summary["steps"] < 400
    best = min(v for _, v in summary["val_curve"])
    assert summary["val_loss_after"] == pytest.approx(best, abs=1e-3)
    side = json.loads((tmp_path / "m" / SIDECAR).read_text())
    assert side["training"]["best_step"] == min(summary["val_curve"], key=lambda x: x[1])[0]


def test_a_plateau_at_a_high_learning_rate_does_not_stop_training():
    """A flat validation loss early in the cosine schedule is the high rate's noise floor (a
    30-minute run stopped after 9 minutes at val 2.40); it stops once the rate has decayed, and
    a loss that climbs well above the best stops at once."""
    from laion_audio.captions.train import _lr_factor, _should_stop

    early, late = _lr_factor(0.3, 0.04), _lr_factor(0.7, 0.04)
    assert early > 0.5 > late
    assert not _should_stop(4, 4, early, 2.44, 2.40)          # plateau, rate still high
    assert _should_stop(4, 4, late, 2.44, 2.40)               # plateau after the decay
    assert _should_stop(4, 4, early, 3.10, 2.40)              # diverging
    assert not _should_stop(3, 4, late, 2.44, 2.40)           # patience not used up


def test_a_budget_of_zero_or_less_is_refused_not_endless(tmp_path):
    """max_minutes 0 was read as no limit and -1 as never reached: training without end."""
    from laion_audio.captions.train import TrainConfig, train_captioner

    pairs = [(["dog", "bark"], "a dog barks")]
    for budget in ({"max_steps": None, "max_minutes": 0}, {"max_steps": None, "max_minutes": -1.0},
                   {"max_steps": 0}, {"max_steps": -5}):
        with pytest.raises(ValueError, match="above 0"):
            train_captioner(pairs, tmp_path / "m", TrainConfig(**budget))
