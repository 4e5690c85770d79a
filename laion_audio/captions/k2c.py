"""Keyword-to-caption with a T5 seq2seq model: loading, input formats, batched beam search.

LAION used the keytotext library, which runs one ``generate`` call per keyword set (and per
"."-separated piece of it). Here every call is batched (inputs sorted by length to cut
padding), decoded by :mod:`.beam` (HF's beam-search results without HF's wasted work), and
keywords are never split on ".". Defaults are keytotext's: 4 beams, length penalty 1.5,
no-repeat 3-grams, early stopping; new tokens are bounded (keytotext allowed 1024).

Input formats (what each model family was trained on):

``common_gen``  mrm8488/t5-base-finetuned-common_gen, k2t-new, anath/T5key2textcomgenminime:
                keywords joined by spaces ("dog bark night").
``k2t``         gagan3012/k2t, gagan3012/k2t-base: keytotext's K2TPipeline string, keywords
                joined by "|" after ``str(list)`` clean-up ("dog| bark| night"), plus the
                literal " </s>" keytotext appended.
``laion-audio`` models from ``laion-audio train-captioner``: "a | b | c", lower-cased, first
                comma-separated synonym of a label only; the
                model folder's ``laion_audio_k2c.json`` names it, so it is picked automatically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

#: Written by train-captioner next to the weights; tells the loader the input format.
SIDECAR = "laion_audio_k2c.json"

#: Human captions (one a line) for the LM fused into constrained decoding (``lm_fusion``).
FUSION_LM = "fusion_lm.txt"

INPUT_FORMATS = ("common_gen", "k2t", "laion-audio")


def format_keywords(keywords: Sequence[str], input_format: str) -> str:
    """The model input string for one keyword set (keywords already normalised)."""
    if input_format == "common_gen":
        return " ".join(keywords)
    if input_format == "k2t":
        return "| ".join(keywords) + " </s>"
    if input_format == "laion-audio":
        # an AudioSet name lists synonyms after commas ("Male speech, man speaking"); our
        # models are trained on single content words, so the first synonym stands for the label
        return " | ".join(k.split(",")[0].strip().lower() for k in keywords)
    raise ValueError(f"unknown input format {input_format!r}; one of {INPUT_FORMATS}")


def guess_input_format(model: str | os.PathLike) -> str:
    """The input format for a model folder or hub id: the sidecar if present, else by name.

    For a folder the name is the folder's own (not its parents': ``/data/k2t_runs/common-gen``
    is common_gen), or the ``_name_or_path`` its config.json recorded (a hub snapshot folder is
    named by a hash)."""
    path = Path(model)
    if (path / SIDECAR).exists():
        return json.loads((path / SIDECAR).read_text())["input_format"]
    names = [str(model)]
    if path.is_dir():
        names = [path.resolve().name]
        try:
            names.append(str(json.loads((path / "config.json").read_text()).get("_name_or_path", "")))
        except (OSError, ValueError):
            pass
    for name in names:
        last = name.lower().rstrip("/").rsplit("/", 1)[-1]
        if "k2t" in last and "k2t-new" not in last:
            return "k2t"
    return "common_gen"


@dataclass(frozen=True)
class GenerationParams:
    """Beam-search settings; part of the cache key, so any change regenerates."""

    num_beams: int = 4
    length_penalty: float = 1.5
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 48
    early_stopping: bool = True
    #: Generate all ``num_beams`` hypotheses and keep the one that covers the most keywords
    #: (ties: the model's best). Cheap keyword "constraint" without constrained decoding.
    rerank_by_coverage: bool = False
    #: Soft keyword constraint (0 = off, keytotext behaviour): while a keyword is unused, tokens
    #: that start any inflection of it gain this much log-probability and end-of-sentence loses
    #: this much per unused keyword. See :class:`KeywordBoost`.
    keyword_boost: float = 0.0
    #: Hard lexical constraints (:mod:`.constrain`): no end before every keyword is present,
    #: no content word outside the keywords, no word twice in a row or content word thrice.
    constrained: bool = False
    #: With ``constrained``: weight of shallow fusion with the class n-gram LM of the model
    #: folder's ``fusion_lm.txt`` (0 = off; see :class:`.constrain.GlueFusion`).
    lm_fusion: float = 0.0
    #: With ``constrained``: decode without the constraints (and fusion) first and keep a
    #: caption that covers every keyword and invents no content word; constrain only the
    #: rest. The constraints cost a trained model word order ("a fried is being fried");
    #: chosen on AudioCaps val references (docs/captions.md).
    free_first: bool = False

    def __post_init__(self):
        if self.lm_fusion and not self.constrained:
            raise ValueError("lm_fusion works inside constrained decoding (constrained=True)")
        if self.free_first and not self.constrained:
            raise ValueError("free_first is a way of constrained decoding (constrained=True)")

    def generate_kwargs(self) -> dict:
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size,
                "max_new_tokens": self.max_new_tokens, "early_stopping": self.early_stopping,
                "do_sample": False,
                "num_return_sequences": self.num_beams if self.rerank_by_coverage else 1}


def model_fingerprint(model: str | os.PathLike) -> str:
    """sha256 over a local model folder's config, tokenizer and weight files (the cache and
    the provenance name the exact weights); a hub id is used as is."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if (f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}
                and f.name != "caption_quality.json"):    # the gate's report describes the weights
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def load_t5(model: str | os.PathLike, what: str, **kwargs):
    """(tokenizer, seq2seq model) of a folder or hub id. A folder that cannot load (missing,
    empty, foreign, damaged) is the user's to fix: one line naming ``what``. Only the errors such
    folders raise are mapped (tried one by one, docs/captions.md); any other is a bug of ours
    and keeps its traceback."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..errors import UserError

    if Path(model).is_dir():
        _check_model_files(Path(model), what)
    try:
        return (AutoTokenizer.from_pretrained(str(model)),
                AutoModelForSeq2SeqLM.from_pretrained(str(model), **kwargs))
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(f"{what}: cannot load it ({_first_line(exc)})") from exc
    except RuntimeError as exc:
        # weights of other shapes than config.json says; other RuntimeErrors (out of memory)
        # are not the folder's fault
        if "mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
            raise
        raise UserError(f"{what}: cannot load it (its weights do not have the sizes "
                        "config.json gives: damaged, or config.json from another model)") from exc


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:200]


def _check_model_files(path: Path, what: str) -> None:
    """The files transformers reads without checking their shape. A config.json that is JSON but
    no object, a tokenizer.json the tokenizers library refuses, fail deep inside it as TypeError,
    AttributeError, KeyError or tokenizers' bare Exception (they would read as bugs); a folder
    with no tokenizer file loads an empty tokenizer that makes every keyword <unk>."""
    from ..errors import UserError

    if not (path / "config.json").is_file():
        raise UserError(f"{what}: cannot load it (no config.json: not a model folder)")
    for name in ("config.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                ok = isinstance(json.loads(f.read_text(encoding="utf-8")), dict)
            except (OSError, ValueError):
                ok = False
            if not ok:
                raise UserError(f"{what}: cannot load it ({name} is not a JSON object: damaged?)")
    tok = path / "tokenizer.json"
    if tok.is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(tok))
        except Exception as exc:     # tokenizers reports a file it cannot parse as plain Exception
            if type(exc) is not Exception and not isinstance(exc, OSError):
                raise
            raise UserError(f"{what}: cannot load it (tokenizer.json: {_first_line(exc)})") from exc
    elif not (path / "spiece.model").is_file():
        raise UserError(f"{what}: cannot load it (no tokenizer: tokenizer.json or spiece.model)")


@dataclass
class Captioner:
    """A loaded seq2seq captioner. ``generate`` takes many keyword sets, returns raw captions."""

    model: object
    tokenizer: object
    name: str
    fingerprint: str
    input_format: str
    params: GenerationParams = field(default_factory=GenerationParams)
    batch_size: int = 64
    capitalise_output: bool = False

    @classmethod
    def load(cls, model: str | os.PathLike, *, input_format: str | None = None,
             params: GenerationParams | None = None, device: str | None = None,
             batch_size: int = 64) -> "Captioner":
        """Load from a local folder (or a hub id when online). CUDA + bf16 when a GPU exists."""
        import torch
        path = Path(model)
        if not path.exists() and str(model).startswith(("/", "./", "../", "~")):
            raise FileNotFoundError(f"captioner model folder {model} does not exist")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()     # no "Loading weights" bar on stderr
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tok, net = load_t5(model, f"captioner {model}", dtype=dtype)
        net = net.to(device).eval()
        sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).exists() else {}
        if params is None and path.is_dir():
            from .gate import recommended_params

            params = recommended_params(path)     # the decoding its quality report passed with
        return cls(model=net, tokenizer=tok, name=str(model), fingerprint=model_fingerprint(model),
                   input_format=input_format or guess_input_format(model),
                   params=params or GenerationParams(), batch_size=batch_size,
                   capitalise_output=bool(sidecar.get("lowercase", False)))

    @property
    def identity(self) -> dict:
        """What makes two captioners produce the same text: weights, input format, parameters."""
        generation = asdict(self.params)
        for opt in ("constrained", "lm_fusion", "free_first"):
            if not generation[opt]:
                del generation[opt]            # keys of caches made before the option stay valid
        # a local folder by its name (the provenance ships in every shard; the weights hash
        # identifies it), a hub id as given
        name = self.name if self.fingerprint.startswith("hub:") else Path(self.name).name
        return {"model": name, "model_sha256": self.fingerprint,
                "input_format": self.input_format, "generation": generation}

    @property
    def cache_identity(self) -> dict:
        """``identity`` without the folder path: a moved or copied model keeps its cache."""
        ident = dict(self.identity)
        if not self.fingerprint.startswith("hub:"):
            ident.pop("model")
        return ident

    def generate(self, keyword_sets: Sequence[Sequence[str]], *, hf_generate: bool = False) -> list[str]:
        """Raw captions, one per keyword set, in input order (batched, length-sorted).

        Decoding uses :mod:`.beam` (HF's beam search results, faster); ``hf_generate=True``
        uses ``model.generate`` itself (the benchmark's reference)."""
        if self.params.free_first:
            return self._generate_free_first(keyword_sets, hf_generate)
        order = sorted(range(len(keyword_sets)), key=lambda i: len(" ".join(keyword_sets[i])))
        out: list[str] = [""] * len(keyword_sets)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self._generate_batch([keyword_sets[i] for i in idx], hf_generate=hf_generate)
            for i, text in zip(idx, batch):
                out[i] = text
        return out

    def _generate_free_first(self, keyword_sets, hf_generate: bool) -> list[str]:
        """``free_first``: the unconstrained caption where it names every keyword, invents
        nothing and puts no word where human captions never do (``grammar``), else the
        constrained one."""
        import dataclasses

        from .grammar import misplaced_words
        from .quality import invented_words, keyword_coverage

        caches = ("_fusion_lm", "_constraint_table", "_lemma_table")   # built once, shared

        def variant(**change):
            other = dataclasses.replace(self, params=dataclasses.replace(self.params, **change))
            for name in caches:
                setattr(other, name, getattr(self, name, None))
            return other

        free_cap = variant(constrained=False, lm_fusion=0.0, free_first=False)
        free = free_cap.generate(keyword_sets, hf_generate=hf_generate)
        redo = [i for i, (ks, c) in enumerate(zip(keyword_sets, free))
                if keyword_coverage(ks, c) < 1.0 or invented_words(ks, c) or misplaced_words(c)]
        held = variant(free_first=False)
        held._lemma_table = getattr(free_cap, "_lemma_table", None)
        redone = held.generate([keyword_sets[i] for i in redo], hf_generate=hf_generate) if redo else []
        for name in caches:
            setattr(self, name, getattr(held, name, None))
        out = list(free)
        for i, c in zip(redo, redone):
            out[i] = c
        return out

    def generate_one_per_call(self, keyword_sets: Sequence[Sequence[str]]) -> list[str]:
        """keytotext's way (one HF ``generate`` per set); kept as the benchmark baseline."""
        return [self._generate_batch([ks], hf_generate=True)[0] for ks in keyword_sets]

    def _generate_batch(self, keyword_sets: Sequence[Sequence[str]], hf_generate: bool = False) -> list[str]:
        import torch

        from . import beam

        texts = [format_keywords(ks, self.input_format) for ks in keyword_sets]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=128)
        enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        kwargs = self.params.generate_kwargs()
        processors = []
        if self.params.keyword_boost:
            processors.append(KeywordBoost(
                self._vocab_lemmas(), keyword_sets, self.params.num_beams,
                self.params.keyword_boost, self.tokenizer.eos_token_id, self.model.device))
        if self.params.constrained:
            from .constrain import LexicalConstraint

            processors.append(LexicalConstraint(self._token_table(), keyword_sets,
                                                self.params.num_beams, self.params.max_new_tokens,
                                                fusion=self._fusion()))
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if hf_generate:
            with torch.inference_mode():
                result = self.model.generate(**enc, **kwargs)
        else:
            result = beam.generate(self.model, **enc, **kwargs)
        decoded = [self._clean(t) for t in
                   self.tokenizer.batch_decode(result, skip_special_tokens=True)]
        n = kwargs["num_return_sequences"]
        if n == 1:
            return decoded
        from .quality import keyword_coverage

        best = []
        for j, ks in enumerate(keyword_sets):
            cands = decoded[j * n:(j + 1) * n]
            # max() keeps the first (highest-scoring beam) among equal coverage
            best.append(max(cands, key=lambda c: (keyword_coverage(ks, c), bool(c))))
        return best

    def _vocab_lemmas(self) -> list[str | None]:
        """Per token id: the lemma of the word a word-initial piece spells, else None."""
        if getattr(self, "_lemma_table", None) is None:
            from .keywords import lemma

            size = max(len(self.tokenizer), getattr(self.model.config, "vocab_size", 0) or 0)
            table: list[str | None] = [None] * size   # T5 pads its logits past the tokenizer
            for piece, tid in self.tokenizer.get_vocab().items():
                if piece[:1] in ("\u2581", "\u0120") and piece[1:].isalpha() and tid < len(table):
                    table[tid] = lemma(piece[1:])
            self._lemma_table = table
        return self._lemma_table

    def _token_table(self):
        """What each token spells, for :class:`.constrain.LexicalConstraint` (built once)."""
        if getattr(self, "_constraint_table", None) is None:
            from .constrain import TokenTable

            size = max(len(self.tokenizer), getattr(self.model.config, "vocab_size", 0) or 0)
            self._constraint_table = TokenTable(self.tokenizer, size)
        return self._constraint_table

    def _fusion(self):
        """The LM fused into constrained decoding (None without ``lm_fusion``; built once)."""
        if not self.params.lm_fusion:
            return None
        cached = getattr(self, "_fusion_lm", None)
        if cached is None or cached.weight != self.params.lm_fusion:
            from .constrain import GlueFusion, load_fusion_lm

            path = Path(self.name) / FUSION_LM
            if not path.is_file():
                raise FileNotFoundError(f"lm_fusion needs {FUSION_LM} in the model folder "
                                        f"{Path(self.name).name} (train-captioner --fusion-lm)")
            self._fusion_lm = GlueFusion(load_fusion_lm(path), self.params.lm_fusion)
        return self._fusion_lm

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        if self.capitalise_output and text:
            text = text[0].upper() + text[1:]
        return text


class KeywordBoost:
    """A logits processor that nudges beam search to use every keyword (a soft constraint).

    Each keyword's content words are units; a unit counts as used once the hypothesis holds a
    word-initial token with the same lemma. While unused, all such tokens gain ``boost`` and
    end-of-sentence loses ``boost`` per unused unit, so the model picks the inflection it finds
    most fluent ("bark" -> "barks") and is free to place it. Rows of the beam-search batch are
    grouped by example (``generate`` repeats each input ``num_beams`` times). After 4 + 3
    tokens per keyword the nudges stop, so an unplaceable keyword cannot cause run-on text."""

    def __init__(self, vocab_lemmas, keyword_sets, num_beams, boost, eos_id, device):
        import torch

        from .keywords import keyword_lemmas

        vocab = len(vocab_lemmas)
        by_lemma: dict[str, list[int]] = {}
        for tid, lem in enumerate(vocab_lemmas):
            if lem:
                by_lemma.setdefault(lem, []).append(tid)
        units = [[l for k in ks for l in dict.fromkeys(keyword_lemmas(k.split(",")[0]))]
                 for ks in keyword_sets]
        width = max([len(u) for u in units] + [1])
        mask = torch.zeros(len(keyword_sets), width, vocab, dtype=torch.bool)
        for i, us in enumerate(units):
            for j, lem in enumerate(us):
                mask[i, j, by_lemma.get(lem, [])] = True
        self.mask = mask.repeat_interleave(num_beams, dim=0).to(device)   # rows x units x vocab
        self.has_tokens = self.mask.any(-1)                                # units we can boost
        # give up after 4 + 3 tokens per keyword: a keyword the model cannot place must not
        # keep the caption running to max_new_tokens
        self.limit = torch.tensor([4 + 3 * len(u) for u in units], device=device
                                  ).repeat_interleave(num_beams)
        self.boost, self.eos_id, self.num_beams = boost, eos_id, num_beams

    def select(self, items):
        """The processor for a batch reduced to ``items`` (beam.py drops finished items)."""
        import copy

        import torch

        rows = (items[:, None] * self.num_beams
                + torch.arange(self.num_beams, device=items.device)).reshape(-1)
        kept = copy.copy(self)
        kept.mask, kept.has_tokens, kept.limit = self.mask[rows], self.has_tokens[rows], self.limit[rows]
        return kept

    def __call__(self, input_ids, scores):
        import torch

        rows, vocab = scores.shape[0], scores.shape[-1]
        mask = self.mask[:rows, :, :vocab]
        present = torch.zeros(rows, vocab, dtype=torch.bool, device=scores.device)
        present.scatter_(1, input_ids.clamp_max(vocab - 1), True)
        used = (mask & present[:, None, :]).any(-1)                        # rows x units
        unused = self.has_tokens[:rows] & ~used
        unused &= (input_ids.shape[1] - 1 < self.limit[:rows])[:, None]
        bonus = (mask & unused[:, :, None]).any(1)                         # rows x vocab
        scores = scores + self.boost * bonus.to(scores.dtype)
        if self.eos_id is not None:
            scores[:, self.eos_id] -= self.boost * unused.sum(-1).to(scores.dtype)
        return scores
