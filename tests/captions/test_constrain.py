"""Lexically constrained decoding (``laion_audio/captions/constrain.py``): on real AudioSet label
sets, with the session's tiny trained captioner and with an untrained (random) T5 sharing its
tokenizer, every caption obeys the constraints: no end before every keyword is present, no
content word outside the keywords, no word twice in a row, no content word three times."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from laion_audio.captions import gate
from laion_audio.captions.beam import generate
from laion_audio.captions.cache import cache_key
from laion_audio.captions.constrain import LexicalConstraint, TokenTable
from laion_audio.captions.k2c import Captioner, GenerationParams, format_keywords
from laion_audio.captions.keywords import AudioSetLabels, normalise_keywords
from laion_audio.captions.quality import invented_words, keyword_coverage
from laion_audio.captions.grammar import misplaced_words

pytestmark = [pytest.mark.needs_shared]


@pytest.fixture(scope="module")
def label_sets(shared_data):
    labels = AudioSetLabels.from_dir(shared_data / "audioset")
    return gate.sample_label_sets(shared_data / "audioset/eval_segments.csv", labels, 48, seed=3)


def _figures(sets, captions):
    return gate.score(sets, captions, None)


def test_constraints_hold_on_the_tiny_captioner(captioner, label_sets):
    free = replace(captioner, params=GenerationParams(rerank_by_coverage=True, keyword_boost=2.0))
    held = replace(captioner, params=GenerationParams(rerank_by_coverage=True, keyword_boost=2.0,
                                                      constrained=True))
    before = _figures(label_sets, free.generate(label_sets))
    caps = held.generate(label_sets)
    after = _figures(label_sets, caps)
    # the tiny model alone invents and repeats; under the constraints it cannot
    assert before["invented_word_rate"] > 0.15 and before["all_keywords_rate"] < 0.6
    assert after["repetition_rate"] == 0.0
    assert after["all_keywords_rate"] >= 0.75 and after["keyword_coverage"] > before["keyword_coverage"] + 0.3
    for ks, c in zip(label_sets, caps):
        if keyword_coverage(ks, c) == 1.0:     # ended by EOS: nothing invented
            assert invented_words(ks, c) == [], (ks, c)
    assert after["invented_word_rate"] <= 0.03
    # batching and beam.py's dropping of finished items do not change the result
    one_by_one = [held.generate([ks])[0] for ks in label_sets[:6]]
    assert one_by_one == caps[:6]


@pytest.fixture(scope="module")
def random_model(tiny):
    """An untrained T5 of the tiny model's shape: its preferences are noise, so whatever the
    captions obey comes from the constraints."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(tiny[0]))
    torch.manual_seed(7)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=1,
                   num_decoder_layers=1, num_heads=4, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0, tie_word_embeddings=True)
    return T5ForConditionalGeneration(cfg).eval(), tok


def test_random_model_obeys_every_constraint(random_model, label_sets):
    from laion_audio.captions.gate import repeats
    from laion_audio.captions.keywords import content_words, lemma, words

    model, tok = random_model
    sets = [list(normalise_keywords(s)) for s in label_sets]
    table = TokenTable(tok, model.config.vocab_size)
    enc = tok([format_keywords(s, "laion-audio") for s in sets], return_tensors="pt", padding=True)
    kwargs = dict(num_beams=4, length_penalty=1.5, no_repeat_ngram_size=3, max_new_tokens=48,
                  early_stopping=True, do_sample=False, num_return_sequences=1)
    free = generate(model, enc["input_ids"], enc["attention_mask"], **kwargs)
    proc = LexicalConstraint(table, sets, 4, 48)
    held = generate(model, enc["input_ids"], enc["attention_mask"], logits_processor=[proc], **kwargs)
    free_txt = tok.batch_decode(free, skip_special_tokens=True)
    assert sum(bool(invented_words(s, c)) for s, c in zip(sets, free_txt)) > len(sets) // 2
    ended = dead = 0
    for s, item, row in zip(sets, proc.items, held.tolist()):
        text = tok.decode(row, skip_special_tokens=True)
        ws = words(text)
        assert all(a != b for a, b in zip(ws, ws[1:])), text
        assert not repeats(text), text
        eos = row.index(tok.eos_token_id) if tok.eos_token_id in row else None
        if eos is not None and tuple(row[:eos]) in item.dead_ends:
            dead += 1                          # no token was allowed: a forced stop
        elif eos is not None:                  # it ended: every keyword is there, nothing invented
            ended += 1
            assert keyword_coverage(s, text) == 1.0, (s, text)
            assert invented_words(s, text) == [], (s, text)
        else:                                  # out of tokens: only the unfinished last word
            assert all(w == ws[-1] for w in invented_words(s, text)), (s, text)
        allowed = {lemma(w) for k in s for w in content_words(k)}
        assert all(lemma(w) in allowed for w in content_words(text)[:-1]), (s, text)
    print(f"random model: {ended} ended, {dead} dead ends of {len(sets)}")
    assert ended >= len(sets) * 0.5 and dead <= len(sets) * 0.1


def test_keyword_alternatives_and_allowed_words(random_model):
    """Any comma alternative of an AudioSet name satisfies it (all its content words); the
    words a caption may use are the keywords' lemmas plus stop words."""
    from laion_audio.captions.keywords import lemma

    model, tok = random_model
    table = TokenTable(tok, model.config.vocab_size)
    item = LexicalConstraint(table, [["Male speech, man speaking", "Dog"]], 1, 48).items[0]
    assert not item.covered({lemma("dog")})
    assert item.covered({lemma("dog"), lemma("man"), lemma("speaking")})
    assert item.covered({lemma("dogs"), lemma("male"), lemma("speech")})
    assert not item.covered({lemma("dog"), lemma("man"), lemma("speech")})
    assert {"dog", "man", "speech", "male"} <= item.words
    assert all(lemma(w) in item.allowed_lemmas for w in item.words)
    assert item.complete_ok("the", "dog", frozenset()) and not item.complete_ok("dog", "dog", frozenset())
    assert not item.complete_ok("cat", "", frozenset())
    assert not item.complete_ok("dog", "", frozenset({lemma("dog")}))


def test_constrained_is_a_decoding_of_its_own(tiny, captioner):
    plain = GenerationParams(rerank_by_coverage=True, keyword_boost=2.0)
    held = replace(plain, constrained=True)
    a, b = replace(captioner, params=plain), replace(captioner, params=held)
    # the cache key changes with the constraint; without it, keys made before the option stay
    assert "constrained" not in a.cache_identity["generation"]
    assert b.cache_identity["generation"]["constrained"] is True
    assert cache_key(a.cache_identity, ["Dog"]) != cache_key(b.cache_identity, ["Dog"])
    # the gate tells the two apart; a report older than the option describes the plain one
    old_entry = {k: v for k, v in gate._decoding_key(plain).items() if k != "constrained"}
    assert gate._same_decoding(old_entry, gate._decoding_key(plain))
    assert not gate._same_decoding(old_entry, gate._decoding_key(held))
    assert gate.DEFAULT_DECODINGS[-1].get("constrained") is True
    assert "constrained" in gate.decoding_name(gate._decoding_key(held))


# -- shallow fusion of a glue LM (GlueFusion) ------------------------------------------------

def _clotho_lm(shared_data):
    from laion_audio.captions.constrain import _glue_class
    from laion_audio.captions.keywords import words
    from laion_audio.captions.quality import NgramLM
    from laion_audio.captions.train import load_captions

    caps = load_captions("clotho", shared_data / "clotho/wavcaps_derived/csv_files/train.csv")
    assert len(caps) > 15_000                  # five captions a row
    return caps, NgramLM(" ".join(map(_glue_class, words(c))) for c in caps)


def test_fused_scores_add_up_to_the_lm_score(random_model, label_sets, shared_data):
    """The per-token bonuses (look-ahead on a word's first piece, corrected at its end) sum to
    exactly weight x the class LM's log-probability of the finished caption, and the fused
    search still obeys every constraint."""
    import math

    from laion_audio.captions.constrain import GlueFusion
    from laion_audio.captions.keywords import words

    model, tok = random_model
    _, lm = _clotho_lm(shared_data)
    sets = [list(normalise_keywords(s)) for s in label_sets[:16]]
    table = TokenTable(tok, model.config.vocab_size)
    enc = tok([format_keywords(s, "laion-audio") for s in sets], return_tensors="pt", padding=True)
    fusion = GlueFusion(lm, 1.5)
    proc = LexicalConstraint(table, sets, 4, 48, fusion=fusion)
    out = generate(model, enc["input_ids"], enc["attention_mask"], logits_processor=[proc],
                   num_beams=4, length_penalty=1.0, no_repeat_ngram_size=3, max_new_tokens=48,
                   early_stopping=True, do_sample=False, num_return_sequences=1)
    checked = 0
    for s, searched, row in zip(sets, proc.items, out.tolist()):
        if tok.eos_token_id not in row or tuple(row[:row.index(tok.eos_token_id)]) in searched.dead_ends:
            continue                       # out of tokens, or a forced stop (see above)
        row = row[:row.index(tok.eos_token_id) + 1]
        item = LexicalConstraint(table, [s], 1, 48, fusion=fusion).items[0]
        total = 0.0
        for k in range(1, len(row)):
            state = proc._state(item, tuple(row[:k]))
            total += float(fusion.bonus(item, state)[row[k]])
        text = tok.decode(row, skip_special_tokens=True)
        ws = ["<s>", "<s>"] + words(text) + ["</s>"]
        exact = sum(fusion.word((ws[i - 2], ws[i - 1]), ws[i]) for i in range(2, len(ws)))
        assert math.isclose(total, 1.5 * exact, rel_tol=1e-4, abs_tol=1e-3), (text, total, exact)
        assert keyword_coverage(s, text) == 1.0 and invented_words(s, text) == [], (s, text)
        checked += 1
    assert checked >= 10


def test_fusion_makes_the_glue_more_human(tiny, captioner, label_sets, shared_data, tmp_path):
    """On the tiny captioner, fusing a Clotho glue LM lowers the function-word perplexity under
    an AudioCaps (test.csv) LM - another corpus than the fused one - and keeps every keyword."""
    import shutil

    from laion_audio.captions.quality import NgramLM
    from laion_audio.captions.train import load_captions

    folder = tmp_path / "model"
    shutil.copytree(tiny[0], folder)
    clotho = shared_data / "clotho/wavcaps_derived/csv_files/train.csv"
    gate_corpus = ("audiocaps", str(shared_data / "audiocaps/dataset/test.csv"))
    with pytest.raises(gate.GateError, match="fluency corpus"):
        gate.attach_fusion_lm(folder, [gate_corpus], gate_corpus)
    info = gate.attach_fusion_lm(folder, [("clotho", str(clotho))], gate_corpus)
    assert list(info["corpora"]) == ["clotho:train.csv"] and info["captions"] > 15_000
    assert (folder / "fusion_lm.txt").is_file() and gate.fusion_provenance(folder) == info
    held = GenerationParams(rerank_by_coverage=True, keyword_boost=2.0, constrained=True,
                            length_penalty=1.0)
    plain = Captioner.load(folder, device="cpu", params=held)
    fused = Captioner.load(folder, device="cpu", params=replace(held, lm_fusion=2.0))
    a, b = plain.generate(label_sets), fused.generate(label_sets)
    lm = NgramLM(load_captions(*gate_corpus))
    fa, fb = gate.score(label_sets, a, lm), gate.score(label_sets, b, lm)
    print("function-word perplexity", fa["function_word_perplexity"], "->", fb["function_word_perplexity"])
    assert fb["function_word_perplexity"] < 0.85 * fa["function_word_perplexity"]
    assert fb["all_keywords_rate"] >= fa["all_keywords_rate"] - 0.05 and fb["repetition_rate"] == 0.0
    # a decoding of its own: in the cache key and the gate; fusion needs the constraints
    assert "lm_fusion" not in plain.cache_identity["generation"]
    assert fused.cache_identity["generation"]["lm_fusion"] == 2.0
    assert "LM fusion" in gate.decoding_name(gate._decoding_key(fused.params))
    with pytest.raises(ValueError):
        GenerationParams(lm_fusion=2.0)
    # a folder without the LM cannot fuse
    with pytest.raises(FileNotFoundError, match="fusion_lm.txt"):
        Captioner.load(tiny[0], device="cpu", params=replace(held, lm_fusion=2.0)).generate([["Dog"]])
    with pytest.raises(gate.GateError, match="fusion_lm.txt"):    # one line before loading
        gate.check_model_dir(tiny[0], replace(held, lm_fusion=2.0), force=True)


def test_a_damaged_fusion_lm_is_one_line_before_any_caption(tiny, tmp_path):
    """A ``fusion_lm.txt`` that is not UTF-8, or empty, would fail every caption over to the
    template one by one; the gate says so once, before loading, even when forced."""
    import shutil

    held = GenerationParams(keyword_boost=2.0, rerank_by_coverage=True, constrained=True,
                            lm_fusion=2.0)
    for damage in (bytes(range(128, 256)) * 20, b"", b"\n \n"):
        folder = tmp_path / f"m{len(damage)}"
        shutil.copytree(tiny[0], folder)
        (folder / "fusion_lm.txt").write_bytes(damage)
        with pytest.raises(gate.GateError, match="not a list of captions"):
            gate.check_model_dir(folder, held, force=True)
    (folder / "fusion_lm.txt").write_text("a dog barks\n", encoding="utf-8")
    gate.check_model_dir(folder, held, force=True, warn=lambda msg: None)   # forced: passes


def test_a_fused_decoding_must_beat_the_fusion_lm_alone():
    """Under fusion an untrained model passed the fluency limit (the LM writes the glue), so a
    fused decoding is judged against the same decoding with an untrained model too."""
    figs = {"keyword_coverage": 1.0, "all_keywords_rate": 1.0, "invented_word_rate": 0.0,
            "repetition_rate": 0.0, "misplaced_word_rate": 0.0, "function_word_perplexity": 20.0}
    assert gate.verdict(figs, 8.0) == []
    assert gate.verdict(figs, 8.0, {"function_word_perplexity": 25.0}) == []
    broken = gate.verdict(figs, 8.0, {"function_word_perplexity": 14.0})
    assert len(broken) == 1 and "untrained model" in broken[0]


def test_reference_quality_limits():
    """With reference scores (CIDEr-D against human captions of the same clips) a decoding must
    beat the template by ``MIN_OVER_TEMPLATE`` and a fused one the LM alone by
    ``MIN_OVER_LM_ONLY``; the LM-alone perplexity rule is then not used (comma lists of
    keywords fool a word trigram, references do not)."""
    tmpl = {"cider_d": 0.4}
    good = {"keyword_coverage": 1.0, "all_keywords_rate": 1.0, "invented_word_rate": 0.0,
            "repetition_rate": 0.0, "misplaced_word_rate": 0.0, "function_word_perplexity": 20.0,
            "references": {"cider_d": 0.4 * gate.MIN_OVER_TEMPLATE + 0.01}}
    alone = {"function_word_perplexity": 14.0,
             "references": {"cider_d": good["references"]["cider_d"] / gate.MIN_OVER_LM_ONLY - 0.01}}
    assert gate.verdict(good, 8.0, alone, tmpl) == []
    assert gate.verdict(good, 8.0, None, tmpl) == []
    weak = {**good, "references": {"cider_d": 0.4 * gate.MIN_OVER_TEMPLATE - 0.01}}
    [why] = gate.verdict(weak, 8.0, None, tmpl)
    assert "template" in why
    close = {**alone, "references": {"cider_d": good["references"]["cider_d"] / gate.MIN_OVER_LM_ONLY + 0.01}}
    [why] = gate.verdict(good, 8.0, close, tmpl)
    assert "untrained model" in why and "CIDEr-D" in why
    # no template reference figures: only the LM-alone comparison is made
    assert gate.verdict(weak, 8.0, {**alone, "references": {"cider_d": 0.1}}) == []


def test_a_saved_report_is_judged_by_the_limits_in_force(tmp_path):
    """``passes``/``broken`` in a saved report are derived: loading re-applies today's limits
    to its figures (a report written under older limits, or a hand-edited verdict, does not
    decide), and an entry without figures is refused: it cannot be judged. (0.5 < 1.5 x 0.4
    fails.)"""
    figs = {"keyword_coverage": 1.0, "all_keywords_rate": 1.0, "invented_word_rate": 0.0,
            "repetition_rate": 0.0, "misplaced_word_rate": 0.0, "references": {"cider_d": 0.5}}
    report = {"references": {"template": {"cider_d": 0.4}, "human": {"cider_d": 1.2}},
              "passes": True, "limits": {"min_cider_d_over_template": 1.0},
              "decodings": [{"generation": {"keyword_boost": 2.0}, **figs, "passes": True, "broken": []},
                            {"generation": {"keyword_boost": 0.0}, "passes": True, "broken": []}]}
    (tmp_path / gate.REPORT).write_text(json.dumps(report))
    loaded = gate.load_report(tmp_path)
    assert loaded["limits"] == gate.LIMITS
    assert not loaded["decodings"][0]["passes"] and "template" in loaded["decodings"][0]["broken"][0]
    assert not loaded["decodings"][1]["passes"] and not loaded["passes"]   # no figures
    assert "no figures" in loaded["decodings"][1]["broken"][0]
    report["decodings"][0]["references"]["cider_d"] = 0.7
    (tmp_path / gate.REPORT).write_text(json.dumps(report))
    assert gate.load_report(tmp_path)["decodings"][0]["passes"]
    del report["decodings"][0]["misplaced_word_rate"]          # written before the check
    (tmp_path / gate.REPORT).write_text(json.dumps(report))
    assert "predates" in gate.load_report(tmp_path)["decodings"][0]["broken"][0]
    (tmp_path / gate.REPORT).write_text("[1, 2]")                     # not a report
    assert gate.load_report(tmp_path) is None


def test_free_first_constrains_only_what_the_model_got_wrong(captioner, label_sets):
    """``free_first``: the unconstrained caption where it names every keyword, invents
    nothing and misplaces no word, the constrained one elsewhere; a decoding of its own
    (cache key, gate)."""
    base = GenerationParams(rerank_by_coverage=True, keyword_boost=2.0, constrained=True)
    sets = list(label_sets) + [("Dog", "Bark"), ("Speech",), ("Water",)]
    free = replace(captioner, params=replace(base, constrained=False)).generate(sets)
    held = replace(captioner, params=base).generate(sets)
    both_cap = replace(captioner, params=replace(base, free_first=True))
    both = both_cap.generate(sets)
    kept = 0
    for ks, f, h, b in zip(sets, free, held, both):
        if keyword_coverage(ks, f) == 1.0 and not invented_words(ks, f) and not misplaced_words(f):
            assert b == f, (ks, f, b)
            kept += 1
        else:
            assert b == h, (ks, h, b)
    assert 0 < kept < len(sets)
    assert both_cap.cache_identity["generation"]["free_first"] is True
    assert "free_first" not in replace(captioner, params=base).cache_identity["generation"]
    assert "free first" in gate.decoding_name(gate._decoding_key(both_cap.params))
    with pytest.raises(ValueError):
        GenerationParams(free_first=True)
