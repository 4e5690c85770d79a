"""keytotext-era T5 checkpoint folders (``k2t``, ``k2t-base``, ``t5-base-common-gen``) run with
their own input format. No hub access: tiny T5 configs of those shapes (t5-small / t5-base
ratios, ReLU feed-forward, tied embeddings, logits padded past the tokenizer as T5's 32128 vs
32100) are built here with a tokenizer trained on real AudioCaps captions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laion_audio.captions.k2c import Captioner, GenerationParams, format_keywords, guess_input_format
from laion_audio.captions.train import load_captions, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.needs_shared]

#: name -> (T5 shape scaled down: d_model, d_ff, layers, heads), expected input format
CHECKPOINTS = {
    "k2t": ((64, 256, 2, 8), "k2t"),                   # gagan3012/k2t: t5-small shape
    "k2t-base": ((96, 384, 2, 12), "k2t"),             # gagan3012/k2t-base: t5-base shape
    "t5-base-common-gen": ((96, 384, 2, 12), "common_gen"),   # mrm8488/t5-base-finetuned-common_gen
}
SETS = [["Dog", "Bark"], ["Speech", "Music"], ["Vehicle horn, car horn, honking", "Traffic noise"],
        ["Water", "Splash, splatter", "Duck"]]


@pytest.fixture(scope="module")
def checkpoints(shared_data, tmp_path_factory):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    caps = load_captions("audiocaps", shared_data / "audiocaps/dataset/val.csv", limit=1500)
    tok = train_tokenizer(caps + ["dog| bark| speech| music"], 800)
    root = tmp_path_factory.mktemp("k2t") / "k2t_runs"      # parent named k2t on purpose
    out = {}
    for i, (name, ((d, ff, layers, heads), _)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(i)
        cfg = T5Config(vocab_size=len(tok) + 28, d_model=d, d_kv=d // heads, d_ff=ff,
                       num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                       feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0)
        model = T5ForConditionalGeneration(cfg).eval()
        folder = root / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out[name] = folder
    return out


class _Recording:
    """Delegates to a tokenizer and records the strings the captioner feeds the encoder."""

    def __init__(self, tok):
        self.tok, self.seen = tok, []

    def __call__(self, texts, **kw):
        self.seen.extend(texts)
        return self.tok(texts, **kw)

    def __len__(self):
        return len(self.tok)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_gets_its_input_format(checkpoints, name):
    folder = checkpoints[name]
    fmt = CHECKPOINTS[name][1]
    assert guess_input_format(folder) == fmt
    cap = Captioner.load(folder, device="cpu", params=GenerationParams(max_new_tokens=12))
    assert cap.input_format == fmt
    rec = _Recording(cap.tokenizer)
    cap.tokenizer = rec
    out = cap.generate(SETS)
    assert len(out) == len(SETS)
    assert sorted(rec.seen) == sorted(format_keywords(s, fmt) for s in SETS)
    if fmt == "k2t":
        assert "Dog| Bark </s>" in rec.seen
        # keytotext's literal "</s>" is the EOS token, then the tokenizer's own
        assert rec.tok("Dog| Bark </s>")["input_ids"][-2:] == [1, 1]
    else:
        assert "Dog Bark" in rec.seen


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k2t", "t5-base-common-gen"])
def test_our_beam_search_equals_hf_generate_on_keytotext_shapes(checkpoints, name):
    for params in (GenerationParams(max_new_tokens=16),
                   GenerationParams(max_new_tokens=16, keyword_boost=2.0, rerank_by_coverage=True)):
        cap = Captioner.load(checkpoints[name], device="cpu", params=params)
        assert cap.generate(SETS) == cap.generate(SETS, hf_generate=True)


@pytest.mark.slow
def test_audioset_captions_with_a_k2t_base_checkpoint(checkpoints, shared_data, tmp_path):
    lines = (shared_data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("".join(lines[:13]))
    out = tmp_path / "o.parquet"
    res = subprocess.run([sys.executable, "-m", "laion_audio", "audioset-captions", str(csv_path),
                          "--model", str(checkpoints["k2t-base"]), "--out", str(out),
                          "--audioset-labels", str(shared_data / "audioset"), "--no-progress",
                          "--force-caption-model", "--max-new-tokens", "8", "--no-keyword-fallback"],
                         cwd=REPO, text=True, capture_output=True, timeout=600,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no quality report" in res.stderr          # a hub checkpoint comes without one
    import pyarrow.parquet as pq

    provs = [json.loads(p) for p in pq.read_table(out).column("provenance").to_pylist()]
    assert len(provs) == 10 and all(p["input_format"] == "k2t" for p in provs)
