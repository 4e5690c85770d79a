"""Train our own keyword-to-caption T5 offline (``laion-audio train-captioner``).

Pairs come from any human caption corpus: each caption's content words (base forms, in a
shuffled order half of the time) are the keywords, the caption is the target. The model is a
T5 seq2seq: fine-tuned from a local pretrained checkpoint when given, else a small config with a
Unigram tokenizer trained on the corpus itself (lower-cased, so "Dog" and "dog" share pieces and
the model can copy keywords token for token).

Recipe notes (a plain 6.5M-parameter run reached only 0.36 keyword coverage in 14 minutes):
the corpus tokenizer keeps most words as one piece, which makes copying easy; AdamW at a high
peak learning rate (2e-3) with linear warm-up and cosine decay over the *whole* budget (steps or
wall-clock) converges within minutes; keyword order is shuffled half the time so label sets in
any order work; decoding can keep the beam that covers most keywords (``rerank_by_coverage``).
With a ``LabelMapper`` (``label_map.py``) the keywords of a share of the pairs are AudioSet label
names instead ("Dog", "Bark"), shaped like what the caption stage feeds AudioSet clips.
The output folder loads with ``Captioner.load`` (``laion_audio_k2c.json`` names the format).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .k2c import SIDECAR, format_keywords
from .keywords import caption_keywords

if TYPE_CHECKING:
    from .label_map import LabelMapper

log = logging.getLogger(__name__)

CORPUS_KINDS = ("audiocaps", "bbc", "clotho", "soundbible", "ledger", "text")


def load_captions(kind: str, path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Human captions from a corpus file: AudioCaps csv (``caption``), BBC Sound Effects csv
    (``description``), Clotho csv (``caption_1`` .. ``caption_5``), WavCaps SoundBible json
    (``data[].caption``), a laion-audio ledger folder
    (``texts`` of records not captioned by a model or template), or a text file (one a line)."""
    from ..errors import UserError

    path = Path(path)
    if kind != "ledger" and path.is_dir():
        raise UserError(f"{kind} corpus {path} is a folder; give the {kind} file")
    try:
        out = _read_captions(kind, path)
    except UserError:
        raise
    except UnicodeDecodeError:
        raise UserError(f"{kind} corpus {path.name} is not UTF-8 text") from None
    except (ValueError, KeyError, TypeError, AttributeError, csv.Error) as exc:   # JSON of another shape
        raise UserError(f"{kind} corpus {path.name} cannot be read as {kind} "
                        f"({type(exc).__name__}: {exc})") from None
    out = [" ".join(c.split()) for c in out if c and c.strip()]
    return out[:limit] if limit else out


def _read_captions(kind: str, path: Path) -> list:
    from ..errors import UserError

    out: list = []
    if kind in ("audiocaps", "bbc"):
        column = "caption" if kind == "audiocaps" else "description"
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise UserError(f"{kind} corpus {path.name}: no {column!r} column (have "
                                f"{reader.fieldnames or 'no header: empty file'})")
            out = [row[column] for row in reader]
    elif kind == "clotho":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = [c for c in reader.fieldnames or [] if c.startswith("caption_")]
            if not cols:
                raise UserError(f"clotho corpus {path.name}: no caption_1..caption_5 columns (have "
                                f"{reader.fieldnames or 'no header: empty file'})")
            out = [row[c] for row in reader for c in cols]
    elif kind == "soundbible":
        out = [d.get("caption", "") for d in json.loads(path.read_text(encoding="utf-8"))["data"]]
    elif kind == "ledger":
        from ..ledger import Ledger

        with Ledger(path, lock=False) as ledger:
            for rec in ledger.records():
                if rec.caption_provenance.get("rule") in ("k2c", "template"):
                    continue
                out.extend(rec.texts)
    elif kind == "text":
        out = path.read_text(encoding="utf-8").splitlines()
    else:
        raise UserError(f"unknown corpus kind {kind!r}; one of {CORPUS_KINDS}")
    return [c if isinstance(c, str) else "" for c in out]


def build_pairs(captions: Iterable[str], max_keywords: int = 6, min_keywords: int = 1, *,
                label_mapper: "LabelMapper | None" = None, label_share: float = 1.0,
                seed: int = 0, complete_only: bool = False,
                rare_labels: int = 0, stats: dict | None = None) -> list[tuple[list[str], str]]:
    """(keywords, caption) pairs; captions with too few content words are dropped.

    ``complete_only`` also drops captions with content words their keywords do not hold (more
    than ``max_keywords`` of them): such targets teach the model to invent words (15% of
    AudioCaps train), and an invented word in an AudioSet caption is a wrong claim.

    With ``label_mapper``, a seeded ``label_share`` of the captions get keywords with AudioSet
    label names (``LabelMapper.map_caption``), the way the caption stage feeds AudioSet clips;
    the rest keep plain content words, as tag-only sources look. ``rare_labels`` > 0 adds the
    mapper's ``sibling_pairs``: class labels the captions name fewer times put in a sibling's
    place, up to that many pairs each (how many were kept goes to ``stats["sibling_pairs"]``)."""
    if not 0.0 <= label_share <= 1.0:
        raise ValueError(f"label_share must be within [0, 1], got {label_share}")
    rng = random.Random(seed)
    pairs = []
    captions = list(captions)
    extra: list = []
    if rare_labels > 0:
        if label_mapper is None:
            raise ValueError("rare_labels needs a label_mapper (AudioSet labels with ontology.json)")
        extra = label_mapper.sibling_pairs(captions, rare_labels, seed=seed, max_keywords=max_keywords)
    for cap in captions:
        if label_mapper is not None and (label_share >= 1.0 or rng.random() < label_share):
            kws = label_mapper.map_caption(cap, max_keywords)
        else:
            kws = caption_keywords(cap, max_keywords)
        if len(kws) < min_keywords:
            continue
        if complete_only and not _complete(kws, cap):
            continue
        pairs.append((kws, cap))
    n_plain = len(pairs)
    for kws, cap in extra:
        if len(kws) >= min_keywords and (not complete_only or _complete(kws, cap)):
            pairs.append((kws, cap))
    if stats is not None:
        stats["sibling_pairs"] = len(pairs) - n_plain
    return pairs


def _complete(keywords: Sequence[str], caption: str) -> bool:
    from .keywords import content_words, keyword_lemmas, lemma

    allowed = {l for k in keywords for alt in k.split(",") for l in keyword_lemmas(alt)}
    return all(lemma(w) in allowed for w in content_words(caption))


#: Model sizes ``auto_config`` picks from, smallest first: (d_model, layers, vocab, lr).
#: Measured here: at d_model 256 a 5-minute run on a shared 2-core machine made 150 steps and
#: wrote garbage; d_model 128 made ~1,000 steps in the same time.
SIZES = ((128, 2, 2000, 3e-3), (192, 3, 3000, 2e-3), (256, 3, 4000, 2e-3))


def free_cores() -> tuple[int, float]:
    """(cores this process may use, cores not busy with other work by the load average).

    The lowest of the 1-, 5- and 15-minute loads: a burst (a test run a minute ago, this
    process's own start-up) should not shrink a 30-minute model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = min(os.getloadavg())
    except OSError:
        load = 0.0
    return cores, max(0.25, min(float(cores), cores - load))


def auto_config(max_minutes: float | None, max_steps: int | None = None, *,
                cores: tuple[int, float] | None = None) -> tuple[dict, str]:
    """Model size, threads and schedule for a budget: ``(TrainConfig fields, why)``.

    The budget is in core-minutes actually free (wall minutes x cores not already loaded), so a
    5-minute run on a busy 2-core machine gets a model small enough to take ~1,000 steps.
    A step budget without minutes is taken as an idle machine's."""
    total, free = cores or free_cores()
    threads = 1 if free < 1.5 else min(int(free), 4)
    if max_minutes is None:
        core_minutes = (max_steps or 3000) / 100.0      # ~100 steps a core-minute at d_model 192
    else:
        core_minutes = max_minutes * free
    if core_minutes < 20:
        d_model, layers, vocab, lr = SIZES[0]
    elif core_minutes < 90:
        d_model, layers, vocab, lr = SIZES[1]
    else:
        d_model, layers, vocab, lr = SIZES[2]
    fields = {"d_model": d_model, "d_ff": 4 * d_model, "num_layers": layers,
              "num_decoder_layers": layers, "vocab_size": vocab, "lr": lr, "threads": threads}
    why = (f"{total} cores, {free:.2f} free by load average; budget "
           f"{'%.1f min' % max_minutes if max_minutes else '%s steps' % max_steps} = "
           f"{core_minutes:.1f} free core-minutes -> d_model {d_model}, {layers}+{layers} layers, "
           f"vocab {vocab}, {threads} thread(s)")
    return fields, why


@dataclass
class TrainConfig:
    vocab_size: int = 4000
    d_model: int = 256
    d_ff: int = 1024
    num_layers: int = 3
    num_decoder_layers: int = 3
    num_heads: int = 4
    dropout: float = 0.05
    batch_size: int = 64
    lr: float = 2e-3
    warmup: float = 0.04            # share of the budget
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    max_steps: int | None = 3000    # budget in steps ...
    max_minutes: float | None = None  # ... and/or wall-clock (schedule follows whichever ends first)
    shuffle_keywords: float = 0.5   # probability of shuffling a pair's keyword order
    max_keywords: int = 6
    max_target_tokens: int = 40
    threads: int = 2
    seed: int = 0
    pretrained: str | None = None   # local T5 checkpoint to fine-tune instead
    eval_every: int = 200           # steps between validation losses
    patience: int = 4               # stop after this many evaluations without a new best


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A lower-casing Unigram tokenizer (SentencePiece-style) trained on the corpus, wrapped as
    a transformers fast tokenizer with T5's special ids (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.75)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


#: Early stopping waits until the learning rate has decayed to this share of its peak, unless
#: the validation loss is clearly diverging (``DIVERGED`` x the best). At a high learning rate
#: the loss sits on a noise floor: a 30-minute run with label-mapped pairs (2026-12-02) held
#: 2.40-2.45 from step 1,600 at 83% of the peak rate and stopped after 9 of its 30 minutes,
#: before the decay that lowers it.
STOP_BELOW_LR = 0.5
DIVERGED = 1.1


def _should_stop(bad: int, patience: int, lr_share: float, loss: float, best: float) -> bool:
    """``patience`` evaluations without a new best, once the rate has decayed (or diverging)."""
    return bad >= patience and (lr_share <= STOP_BELOW_LR or loss > DIVERGED * best)


def _lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def train_captioner(pairs: Sequence[tuple[list[str], str]], out_dir: str | os.PathLike,
                    config: TrainConfig | None = None, *, val_pairs: Sequence = (),
                    log_every: int = 50, pairs_info: dict | None = None) -> dict:
    """Train and save a captioner to ``out_dir``; returns the training summary (also saved in
    the sidecar): steps, seconds, loss curve, validation loss before and after.
    ``pairs_info`` (how the pairs were made: corpora, label mapping) goes into the sidecar."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = config or TrainConfig()
    if not pairs:
        raise ValueError("no training pairs (is the corpus empty?)")
    if cfg.max_steps is None and cfg.max_minutes is None:
        raise ValueError("give max_steps and/or max_minutes")
    if (cfg.max_steps is not None and cfg.max_steps < 1) or (cfg.max_minutes is not None
                                                             and not cfg.max_minutes > 0):
        raise ValueError(f"max_steps {cfg.max_steps} / max_minutes {cfg.max_minutes}: a budget "
                         "must be above 0 (0 or less never ends)")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if cfg.pretrained:
        from .k2c import load_t5

        tokenizer, model = load_t5(cfg.pretrained, f"--pretrained {Path(cfg.pretrained).name}")
        lowercase = False
    else:
        corpus = [c for _, c in pairs] + [format_keywords(k, "laion-audio") for k, _ in pairs]
        tokenizer = train_tokenizer(corpus, cfg.vocab_size)
        t5 = T5Config(vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_model // cfg.num_heads,
                      d_ff=cfg.d_ff, num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers,
                      num_heads=cfg.num_heads, dropout_rate=cfg.dropout, feed_forward_proj="relu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      tie_word_embeddings=True)
        model = T5ForConditionalGeneration(t5)
        lowercase = True
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("captioner: %d pairs, %.2fM parameters", len(pairs), n_params / 1e6)

    targets = [tokenizer(c, truncation=True, max_length=cfg.max_target_tokens)["input_ids"]
               for _, c in pairs]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=cfg.label_smoothing)

    def batch_tensors(idx: Sequence[int], shuffle: bool):
        inputs = []
        for i in idx:
            kws = list(pairs[i][0])
            if shuffle and rng.random() < cfg.shuffle_keywords:
                rng.shuffle(kws)
            inputs.append(format_keywords(kws, "laion-audio"))
        enc = tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=64)
        width = max(len(targets[i]) for i in idx)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for row, i in enumerate(idx):
            labels[row, :len(targets[i])] = torch.tensor(targets[i])
        return enc["input_ids"], enc["attention_mask"], labels

    def step_loss(idx, shuffle=True):
        ids, mask, labels = batch_tensors(idx, shuffle)
        logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
        return loss_fn(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))

    def batches_for_epoch() -> list[list[int]]:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        chunk = cfg.batch_size * 50     # sort within chunks by length: less padding, still random
        batches = []
        for s in range(0, len(order), chunk):
            part = sorted(order[s:s + chunk], key=lambda i: len(targets[i]))
            batches += [part[j:j + cfg.batch_size] for j in range(0, len(part), cfg.batch_size)]
        rng.shuffle(batches)
        return batches

    def val_loss() -> float | None:
        if not val_pairs:
            return None
        model.eval()
        with torch.no_grad():
            ids_list = list(range(len(val_pairs)))
            tot, n = 0.0, 0
            for s in range(0, len(ids_list), 128):
                chunk = val_pairs[s:s + 128]
                enc = tokenizer([format_keywords(k, "laion-audio") for k, _ in chunk],
                                return_tensors="pt", padding=True)
                lab = tokenizer([c for _, c in chunk], return_tensors="pt", padding=True,
                                truncation=True, max_length=cfg.max_target_tokens)["input_ids"]
                lab[lab == tokenizer.pad_token_id] = -100
                out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=lab)
                tot += float(out.loss) * len(chunk)
                n += len(chunk)
        model.train()
        return tot / n

    val_before = val_loss()
    val_curve: list[tuple[int, float]] = []
    best: tuple = (float("inf"), 0, None)   # (validation loss, step, weights)
    bad, stopped = 0, "budget"
    curve: list[tuple[int, float]] = []
    start = time.monotonic()
    step, running, epoch = 0, [], 0
    done = False
    while not done:
        epoch += 1
        for idx in batches_for_epoch():
            elapsed = time.monotonic() - start
            progress = max(step / cfg.max_steps if cfg.max_steps else 0.0,
                           elapsed / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0)
            if progress >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(progress, cfg.warmup)
            loss = step_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            running.append(loss.item())
            if val_pairs and step % cfg.eval_every == 0:
                v = val_loss()
                val_curve.append((step, round(v, 4)))
                if v < best[0] - 1e-4:
                    best = (v, step, {k: t.detach().clone() for k, t in model.state_dict().items()})
                    bad = 0
                else:
                    bad += 1
                if _should_stop(bad, cfg.patience, _lr_factor(progress, cfg.warmup), v, best[0]):
                    log.info("step %d: validation loss %.3f, no better than %.3f (step %d) for "
                             "%d evaluations: stopping", step, v, best[0], best[1], bad)
                    stopped = f"validation loss did not improve for {bad} evaluations"
                    done = True
                    break
            if step % log_every == 0:
                curve.append((step, round(sum(running) / len(running), 4)))
                running = []
                log.info("step %d  loss %.3f  lr %.2e  %.0fs", step, curve[-1][1],
                         opt.param_groups[0]["lr"], time.monotonic() - start)
    if running:
        curve.append((step, round(sum(running) / len(running), 4)))
    seconds = time.monotonic() - start
    model.eval()
    final = val_loss()
    best_step = step
    if best[2] is not None and final is not None and best[0] < final:
        model.load_state_dict(best[2])     # keep the weights with the lowest validation loss
        final, best_step = best[0], best[1]
    summary = {"steps": step, "epochs": epoch, "seconds": round(seconds, 1), "pairs": len(pairs),
               "parameters": n_params, "loss_curve": curve, "val_loss_before": val_before,
               "val_loss_after": final, "val_curve": val_curve, "best_step": best_step,
               "stopped": stopped, "config": asdict(cfg)}
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    sidecar = {"input_format": "laion-audio", "lowercase": lowercase, "training": summary,
               "pairs": pairs_info or {}}
    (out_dir / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    return summary
