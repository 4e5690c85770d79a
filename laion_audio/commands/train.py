"""``laion-audio train``: contrastive CLAP training on LAION-layout shards (ours or LAION's).

Single process: ``laion-audio train --data-root shards/ ...``; several GPUs or nodes:
``torchrun --nproc_per_node 8 -m laion_audio train ...`` (DDP, NCCL; gloo on CPU).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError
from . import _checks


def register(subparsers) -> None:
    from laion_audio.clap.params import add_train_args

    p = subparsers.add_parser("train", help="train CLAP on WebDataset shards",
                              description=__doc__)
    add_train_args(p)
    p.set_defaults(func=run, interrupted="interrupted; the last step is checkpointed: add --resume latest "
                                         "(same --logs and --name) to continue")


def validate_train(args) -> None:
    """Model names, folders and files exist before any process group, run folder or loader
    starts; loader workers beyond the machine's CPUs get a warning."""
    validate_model_args(args)
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name
                                  or args.name in (".", "..")):
        raise UserError(f"--name {args.name!r} must be one folder name (no '/'), made under --logs")
    if args.data_root and "://" not in args.data_root:
        _checks.existing_folder(args.data_root, "--data-root")
    if args.class_label_path:
        class_index(args.class_label_path)
    _checks.writable_folder(args.logs, "--logs")
    if args.resume and args.resume != "latest":
        _checks.existing_file(args.resume, "--resume")
    cpus = os.cpu_count() or 1
    if args.workers >= cpus:
        print(f"laion-audio train: warning: --workers {args.workers} loader processes on {cpus} "
              f"CPUs compete with training for the cores; try --workers {max(0, cpus - 1)}",
              file=sys.stderr)


def class_index(path: str) -> dict[str, int]:
    """--class-label-path: JSON {label: index}, the indices 0..n-1 (a list or broken JSON was
    a traceback, or a run whose ``class_label`` stayed all zero)."""
    _checks.existing_file(path, "--class-label-path")
    data = _checks.json_file(path, "--class-label-path")
    what = f"--class-label-path {path}"
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected {{label: index}} with the indices 0..n-1, each once")
    _checks.labels_by_index(data, what)
    return data


def check_device(device: str) -> None:
    """--device names a device this machine has ('cuda' without one was a traceback from
    inside torch)."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device (try auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device on this machine; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: only cpu and cuda are supported")


def validate_model_args(args) -> None:
    """--amodel, --tokenizer, --text-model-path, --pretrained-audio, --device (shared with
    evaluate)."""
    check_device(getattr(args, "device", "auto") or "auto")
    from laion_audio.clap.factory import load_model_config

    if getattr(args, "amodel", None):
        try:
            load_model_config(args.amodel)
        except ValueError as exc:
            raise UserError(f"--amodel: {exc}")
    for opt in ("tokenizer", "text_model_path"):
        if getattr(args, opt, None):
            _checks.existing_folder(getattr(args, opt), "--" + opt.replace("_", "-"))
    text_model = getattr(args, "text_model_path", None)
    if text_model and not (Path(text_model) / "config.json").is_file():
        raise UserError(f"--text-model-path {text_model} is not a Hugging Face model folder "
                        "(no config.json)")
    tokenizer = getattr(args, "tokenizer", None) or text_model
    if tokenizer:
        from laion_audio.clap.factory import create_tokenizer

        try:
            create_tokenizer(tokenizer)
        except Exception as exc:  # transformers raises OSError, ValueError, its own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{'--tokenizer' if getattr(args, 'tokenizer', None) else '--text-model-path'} "
                            f"{tokenizer} holds no usable tokenizer ({first})") from None
    if getattr(args, "pretrained_audio", None):
        _checks.existing_file(args.pretrained_audio, "--pretrained-audio")


def run(args) -> int:
    from laion_audio.clap.train import train

    validate_train(args)
    return train(args)
