"""``laion-audio train``: contrastive CLAP training on LAION-layout shards (ours or LAION's).

Single process: ``laion-audio train --data-root shards/ ...``; several GPUs or nodes:
``torchrun --nproc_per_node 8 -m laion_audio train ...`` (DDP, NCCL; gloo on CPU).
"""
from __future__ import annotations


def register(subparsers) -> None:
    from laion_audio.clap.params import add_train_args

    p = subparsers.add_parser("train", help="train CLAP on WebDataset shards",
                              description=__doc__)
    add_train_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from laion_audio.clap.train import train

    return train(args)
