"""Caption corpora for train-captioner: every supported kind reads real files."""
from __future__ import annotations

import pytest

from laion_audio.captions.train import build_pairs, load_captions
from laion_audio.ledger import Ledger
from laion_audio.records import Record


@pytest.mark.needs_shared
def test_real_corpora(shared_data):
    ac = load_captions("audiocaps", shared_data / "audiocaps/dataset/train.csv")
    assert len(ac) == 49838 and ac[0] == "A woman talks nearby as water pours"
    bbc = load_captions("bbc", shared_data / "bbc/BBCSoundEffects.csv", limit=50)
    assert len(bbc) == 50 and bbc[0].startswith("Two-stroke petrol engine")
    sb = load_captions("soundbible", shared_data / "wavcaps/SoundBible/sb_final.json")
    assert len(sb) == 1232 and sb[0] == "An airplane is landing."
    pairs = build_pairs(ac[:100])
    assert pairs[0] == (["woman", "talk", "water", "pour"], ac[0])
    assert all(1 <= len(k) <= 6 for k, _ in pairs)


def test_ledger_and_text_corpora(tmp_path):
    with Ledger(tmp_path / "l") as ledger:
        ledger.write([
            Record(source="bbc", source_id="1", texts=["Dog barking in a yard."]),
            Record(source="audioset", source_id="2", texts=["The sound of Speech"],
                   caption_provenance={"rule": "template"}),       # not human: skipped
        ])
    assert load_captions("ledger", tmp_path / "l") == ["Dog barking in a yard."]
    (tmp_path / "c.txt").write_text("a bell rings\n\n  thunder   rumbles \n")
    assert load_captions("text", tmp_path / "c.txt") == ["a bell rings", "thunder rumbles"]
    with pytest.raises(ValueError, match="unknown corpus kind"):
        load_captions("nope", tmp_path / "c.txt")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'caption' column"):
        load_captions("audiocaps", tmp_path / "bad.csv")
