"""Batched beam search for T5 encoder-decoder models: HF ``generate``'s results, less waste.

HF's beam search (transformers 5.x ``GenerationMixin._beam_search``) decodes the whole batch
until its longest item ends, and every step reorders the whole cache, the cross-attention
keys/values included, although those never change between the beams of one item. Here:

* the encoder runs once per batch, its per-token work (projections, feed-forward, norms) on
  real tokens only (attention keeps HF's padded layout and mask, so values stay HF's);
* each decoder layer's cross-attention keys/values are computed once per *item* (not per
  beam) and never reordered: the ``num_beams`` queries of an item attend to them together;
* the first step decodes one row per item (all beams hold the same prompt; HF decodes
  ``num_beams`` identical rows);
* only the self-attention cache is reordered by beam index (that is inherent to beam search);
* an item leaves the batch as soon as HF would freeze it (with ``early_stopping=True``: once it
  holds ``num_beams`` finished hypotheses), so compute follows the live rows.

The scoring is HF's, step for step: log-softmax, the logits processors (HF's own
``NoRepeatNGramLogitsProcessor`` plus the caller's), top ``2 * num_beams`` continuations per
item, only EOS among the top ``num_beams`` enters the finished list, finished score =
sum of log-probs / (generated tokens incl. EOS) ** length_penalty, HF's early-stop heuristic,
and the same output layout (``num_return_sequences`` rows per input, best first, right-filled
like HF). Per-row arithmetic is HF's (same modules, same SDPA call, same fp32 scoring), so
token ids equal ``model.generate``'s exactly in every check so far (tests/captions/test_beam.py;
64 benchmark sets on the 3.7M evaluation model); a different BLAS could in principle round a
row differently when the batch shrinks and flip a near-tie.

Supported: ``T5ForConditionalGeneration`` (our ``train-captioner`` folders and the
keytotext-era t5-base/t5-small fine-tunes) in eval mode with SDPA attention, beam search
without sampling, ``max_new_tokens`` set, and a generation config whose only built-in logits
processor is no-repeat-ngram. Anything else (other model types, eager/flash attention,
sampling, repetition penalty, min length, forced tokens, bad words, ``return_dict_in_generate``
...) falls back to ``model.generate`` (``why_unsupported`` says why). Device- and
dtype-agnostic: CUDA/bf16 take the same code (bf16 equals HF on CPU; CUDA untested, no GPU).

A caller's logits processor is called as HF calls it, ``processor(input_ids, scores)`` with
rows grouped by item (``num_beams`` rows each, items in input order). Because finished items
leave the batch, a processor whose output depends on the row position must provide
``select(item_index)`` returning the processor for the surviving items (see ``KeywordBoost``);
a processor without it is assumed to treat rows independently.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
_reported: set[str] = set()

#: generate() keyword arguments this module understands; any other one means "use HF".
_OUR_KWARGS = {"num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens",
               "early_stopping", "do_sample", "num_return_sequences"}


def _generation_config(model, kwargs: dict):
    """The generation config HF would use (model's defaults updated by the call's kwargs)."""
    cfg = copy.deepcopy(model.generation_config)
    unused = cfg.update(**kwargs)
    return cfg, unused


def why_unsupported(model, generate_kwargs: dict) -> str | None:
    """None when :func:`generate` can run these arguments itself, else the reason it falls back."""
    from transformers import T5ForConditionalGeneration
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    if not isinstance(model, T5ForConditionalGeneration):
        return f"model type {type(model).__name__} (only T5ForConditionalGeneration)"
    if model.training:
        return "model in training mode (dropout)"
    if model.config._attn_implementation != "sdpa":
        return f"attention implementation {model.config._attn_implementation!r} (only sdpa)"
    extra = set(generate_kwargs) - _OUR_KWARGS - {"logits_processor"}
    if extra:
        return f"generate arguments {sorted(extra)}"
    cfg, unused = _generation_config(model, {k: v for k, v in generate_kwargs.items()
                                             if k != "logits_processor"})
    if unused:
        return f"unknown generation arguments {sorted(unused)}"
    if cfg.do_sample or cfg.num_beams < 2:
        return "not beam search (sampling or num_beams < 2)"
    if cfg.max_new_tokens is None:
        return "max_new_tokens unset"
    if cfg.num_return_sequences > cfg.num_beams:
        return "num_return_sequences > num_beams"
    if cfg.early_stopping not in (True, False, "never"):
        return f"early_stopping={cfg.early_stopping!r}"
    if cfg.eos_token_id is None or isinstance(cfg.eos_token_id, (list, tuple)) and len(cfg.eos_token_id) != 1:
        return "needs exactly one eos token"
    if cfg.return_dict_in_generate or cfg.max_time is not None or cfg.stop_strings is not None:
        return "return_dict_in_generate / max_time / stop_strings"
    if getattr(cfg, "num_beam_groups", 1) not in (None, 1) or getattr(cfg, "constraints", None):
        return "group or constrained beam search"
    if cfg.min_length or cfg.min_new_tokens:
        return "min_length / min_new_tokens"
    try:   # HF's own list of built-in processors for this config (private API: fall back if it moves)
        model._prepare_special_tokens(cfg, True, device=model.device)
        from transformers import LogitsProcessorList

        builtin = model._get_logits_processor(
            generation_config=cfg, input_ids_seq_length=1, encoder_input_ids=None,
            prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(),
            device=model.device, model_kwargs={})
    except Exception as exc:  # noqa: BLE001 - any API drift means "let HF do it"
        return f"cannot inspect HF's logits processors ({type(exc).__name__}: {exc})"
    other = [type(p).__name__ for p in builtin if not isinstance(p, NoRepeatNGramLogitsProcessor)]
    if other:
        return f"built-in logits processors {other}"
    return None


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             logits_processor=None, **generate_kwargs) -> torch.LongTensor:
    """Drop-in for ``model.generate(input_ids=..., attention_mask=..., **kwargs)`` (beam search).

    Returns what HF returns: ``(batch * num_return_sequences, 1 + longest)`` token ids starting
    with the decoder start token. Falls back to ``model.generate`` when unsupported."""
    reason = why_unsupported(model, generate_kwargs)
    if reason is not None:
        if reason not in _reported:          # say once per reason: the fallback is the slow path
            _reported.add(reason)
            log.info("beam search: using HF generate (%s)", reason)
        kwargs = dict(generate_kwargs)
        if logits_processor is not None:
            kwargs["logits_processor"] = logits_processor
        with torch.inference_mode():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    cfg, _ = _generation_config(model, generate_kwargs)
    model._prepare_special_tokens(cfg, attention_mask is not None, device=input_ids.device)
    from transformers import LogitsProcessorList

    processors = list(model._get_logits_processor(
        generation_config=cfg, input_ids_seq_length=1, encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(),
        device=input_ids.device, model_kwargs={}))
    processors += list(logits_processor or [])
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        return _beam_search(model, input_ids, attention_mask, cfg, processors)


def _encode_packed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The T5 encoder with its per-token work (projections, feed-forward, norms) on real tokens
    only; attention runs on the padded layout with HF's mask, so real tokens get HF's values.

    Returns (hidden states of the real tokens, (n, d_model); their flat positions in the
    padded ``(batch * src_len)`` layout)."""
    enc = model.get_encoder()
    blocks = list(enc.block)
    batch, length = input_ids.shape
    real = attention_mask.reshape(-1).nonzero()[:, 0]
    hidden = enc.dropout(enc.embed_tokens(input_ids.reshape(-1).index_select(0, real)))
    first = blocks[0].layer[0].SelfAttention
    d_kv = first.key_value_proj_dim
    bias = first.compute_bias(length, length, device=input_ids.device)          # (1, H, L, L)
    mask = torch.where(attention_mask[:, None, None, :].bool(), bias,
                       torch.finfo(hidden.dtype).min).contiguous()

    def padded(x):       # (n, inner) real rows -> (batch, heads, length, d_kv), zeros for padding
        out = x.new_zeros((batch * length, x.shape[-1]))
        out.index_copy_(0, real, x)
        return out.view(batch, length, -1, d_kv).transpose(1, 2)

    for block in blocks:
        sa = block.layer[0]
        att = sa.SelfAttention
        normed = sa.layer_norm(hidden)
        out = F.scaled_dot_product_attention(padded(att.q(normed)), padded(att.k(normed)),
                                             padded(att.v(normed)), attn_mask=mask, scale=att.scaling)
        out = out.transpose(1, 2).reshape(batch * length, -1).index_select(0, real)
        hidden = _clamp_fp16(hidden + sa.dropout(att.o(out)))
        hidden = _clamp_fp16(block.layer[-1](hidden))
    return enc.dropout(enc.final_layer_norm(hidden)), real


class _T5Decoder:
    """One-token decoder steps of a T5ForConditionalGeneration with our cache layout.

    Layer norms and feed-forward blocks are the model's own modules; attention is done here
    with the same SDPA call HF makes, except that cross-attention takes an item's ``num_beams``
    queries at once against that item's keys/values (computed once, never reordered)."""

    def __init__(self, model, encoder_hidden: torch.Tensor, real: torch.Tensor,
                 encoder_mask: torch.Tensor, num_beams: int):
        self.model, self.num_beams = model, num_beams
        dec = model.get_decoder()
        self.blocks = list(dec.block)
        self.embed, self.final_norm = dec.embed_tokens, dec.final_layer_norm
        self.bias_attention = self.blocks[0].layer[0].SelfAttention
        self.heads = self.bias_attention.n_heads
        self.d_kv = self.bias_attention.key_value_proj_dim
        self.scale_out = (model.model_dim ** -0.5) if getattr(
            model.config, "scale_decoder_outputs", model.config.tie_word_embeddings) else None
        items, src = encoder_mask.shape

        def padded(x):   # real tokens -> (items, heads, src_len, d_kv); padding is masked out
            out = x.new_zeros((items * src, x.shape[-1]))
            out.index_copy_(0, real, x)
            return out.view(items, src, -1, self.d_kv).transpose(1, 2)

        # cross-attention keys/values: (items, heads, src_len, d_kv) per layer, once per item
        self.cross = []
        for block in self.blocks:
            att = block.layer[1].EncDecAttention
            self.cross.append((padded(att.k(encoder_hidden)), padded(att.v(encoder_hidden))))
        # HF's mask: position bias (zeros for cross-attention) where attended, dtype min elsewhere
        zero = torch.zeros((), dtype=encoder_hidden.dtype, device=encoder_hidden.device)
        self.cross_mask = torch.where(encoder_mask[:, None, None, :].bool(), zero,
                                      torch.finfo(encoder_hidden.dtype).min)
        self.self_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.blocks)

    def select(self, items: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep ``items`` (cross-attention) and reorder/compact the self-attention cache to ``rows``."""
        if items is not None:
            self.cross = [(k.index_select(0, items), v.index_select(0, items)) for k, v in self.cross]
            self.cross_mask = self.cross_mask.index_select(0, items)
        self.self_kv = [None if kv is None else (kv[0].index_select(0, rows), kv[1].index_select(0, rows))
                        for kv in self.self_kv]

    def step(self, tokens: torch.Tensor, past: int, beams: int) -> torch.Tensor:
        """Logits (rows, vocab) in float32 for one new token per row at position ``past``;
        rows are grouped by item, ``beams`` rows per item."""
        rows = tokens.shape[0]
        items = rows // beams
        hidden = self.embed(tokens[:, None])                                   # (rows, 1, d)
        bias = self.bias_attention.compute_bias(1, past + 1, device=hidden.device,
                                                past_seen_tokens=past).contiguous()
        for i, block in enumerate(self.blocks):
            sa = block.layer[0]
            att = sa.SelfAttention
            normed = sa.layer_norm(hidden)
            q = att.q(normed).view(rows, 1, -1, self.d_kv).transpose(1, 2)
            k = att.k(normed).view(rows, 1, -1, self.d_kv).transpose(1, 2)
            v = att.v(normed).view(rows, 1, -1, self.d_kv).transpose(1, 2)
            if self.self_kv[i] is not None:
                k = torch.cat((self.self_kv[i][0], k), dim=2)
                v = torch.cat((self.self_kv[i][1], v), dim=2)
            self.self_kv[i] = (k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=att.scaling)
            out = out.transpose(1, 2).contiguous().reshape(rows, 1, -1)
            hidden = hidden + sa.dropout(att.o(out))
            hidden = _clamp_fp16(hidden)

            ca = block.layer[1]
            att = ca.EncDecAttention
            normed = ca.layer_norm(hidden)
            q = att.q(normed).view(items, beams, -1, self.d_kv).transpose(1, 2)
            ck, cv = self.cross[i]
            out = F.scaled_dot_product_attention(q, ck, cv, attn_mask=self.cross_mask, scale=att.scaling)
            out = out.transpose(1, 2).contiguous().reshape(rows, 1, -1)
            hidden = hidden + ca.dropout(att.o(out))
            hidden = _clamp_fp16(hidden)

            hidden = _clamp_fp16(block.layer[-1](hidden))
        hidden = self.final_norm(hidden)
        if self.scale_out is not None:
            hidden = hidden * self.scale_out
        logits = self.model.lm_head(hidden)
        return logits[:, -1, :].float()     # HF copies here; same values, one 3 MB copy less


def _clamp_fp16(hidden: torch.Tensor) -> torch.Tensor:
    """T5Block's fp16 overflow guard, so fp16 models decode as in HF."""
    if hidden.dtype != torch.float16:
        return hidden
    clamp = torch.where(torch.isinf(hidden).any(), torch.finfo(hidden.dtype).max - 1000,
                        torch.finfo(hidden.dtype).max)
    return torch.clamp(hidden, min=-clamp, max=clamp)


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """HF's ``_gather_beams``: pick along dim 1 (the beam dimension)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _beam_search(model, input_ids, attention_mask, cfg, processors) -> torch.LongTensor:
    device = input_ids.device
    nb, lp, es = cfg.num_beams, cfg.length_penalty, cfg.early_stopping
    n_return = cfg.num_return_sequences
    eos = cfg._eos_token_tensor
    pad = cfg._pad_token_tensor
    fill = pad or eos[0] if eos is not None else -1          # HF's expression, kept as is
    fill = int(fill)
    prompt_len = 1
    max_length = cfg.max_new_tokens + prompt_len
    batch = input_ids.shape[0]
    keep_k = max(2, 1 + eos.shape[0]) * nb
    top_nb_mask = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(keep_k - nb, dtype=torch.bool))).to(device)

    encoder_hidden, real = _encode_packed(model, input_ids, attention_mask)
    decoder = _T5Decoder(model, encoder_hidden, real, attention_mask, nb)

    # per active item state; `alive` maps active position -> input index
    alive = torch.arange(batch, device=device)
    running = torch.full((batch, nb, max_length), fill, dtype=torch.long, device=device)
    running[:, :, 0] = cfg._decoder_start_token_tensor
    running_scores = torch.zeros((batch, nb), dtype=torch.float, device=device)
    running_scores[:, 1:] = -1e9
    done_seqs = running.clone()
    done_scores = torch.full((batch, nb), -1e9, dtype=torch.float, device=device)
    done_lens = torch.zeros((batch, nb), dtype=torch.long, device=device)
    is_finished = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    # results per input index, filled as items freeze
    out_seqs = torch.full((batch, nb, max_length), fill, dtype=torch.long, device=device)
    out_lens = torch.zeros((batch, nb), dtype=torch.long, device=device)

    cur_len = prompt_len
    while True:
        items = alive.shape[0]
        rows = items * nb
        first = cur_len == prompt_len
        if first:   # all beams of an item hold the same prompt: decode one row, copy its scores
            logits = decoder.step(running[:, 0, 0], 0, beams=1)
            log_probs = F.log_softmax(logits, dim=-1).repeat_interleave(nb, dim=0)
        else:
            logits = decoder.step(running[:, :, cur_len - 1].reshape(rows), cur_len - 1, beams=nb)
            log_probs = F.log_softmax(logits, dim=-1)
        flat = running[:, :, :cur_len].reshape(rows, cur_len)
        for proc in processors:
            log_probs = proc(flat, log_probs)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(items, nb, vocab) + running_scores[:, :, None]
        log_probs = log_probs.reshape(items, nb * vocab)

        # top-k continuations (HF's _get_top_k_continuations)
        topk_scores, topk_index = torch.topk(log_probs, k=keep_k)
        topk_beam = topk_index // vocab
        topk_ids = topk_index % vocab
        topk_seqs = _take(running, topk_beam)
        topk_seqs[:, :, cur_len] = topk_ids
        hits = torch.isin(topk_ids, eos) | (cur_len + 1 >= max_length)

        # running beams for the next step (HF's _get_running_beams_for_next_iteration)
        topk_running = topk_scores + hits.to(torch.float32) * -1.0e9
        next_index = torch.topk(topk_running, k=nb)[1]
        running = _take(topk_seqs, next_index)
        running_scores = _take(topk_running, next_index)
        source_beam = _take(topk_beam, next_index)

        # finished hypotheses (HF's _update_finished_beams)
        just_finished = hits & top_nb_mask[None, :]
        finished_scores = topk_scores / ((cur_len + 1 - prompt_len) ** lp)
        full = torch.all(is_finished, axis=-1, keepdims=True) & (es is True)
        finished_scores += full.to(torch.float32) * -1.0e9
        finished_scores += (~improvable).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((done_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        done_seqs = _take(torch.cat((done_seqs, topk_seqs), dim=1), best)
        done_scores = _take(merged_scores, best)
        new_lens = torch.full_like(topk_beam, cur_len + 1 - prompt_len)
        done_lens = _take(torch.cat((done_lens, new_lens), dim=1), best)
        is_finished = _take(torch.cat((is_finished, just_finished), dim=1), best)

        cur_len += 1
        # HF's _check_early_stop_heuristic
        if es == "never" and lp > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_scores[:, :1] / (best_length ** lp)
        worst_done = torch.where(is_finished, torch.min(done_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_done, dim=-1, keepdim=True)

        # an item HF would no longer change leaves the batch
        frozen = ~improvable[:, 0]
        if es is True:
            frozen |= is_finished.all(-1)
        if cur_len >= max_length:
            frozen[:] = True
        if bool(frozen.any()):
            out_seqs[alive[frozen]] = done_seqs[frozen]
            out_lens[alive[frozen]] = done_lens[frozen]
            if bool(frozen.all()):
                break
            keep = (~frozen).nonzero()[:, 0]
            alive = alive[keep]
            running, running_scores = running[keep], running_scores[keep]
            done_seqs, done_scores, done_lens = done_seqs[keep], done_scores[keep], done_lens[keep]
            is_finished, improvable, source_beam = is_finished[keep], improvable[keep], source_beam[keep]
            processors = [p.select(keep) if hasattr(p, "select") else p for p in processors]
        else:
            keep = None
        base = torch.arange(alive.shape[0], device=device) if keep is None else keep
        # the cache holds one row per item after the first step, num_beams rows after later ones
        source_rows = base[:, None].expand(-1, nb) if first else base[:, None] * nb + source_beam
        decoder.select(keep, source_rows.reshape(-1))

    seqs = out_seqs[:, :n_return].reshape(batch * n_return, max_length)
    length = prompt_len + int(out_lens[:, :n_return].max())
    return seqs[:, :length]
