"""Command-line options of ``laion-audio train`` / ``evaluate`` (LAION's names where they
exist: --amodel, --tmodel, --enable-fusion, --fusion-type, --data-truncating,
--data-filling, --text-augment-selection, --warmup, --lr, --beta1, --beta2, ...)."""
from __future__ import annotations

import argparse
import os

from ..commands._checks import (fraction, non_negative_float, non_negative_int, positive_float,
                                positive_int)


def dataset_weight(text: str) -> tuple[str, float]:
    """``NAME=W`` with W a finite number above 0 (a typo was a ValueError traceback)."""
    name, sep, weight = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {text!r}")
    return name, positive_float(weight)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--amodel", default="HTSAT-tiny",
                   help="audio model config: HTSAT-tiny, HTSAT-base, PANN-14, PANN-10, PANN-6 "
                        "(*-test: tiny widths for CPU tests) or a JSON path")
    g.add_argument("--tmodel", default="roberta", choices=["roberta", "bert", "transformer"])
    g.add_argument("--text-model-path", default=None,
                   help="local folder of a pretrained Hugging Face text model (e.g. roberta-base); "
                        "omitted: the text tower is trained from scratch")
    g.add_argument("--tokenizer", default=None,
                   help="local tokenizer folder (default: --text-model-path); with neither, one is "
                        "trained on the training captions and saved in the run folder")
    g.add_argument("--tokenizer-vocab-size", type=positive_int, default=8000)
    g.add_argument("--enable-fusion", action="store_true", help="feature fusion for long clips")
    g.add_argument("--fusion-type", default="aff_2d", choices=["aff_2d", "iaff_2d", "daf_2d"])
    g.add_argument("--pretrained-audio", default=None, help="AudioSet-pretrained HTS-AT/PANN checkpoint")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of checkpoints (only for files you trust)")


def add_data_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", required=train, help="folder (or fsspec URL) with <dataset>/<split>/N.tar")
    g.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all)")
    g.add_argument("--dataset-weights", nargs="*", default=None, metavar="NAME=W", type=dataset_weight,
                   help="sample datasets with these relative weights instead of concatenating shards")
    g.add_argument("--train-splits", nargs="*", default=["train", "unbalanced_train", "balanced_train"])
    g.add_argument("--val-splits", nargs="*", default=["valid", "test", "eval"])
    g.add_argument("--data-truncating", default="rand_trunc", choices=["rand_trunc", "fusion"])
    g.add_argument("--data-filling", default="repeatpad", choices=["repeatpad", "pad", "repeat"])
    g.add_argument("--text-augment-selection", default="none", choices=["none", "all", "augment_only"])
    g.add_argument("--batch-size", type=positive_int, default=96, help="per process")
    g.add_argument("--workers", type=non_negative_int, default=min(6, max(0, (os.cpu_count() or 1) - 1)),
                   help="data loader processes (default: 6, or one fewer than the CPUs when "
                        "that is less)")
    g.add_argument("--shuffle-buffer", type=positive_int, default=5000)
    g.add_argument("--shuffle-initial", type=non_negative_int, default=1000)
    g.add_argument("--class-label-path", default=None, help="JSON {label: index} for `tag` multi-hot")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p, train=True)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=45)
    g.add_argument("--max-steps", type=positive_int, default=None, help="stop (with a checkpoint) after this many steps")
    g.add_argument("--lr", type=positive_float, default=1e-4)
    g.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
    g.add_argument("--beta1", type=fraction, default=0.9, help="0.9 (code default); the paper says 0.99")
    g.add_argument("--beta2", type=fraction, default=0.999, help="0.999 (code default); the paper says 0.9")
    g.add_argument("--eps", type=positive_float, default=1e-8)
    g.add_argument("--wd", type=non_negative_float, default=0.2, help="AdamW only (Adam uses 0, as LAION)")
    g.add_argument("--warmup", type=non_negative_int, default=None,
                   help="warmup steps (default: LAION's 3200, or a tenth of the run's steps when "
                        "that is less; LAION used 3200 for HTS-AT, 500 for PANN)")
    g.add_argument("--accum-freq", type=positive_int, default=1,
                   help="gradient accumulation: loss over accum-freq batches with cached features")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    g.add_argument("--grad-clip", type=positive_float, default=None)
    g.add_argument("--seed", type=int, default=3407)
    g.add_argument("--device", default="auto")
    g.add_argument("--use-bn-sync", action="store_true", help="SyncBatchNorm under DDP (GPU)")
    g.add_argument("--no-spec-augment", action="store_true")
    g.add_argument("--freeze-text", action="store_true")
    g = p.add_argument_group("run")
    g.add_argument("--logs", default="./logs", help="run folders go here")
    g.add_argument("--name", default=None, help="run name (default: date + model + lr + batch)")
    g.add_argument("--resume", default=None, help="checkpoint to resume from ('latest' = this run's)")
    g.add_argument("--save-every-steps", type=non_negative_int, default=0, help="also checkpoint every N steps")
    g.add_argument("--log-every-steps", type=positive_int, default=10)
    g.add_argument("--val-frequency", type=non_negative_int, default=1, help="evaluate every N epochs (0: never)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
