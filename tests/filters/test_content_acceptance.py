"""Acceptance for content overlap: perturbed copies of real eval clips among >= 2,000 other clips.

Eval clips: 100 real sounds (Debian packages, ../shared/data/laion_pairs, 10 s excerpts of long
files, espeak-ng speech). Each is planted under every perturbation the issue names (MP3
128 kbit/s, trims, 5 s excerpt, +-6 dB, resampling, -30 dB noise) plus two harder extras (all
at once; the clip inside a longer recording). Distractors: the other real files, excerpts of
other long files, other speech and other takes of the eval sentences, synthetic textures.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import robustness  # benchmarks/ (tests/filters/conftest.py)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluation(debian_sounds, shared_data):
    files = list(debian_sounds) + sorted(Path(shared_data, "laion_pairs").glob("*.flac"))
    corpus = robustness.build_planted_corpus(files, n_eval=100, n_distractors=2000, seed=0)
    return corpus, *robustness.evaluate(corpus)


def test_planted_copies_are_found(evaluation):
    corpus, report, extra = evaluation
    assert len(corpus.eval_clips) == 100 and report.distractors >= 2000
    # no eval clip may be (mostly) silence: game music ends in digital zeros
    assert all(robustness.active_fraction(x) >= 0.1 for _, x in corpus.eval_clips)
    print("\n" + "\n".join(report.lines()))
    print("missed:", extra["missed"])
    print("found through an eval clip of the same recording:", extra["found_via_twin"])
    required = {k: v for k, v in report.planted.items() if k in robustness.REQUIRED}
    found = sum(report.found.get(k, 0) for k in required)
    recall_required = found / sum(required.values())
    print(f"recall over the issue's perturbations: {recall_required:.4f}")
    assert recall_required >= 0.99
    for name in robustness.REQUIRED:
        if name in report.planted:
            assert report.found.get(name, 0) / report.planted[name] >= 0.95, name
    # the two extra, harder cases: measured, held to a lower floor
    assert report.found.get("combined", 0) / report.planted["combined"] >= 0.95
    assert report.found.get("inside_longer", 0) / report.planted["inside_longer"] >= 0.9


def test_false_positives_are_rare(evaluation):
    corpus, report, extra = evaluation
    print("\nconfirmed distractor matches that share audio with the eval clip (Debian files "
          "built from the same recordings):", extra["pool_relations"])
    print("false positives:", extra["false_positive_pairs"])
    assert report.fp_rate <= 0.001
