"""Reference-based caption scores against values computed by hand from the definitions."""
import math

import pytest

from laion_audio.captions import refscore


def test_bleu_hand_computed():
    # p1 7/7, p2 5/6 ("and a" unmatched), p3 3/5, p4 1/4; c = 7 < r = 8: BP exp(1 - 8/7)
    got = refscore.bleu(["a dog barks and a dog growls"], [["a dog barks and then a dog growls"]])
    assert got == pytest.approx(math.exp(-1 / 7) * (5 / 6 * 3 / 5 * 1 / 4) ** 0.25)
    assert got == pytest.approx(0.515449, abs=1e-6)


def test_bleu_clips_counts_and_picks_the_closest_reference_length():
    # "the the the the" against "the cat": unigram precision clipped to 1/4, no bigram: 0
    assert refscore.bleu(["the the the the"], [["the cat"]]) == 0.0
    # identical to the longer reference: BP 1 (closest length 6, not 3), every precision 1
    assert refscore.bleu(["a b c d e f"], [["a b c", "a b c d e f"]]) == pytest.approx(1.0)
    # corpus level: counts are summed before the ratios (p4 = 2/3 over both, not the mean
    # of 1 and 1/2); lengths 9 and 9: BP 1
    got = refscore.bleu(["a b c d", "w x y z q"], [["a b c d"], ["w x y z r"]])
    assert got == pytest.approx((8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25)


def test_meteor_hand_computed():
    # m 3, P 3/4, R 1: F = PR / (0.9 P + 0.1 R); one chunk: penalty 0.5 (1/3)^3
    f = 0.75 / (0.9 * 0.75 + 0.1)
    assert refscore.meteor_one("a dog barks loudly", "a dog barks") == pytest.approx(f * (1 - 0.5 / 27))
    # same words, scrambled: three chunks of one word, penalty 0.5 -> word order counts
    assert refscore.meteor_one("dog a barks", "a dog barks") == pytest.approx(0.5)
    # stem match ("barking" ~ "barks") counts; best reference is taken
    assert refscore.meteor_one("dog barking", "dog barks") > 0.9
    assert refscore.meteor(["dog barks"], [["a cat", "dog barks"]]) == pytest.approx(
        refscore.meteor_one("dog barks", "dog barks"))
    assert refscore.meteor_one("", "a dog") == 0.0


def test_cider_d_hand_computed():
    # two clips, log N = log 2; clip 1 identical (cos 1 for n = 1..3, no 4-gram): 10 x 3/4;
    # clip 2 "a cat" vs "a cat meows": n=1 and n=2 cosines 1/sqrt(2) ("a" has idf 0),
    # length penalty exp(-1/72)
    got = refscore.cider_d(["a dog barks", "a cat"], [["a dog barks"], ["a cat meows"]])
    assert got == pytest.approx((7.5 + 10 * math.sqrt(2) * math.exp(-1 / 72) / 4) / 2)


def test_cider_d_rewards_the_right_order_and_not_a_list():
    refs = [["a dog barks while a man talks", "a dog is barking and a man speaks"],
            ["a car engine revs", "an engine revs loudly"],
            ["birds chirp in the distance", "birds are chirping"]]
    good = ["a dog barks while a man speaks", "a car engine revs", "birds chirp"]
    listed = ["the sounds of dog, bark, man and talk", "the sounds of car, engine and rev",
              "the sounds of bird and chirp"]
    assert refscore.cider_d(good, refs) > 3 * refscore.cider_d(listed, refs)
    assert refscore.score(good, refs)["bleu4"] > refscore.score(listed, refs)["bleu4"]


def test_reference_sets_hold_out_the_source(tmp_path):
    csv = tmp_path / "val.csv"
    rows = ["audiocap_id,youtube_id,start_time,caption"]
    for i, cap in enumerate(["A dog barks", "Dogs bark loudly", "A dog is barking",
                             "Barking of a dog", "A dog barks twice"]):
        rows.append(f"{i},yt1,0,{cap}")
    rows.append("9,yt2,0,Only one caption")
    csv.write_text("\n".join(rows) + "\n")
    sets = refscore.reference_sets(csv, n=10, seed=0)
    assert len(sets) == 1                          # yt2 has too few captions
    kws, src, others = sets[0]
    assert src not in others and len(others) == 4
    assert "dog" in kws
