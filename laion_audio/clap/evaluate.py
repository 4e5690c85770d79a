"""Evaluation: retrieval (both directions, LAION's generic and 5-caption protocols), zero-shot
classification with text prompts, and a linear probe on frozen audio embeddings
(reference/clap.md §4). The arithmetic lives in :mod:`metrics`; this module computes
embeddings from shards or class folders and hands them over.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import AUDIO_SUFFIXES, ClapShards, decode_audio, make_loader, sample_rng
from .features import AudioConfig, audio_features
from .metrics import five_caption_metrics, mean_average_precision, retrieval_metrics, zero_shot_metrics

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "This is a sound of {label}."


def _audio_input(batch: dict, device) -> dict:
    return {k: batch[k].to(device) for k in ("waveform", "longer", "mel_fusion") if k in batch}


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings (len(texts), 512)."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = {k: v.to(device) for k, v in tokenizer(texts[i:i + batch_size]).items()}
        out.append(model.get_text_embedding(tokens).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.joint_embed_shape)


@torch.no_grad()
def embed_shards(model, dataset: ClapShards, device, workers: int = 0, projected: bool = False) -> dict:
    """Audio embeddings (normalised, or raw ``audio_projection`` outputs with ``projected``)
    plus the metadata of every sample of ``dataset`` (an eval-mode ClapShards)."""
    model.eval()
    out = defaultdict(list)
    for batch in make_loader(dataset, workers):
        out["skipped"].append(batch["skipped"])
        if "waveform" not in batch:       # only the count of samples skipped at the end
            continue
        audio = _audio_input(batch, device)
        emb = model.encode_audio(audio) if projected else model.get_audio_embedding(audio)
        out["audio"].append(emb.float().cpu())
        for k in ("raw_text", "full_text", "__key__", "dataset", "tags"):
            out[k] += batch[k]
        if "class_label" in batch:
            out["class_label"].append(batch["class_label"])
    result = dict(out)
    result["audio"] = torch.cat(out["audio"]) if out["audio"] else torch.empty(0, model.joint_embed_shape)
    if out.get("class_label"):
        result["class_label"] = torch.cat(out["class_label"])
    result["skipped"] = sum(out["skipped"])
    return result


def retrieval_from_embeddings(model, tokenizer, audio: torch.Tensor, raw_text: list[str],
                              full_text: list[list[str]], device, five_caption: str = "auto",
                              a2t_map: str = "sorted") -> dict:
    """LAION's 5-caption protocol when every audio has exactly 5 captions (``five_caption``
    "auto"/"always"), otherwise one caption per audio (the sampled ``raw_text``)."""
    all_five = bool(full_text) and all(len(t) == 5 for t in full_text)
    if five_caption == "always" and not all_five:
        # captions are matched to audio by position (5 per audio): 4 + 6 would pair silently wrong
        odd = sum(len(t) != 5 for t in full_text)
        raise ValueError(f"--five-caption always: {odd} of {len(full_text)} samples do not have exactly "
                         "5 captions; use --five-caption auto")
    use_five = five_caption == "always" or (five_caption == "auto" and all_five)
    if use_five:
        texts = [c for caps in full_text for c in caps]
        text = embed_texts(model, tokenizer, texts, device)
        metrics = five_caption_metrics((audio @ text.T).numpy(), a2t_map=a2t_map)
        metrics["protocol"] = "5-caption"
    else:
        text = embed_texts(model, tokenizer, raw_text, device)
        metrics = retrieval_metrics((audio @ text.T).numpy())
        metrics["protocol"] = "1-caption"
    metrics["num_samples"] = len(raw_text)
    return metrics


def evaluate_retrieval(model, shard_sets, tokenizer, audio_cfg: AudioConfig, args, device,
                       five_caption: str = "auto") -> dict:
    """Per dataset (``<name>-<split>/metric``) and over everything (``all/metric``)."""
    dataset = ClapShards(shard_sets, tokenizer, audio_cfg, args.batch_size, train=False,
                         truncating=args.data_truncating, filling=args.data_filling,
                         text_augment_selection=getattr(args, "text_augment_selection", None),
                         seed=args.seed, need_fusion=getattr(args, "enable_fusion", False))
    emb = embed_shards(model, dataset, device, getattr(args, "eval_workers", 0))
    datasets = emb.get("dataset", [])          # none when no sample decoded
    metrics = {"num_samples": len(datasets)}
    names = sorted(set(datasets))
    groups = {name: [i for i, d in enumerate(datasets) if d == name] for name in names}
    if len(names) > 1:
        groups["all"] = list(range(len(datasets)))
    for name, idx in groups.items():
        m = retrieval_from_embeddings(model, tokenizer, emb["audio"][idx], [emb["raw_text"][i] for i in idx],
                                      [emb["full_text"][i] for i in idx], device, five_caption)
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
    metrics["skipped"] = emb["skipped"]
    return metrics


# -- zero-shot -------------------------------------------------------------------------------
def class_prompts(labels: list[str], template: str = DEFAULT_PROMPT) -> list[str]:
    return [template.format(label=label) for label in labels]


def folder_dataset(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """ESC-50/US8K-style class folders ``<root>/<label>/<clip>``: (labels, [(path, class)]).
    Underscores in folder names become spaces in labels (LAION's ESC-50 label cleaning)."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    labels = [p.name.replace("_", " ") for p in folders]
    items = [(f, i) for i, d in enumerate(folders) for f in sorted(d.iterdir())
             if f.suffix.lower() in AUDIO_SUFFIXES]
    return labels, items


@torch.no_grad()
def embed_files(model, paths: list[Path], audio_cfg: AudioConfig, device, truncating: str = "rand_trunc",
                filling: str = "repeatpad", batch_size: int = 32, seed: int = 0, fusion: bool = False):
    """Normalised audio embeddings of audio files; unreadable files are skipped and reported
    (returns embeddings and the indices that made it)."""
    model.eval()
    embs, kept, batch, batch_idx = [], [], [], []

    def flush():
        if batch:
            inputs = {k: torch.stack([b[k] for b in batch]).to(device) for k in batch[0]}
            embs.append(model.get_audio_embedding(inputs).float().cpu())
            kept.extend(batch_idx)
            batch.clear()
            batch_idx.clear()

    for i, path in enumerate(paths):
        try:
            wave, _ = decode_audio(Path(path).read_bytes(), audio_cfg.sample_rate)
        except Exception as exc:  # libsndfile/soxr errors
            log.warning("zero-shot: skipped unreadable %s (%s)", path, exc)
            continue
        feats = audio_features(wave, audio_cfg, truncating, filling, sample_rng(seed, 0, str(path)),
                               need_fusion=fusion)
        batch.append(feats)
        batch_idx.append(i)
        if len(batch) == batch_size:
            flush()
    flush()
    return (torch.cat(embs) if embs else torch.empty(0, model.joint_embed_shape)), kept


def zero_shot(model, tokenizer, audio_emb: torch.Tensor, targets: np.ndarray, labels: list[str],
              device, template: str = DEFAULT_PROMPT) -> dict:
    """Top-1 accuracy (= R@1), R@5/10, mAP@10 and ranks of the true class among the prompts."""
    text = embed_texts(model, tokenizer, class_prompts(labels, template), device)
    metrics = zero_shot_metrics((audio_emb @ text.T).numpy(), np.asarray(targets))
    metrics["num_samples"] = int(len(targets))
    metrics["num_classes"] = len(labels)
    return metrics


def zero_shot_shards(model, tokenizer, shard_sets, audio_cfg: AudioConfig, labels: list[str], args, device,
                     template: str = DEFAULT_PROMPT) -> dict:
    """Zero-shot over shards: the class is the (first) ``tag`` that is a label (LAION:
    argmax of the multi-hot); samples without a known tag are left out and counted."""
    class_index = {label: i for i, label in enumerate(labels)}
    dataset = ClapShards(shard_sets, None, audio_cfg, args.batch_size, train=False,
                         truncating=args.data_truncating, filling=args.data_filling, seed=args.seed,
                         class_index=class_index, need_fusion=getattr(args, "enable_fusion", False))
    emb = embed_shards(model, dataset, device)
    multi_hot = emb.get("class_label", torch.zeros(0, len(labels)))
    has = multi_hot.sum(1) > 0
    if bool(has.any()):
        metrics = zero_shot(model, tokenizer, emb["audio"][has], multi_hot[has].argmax(1).numpy(),
                            labels, device, template)
    else:                  # nothing to score: no NaN figures (the caller exits 1 on 0 samples)
        metrics = {"num_samples": 0}
    metrics["unlabelled"] = int((~has).sum())
    metrics["skipped"] = emb["skipped"]
    return metrics


# -- linear probe ----------------------------------------------------------------------------
def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 multilabel: bool, epochs: int = 100, lr: float = 1e-3, batch_size: int = 160,
                 hidden: int = 0, seed: int = 0) -> dict:
    """Train a linear (or 512-1024-C MLP with ``hidden``) head on frozen CLAP audio features.
    Multilabel: BCE and mAP (FSD50K); single label: CE and accuracy (ESC-50)."""
    g = torch.Generator().manual_seed(seed)
    dim, classes = train_x.shape[1], train_y.shape[1]
    torch.manual_seed(seed)
    head = (torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
            if hidden else torch.nn.Linear(dim, classes))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = head(train_x[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, train_y[idx].float())
            else:
                loss = F.cross_entropy(logits, train_y[idx].argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = head(test_x)
    if multilabel:
        return {"linear_probe_mAP": mean_average_precision(torch.sigmoid(scores).numpy(), test_y.numpy())}
    return {"linear_probe_accuracy": float((scores.argmax(1) == test_y.argmax(1)).float().mean())}
