"""Our batched beam search (laion_audio/captions/beam.py) against HF ``model.generate``: the same
token ids on real AudioSet label sets with the tiny captioner trained in conftest.py, with and
without the keyword boost, with coverage reranking (4 returned sequences per item), while
finished items really leave the batch; unsupported settings fall back to HF."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from transformers import (BartConfig, BartForConditionalGeneration, LogitsProcessorList, T5Config,
                          T5ForConditionalGeneration)

from laion_audio.captions import beam
from laion_audio.captions.k2c import GenerationParams, KeywordBoost, format_keywords

pytestmark = [pytest.mark.needs_shared]

VARIANTS = {
    "keytotext": GenerationParams(),
    "boost_rerank": GenerationParams(keyword_boost=3.0, rerank_by_coverage=True),
    "no_early_stop_3_beams": GenerationParams(num_beams=3, early_stopping=False, length_penalty=0.8,
                                              max_new_tokens=20),
}


@pytest.fixture(scope="module")
def label_sets(audioset_sets):
    labels, segs = audioset_sets
    sets = [labels.label_names(s.mids) for s in segs]
    assert len(sets) >= 30
    return sets


def inputs_and_kwargs(captioner, sets, params):
    """What Captioner._generate_batch hands to generate: padded ids, mask, kwargs."""
    enc = captioner.tokenizer([format_keywords(ks, captioner.input_format) for ks in sets],
                              return_tensors="pt", padding=True)
    kwargs = params.generate_kwargs()
    if params.keyword_boost:
        lemmas = replace(captioner)._vocab_lemmas()      # a copy: the fixture is shared, keep it clean
        kwargs["logits_processor"] = LogitsProcessorList([KeywordBoost(
            lemmas, sets, params.num_beams, params.keyword_boost,
            captioner.tokenizer.eos_token_id, "cpu")])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, kwargs


def hf_generate(model, enc, kwargs):
    with torch.inference_mode():
        return model.generate(**enc, **kwargs)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_tokens_as_hf_generate_on_audioset_label_sets(captioner, label_sets, variant, monkeypatch):
    params = VARIANTS[variant]
    enc, kwargs = inputs_and_kwargs(captioner, label_sets, params)
    assert beam.why_unsupported(captioner.model, kwargs) is None     # our path, not the fallback
    rows_per_step = []
    step = beam._T5Decoder.step

    def counting_step(self, tokens, past, beams):
        rows_per_step.append(tokens.shape[0])
        return step(self, tokens, past, beams)

    monkeypatch.setattr(beam._T5Decoder, "step", counting_step)
    ours = beam.generate(captioner.model, **enc, **kwargs)
    expected = hf_generate(captioner.model, enc, kwargs)
    assert ours.shape == expected.shape == (len(label_sets) * kwargs["num_return_sequences"],
                                            expected.shape[1])
    differing = (ours != expected).any(dim=1).nonzero()[:, 0].tolist()
    assert differing == [], f"{len(differing)} of {len(ours)} sequences differ from HF: {differing}"
    # the first step decodes one row per item; finished items then leave the batch
    n, beams = len(label_sets), params.num_beams
    assert rows_per_step[0] == n and rows_per_step[1] == n * beams
    assert all(a >= b for a, b in zip(rows_per_step[1:], rows_per_step[2:]))
    assert rows_per_step[-1] < n * beams, "no item finished before the longest one"


def test_captioner_captions_equal_hf_generate_captions(captioner, label_sets):
    for params in (VARIANTS["keytotext"], VARIANTS["boost_rerank"]):
        cap = replace(captioner, params=params, batch_size=16)          # several batches
        ours = cap.generate(label_sets)
        assert ours == cap.generate(label_sets, hf_generate=True)
        assert all(isinstance(c, str) for c in ours) and sum(bool(c) for c in ours) >= len(ours) - 2


def test_bfloat16_takes_the_same_path(captioner, label_sets):
    """Device/dtype-agnostic code: bf16 on CPU (the CUDA path's dtype) still equals HF."""
    model = copy.deepcopy(captioner.model).to(torch.bfloat16)
    enc, kwargs = inputs_and_kwargs(captioner, label_sets[:16], VARIANTS["keytotext"])
    assert beam.why_unsupported(model, kwargs) is None
    assert torch.equal(beam.generate(model, **enc, **kwargs), hf_generate(model, enc, kwargs))


@pytest.mark.parametrize("feed_forward, tied", [("gated-gelu", False), ("relu", True)])
def test_other_t5_layouts_equal_hf_generate(feed_forward, tied):
    """t5 v1.1/flan-style gated feed-forward with an untied head, and t5-base-style relu with a
    tied, rescaled head: random weights, EOS made likely so items end at different steps."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj=feed_forward, tie_word_embeddings=tied,
        decoder_start_token_id=0)).eval()
    with torch.no_grad():
        model.lm_head.weight[1] *= 4                                     # EOS
    ids = torch.randint(2, 200, (24, 9))
    mask = torch.ones_like(ids)
    for i in range(24):                                                  # right padding, EOS last
        n = 2 + i % 8
        ids[i, n - 1], ids[i, n:], mask[i, n:] = 1, 0, 0
    kwargs = GenerationParams(max_new_tokens=16).generate_kwargs()
    assert beam.why_unsupported(model, kwargs) is None
    ours = beam.generate(model, ids, mask, **kwargs)
    assert torch.equal(ours, hf_generate(model, {"input_ids": ids, "attention_mask": mask}, kwargs))
    assert len({int((row != 1).sum()) for row in ours}) > 3              # lengths really vary


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_unsupported_settings_fall_back_to_hf_generate(captioner, label_sets):
    enc, kwargs = inputs_and_kwargs(captioner, label_sets[:6], VARIANTS["keytotext"])
    for change, reason in (({"repetition_penalty": 1.3}, "repetition_penalty"),
                           ({"num_beams": 1, "num_return_sequences": 1}, "not beam search"),
                           ({"max_new_tokens": None}, "max_new_tokens unset")):
        args = {**kwargs, **change}
        why = beam.why_unsupported(captioner.model, args)
        assert why and reason in why, why
        assert torch.equal(beam.generate(captioner.model, **enc, **args),
                           hf_generate(captioner.model, enc, args))
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)).eval()
    assert "BartForConditionalGeneration" in beam.why_unsupported(bart, kwargs)
    train_mode = copy.deepcopy(captioner.model).train()
    assert "training" in beam.why_unsupported(train_mode, kwargs)
