"""Caption words -> AudioSet label names (LabelMapper), on real AudioCaps captions and the real
AudioSet class list and ontology; and train-captioner --audioset-labels end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laion_audio.captions.k2c import SIDECAR, Captioner
from laion_audio.captions.keywords import AudioSetLabels, caption_keywords
from laion_audio.captions.label_map import LabelMapper
from laion_audio.captions.train import build_pairs, load_captions

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.needs_shared


@pytest.fixture(scope="module")
def labels(shared_data):
    return AudioSetLabels.from_dir(shared_data / "audioset")


@pytest.fixture(scope="module")
def mapper(labels):
    return LabelMapper(labels)


@pytest.fixture(scope="module")
def val_captions(shared_data):
    return load_captions("audiocaps", shared_data / "audiocaps/dataset/val.csv")


def _name(labels, mid):
    return labels.label_names([mid])[0]


def test_real_caption_maps_to_display_names(mapper, labels, val_captions):
    cap = "Dog barking and vehicle engine idling followed shortly by vehicle engine revving"
    assert cap in val_captions
    # /m/0bt9lr "Dog", /m/05tny_ "Bark", /m/07yv9 "Vehicle", /m/02mk9 "Engine", /m/07pb8fc "Idling"
    want = [_name(labels, m) for m in ("/m/0bt9lr", "/m/05tny_", "/m/07yv9", "/m/02mk9", "/m/07pb8fc")]
    assert want == ["Dog", "Bark", "Vehicle", "Engine", "Idling"]
    # the second "vehicle engine" repeats emitted labels; "revving" would be the 7th keyword
    assert mapper.map_caption(cap) == want + ["shortly"]
    assert mapper.map_caption(cap, max_keywords=3) == ["Dog", "Bark", "Vehicle"]
    male = _name(labels, "/m/05zppz")
    assert male == "Male speech, man speaking"
    assert mapper.map_caption("a man speaks while a dog barks loudly") == [male, "Dog", "Bark"]


def test_multiword_synonym_beats_single_words(mapper, labels, shared_data):
    test = load_captions("audiocaps", shared_data / "audiocaps/dataset/test.csv")
    cap = "A tractor engine driving by followed by a car horn honking and wind blowing on a microphone"
    assert cap in test
    horn = _name(labels, "/m/0912c9")
    assert horn == "Vehicle horn, car horn, honking"
    got = mapper.map_caption(cap)
    # "car horn" is one label, not "Car" (/m/0k4j) then a loose "horn"; "honking" repeats it
    assert got == ["tractor", "Engine", "driving", horn, "Wind", "blowing"]
    assert _name(labels, "/m/0k4j") == "Car" and "Car" not in got
    assert mapper.map_caption("A toilet flushes and a female speaks") == ["Toilet flush", "female", "speak"]


def test_words_repeating_an_emitted_label_are_not_kept(mapper, val_captions):
    cap = "A woman speaks followed by another woman whimpering and speaking"
    assert cap in val_captions
    assert mapper.map_caption(cap) == ["Female speech, woman speaking", "Whimper"]


def test_ambiguity_rule(mapper):
    # 0: a label already emitted absorbs its repeated words (not also the goose's "Honk")
    assert mapper.map_caption("A car horn honks") == ["Vehicle horn, car horn, honking"]
    assert mapper.map_caption("Geese honk") == ["Goose", "Honk"]
    # 1: the synonym written as the caption writes it ("crow" and "crowing" share a stem)
    assert mapper.map_caption("A crow caws") == ["Crow", "Caw"]
    assert mapper.map_caption("A rooster crowing") == ["Chicken, rooster", "Crowing, cock-a-doodle-doo"]
    # 2: a primary synonym over a later one ("dogs" is also in "Canidae, dogs, wolves")
    assert mapper.map_caption("Dogs howl") == ["Dog", "Howl"]
    # 3: abstract/blacklisted ontology nodes are never targets; other ontology-only ones are
    assert mapper.map_caption("human voice") == ["human", "voice"]
    assert mapper.map_caption("a person yawns") == ["person", "Yawn"]


def test_val_captions_labels_once_and_share_mapped(mapper, labels, val_captions):
    names = set(labels.names.values())
    mapped = 0
    for cap in val_captions:
        kws = mapper.map_caption(cap)
        assert 1 <= len(kws) <= 6 and len(set(kws)) == len(kws), (cap, kws)
        found = mapper.mapped_labels(kws)
        assert all(k in names for k in found)
        # words with no label are the plain keywords' base forms
        plain = set(caption_keywords(cap, 50))
        assert all(k in plain for k in kws if k not in found), (cap, kws)
        mapped += bool(found)
    share = mapped / len(val_captions)
    print(f"AudioCaps val captions with >= 1 AudioSet label: {mapped}/{len(val_captions)} = {share:.3f}")
    assert share > 0.9


def test_build_pairs_share_is_seeded(mapper, val_captions):
    caps = val_captions[:400]
    plain = build_pairs(caps)
    assert build_pairs(caps, label_mapper=mapper, label_share=0.0) == plain
    full = build_pairs(caps, label_mapper=mapper)
    assert all(k == mapper.map_caption(c) for k, c in full)
    half = build_pairs(caps, label_mapper=mapper, label_share=0.5, seed=3)
    assert half == build_pairs(caps, label_mapper=mapper, label_share=0.5, seed=3)
    n_mapped = sum(k != p for (k, _), (p, _) in zip(half, plain))
    n_differ = sum(k != p for (k, _), (p, _) in zip(full, plain))
    assert 0.35 * n_differ < n_mapped < 0.65 * n_differ
    with pytest.raises(ValueError):
        build_pairs(caps, label_mapper=mapper, label_share=1.5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "laion_audio", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_cli_train_captioner_with_audioset_labels(shared_data, tmp_path):
    res = _cli("train-captioner", "--corpus", f"audiocaps:{shared_data / 'audiocaps/dataset/train.csv'}",
               "--audioset-labels", str(shared_data / "audioset"), "--audioset-share", "0.8",
               "--out", str(tmp_path / "m"), "--max-steps", "5", "--d-model", "32", "--layers", "1",
               "--vocab-size", "300", "--limit", "200", "--batch-size", "16", "--threads", "1",
               "--keep-incomplete-pairs", "--no-report")
    assert res.returncode == 0, res.stderr[-2000:]
    side = json.loads((tmp_path / "m" / SIDECAR).read_text())
    assert side["training"]["steps"] == 5
    mapping = side["pairs"]["label_mapping"]
    assert mapping["audioset_share"] == 0.8
    assert mapping["audioset_labels"] == "audioset"              # a name, never a local path
    assert side["pairs"]["corpora"] == ["audiocaps:train.csv"]
    assert str(tmp_path) not in json.dumps(side) and str(shared_data.resolve()) not in json.dumps(side)
    assert set(mapping["files_sha256"]) == {"class_labels_indices.csv", "ontology.json"}
    assert 100 < mapping["pairs_with_labels"] <= side["pairs"]["pairs"] == 200
    assert Captioner.load(tmp_path / "m", device="cpu").generate([["Dog", "Bark"]])[0]

    bad = _cli("train-captioner", "--corpus", f"audiocaps:{shared_data / 'audiocaps/dataset/val.csv'}",
               "--audioset-labels", str(tmp_path), "--out", str(tmp_path / "x"), "--max-steps", "1")
    assert bad.returncode == 2 and "class_labels_indices.csv" in bad.stderr


# ------------------------------------------------------------------ rare labels by sibling

def test_sibling_pairs_on_real_captions(mapper, labels, shared_data):
    """Real AudioCaps train captions and the real ontology: each added caption maps back to
    exactly its keywords, is a new sentence, and the classes the captions name fewer than
    ``per_label`` times become more common, none beyond the quota by substitution."""
    from collections import Counter

    caps = load_captions("audiocaps", shared_data / "audiocaps/dataset/train.csv", limit=8000)
    per_label = 12
    pairs = mapper.sibling_pairs(caps, per_label, seed=3)
    assert len(pairs) > 300
    originals = set(caps)
    before = Counter(k for c in caps for k in mapper.mapped_labels(mapper.map_caption(c)))
    after = Counter(before)
    for kws, cap in pairs:
        assert mapper.map_caption(cap) == kws
        assert cap not in originals
        after.update(mapper.mapped_labels(kws))
    rare = [m for m in labels.class_mids if before[labels.names[m]] < per_label]
    filled = [m for m in rare if after[labels.names[m]] > before[labels.names[m]]]
    assert len(filled) > 0.3 * len(rare)
    assert sum(after[labels.names[m]] >= per_label for m in labels.class_mids) > \
        sum(before[labels.names[m]] >= per_label for m in labels.class_mids) + 50
    assert mapper.sibling_pairs(caps, per_label, seed=3) == pairs          # seeded


def _toy_mapper():
    names = {"/g": "Music genre", "/c": "Country", "/b": "Bluegrass", "/r": "Reggae",
             "/a": "Domestic animals, pets", "/d": "Dog", "/k": "Cat", "/x": "Bark", "/y": "Yip",
             "/o": "Opera", "/w": "Drawer open or close", "/m": "Music"}
    children = {"/g": ["/c", "/b", "/r", "/o"], "/a": ["/d", "/k", "/w"], "/d": ["/x", "/y"],
                "/m": ["/g"]}
    labels = AudioSetLabels(names, class_mids=[m for m in names if m not in ("/g", "/a")],
                            restricted=["/g", "/a"], children=children)
    return LabelMapper(labels)


def test_sibling_pairs_replace_nouns_only_and_fix_the_article():
    mapper = _toy_mapper()
    caps = ["A dog barks while country music plays",
            "A dog is barking",                      # "barking" is a verb form: never replaced
            "The music is country"]                  # after a copula: never replaced
    pairs = mapper.sibling_pairs(caps, per_label=50, seed=0, passes=20)
    texts = [c for _, c in pairs]
    assert len(texts) == len(set(texts))                      # no pair twice
    assert set(texts) == {"A cat barks while country music plays",
                          "A dog barks while bluegrass music plays",
                          "A dog barks while reggae music plays",
                          "A dog barks while opera music plays", "A cat is barking"}
    assert "A dog yips" not in texts and not any("yip" in t.lower() for t in texts)
    assert not any("drawer" in t.lower() for t in texts)      # "Drawer open or close" is no noun
    assert "A dog barks while bluegrass music plays" in texts
    for kws, cap in pairs:
        assert mapper.map_caption(cap) == kws
    # the article follows the new word
    opera = mapper.sibling_pairs(["A country song and a dog"], per_label=50, seed=0, passes=30)
    assert any(c == "An opera song and a dog" for _, c in opera), opera
