"""``laion-audio evaluate``: retrieval, zero-shot classification or linear probe of a CLAP
checkpoint (ours, or LAION's with --amodel/--tmodel/--tokenizer). Prints metrics as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import _checks


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a CLAP checkpoint", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint (ours or LAION's)")
    p.add_argument("--task", default="retrieval", choices=["retrieval", "zeroshot", "linear-probe"])
    p.add_argument("--amodel", default=None,
                   help="audio model config for a LAION checkpoint (default: the one saved in ours)")
    p.add_argument("--tmodel", default=None, choices=["roberta", "bert", "transformer"])
    p.add_argument("--enable-fusion", action="store_true", default=None)
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder")
    p.add_argument("--text-model-path", default=None,
                   help="local pretrained text model folder (a LAION checkpoint's text tower; ours "
                        "carry the tower's config and need none)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--data-root", default=None, help="LAION-layout shards")
    p.add_argument("--datasets", nargs="*", default=None)
    p.add_argument("--splits", nargs="*", default=["valid", "test", "eval"])
    p.add_argument("--train-splits", nargs="*", default=["train"], help="linear probe: training splits")
    p.add_argument("--class-folder", default=None, help="zero-shot over <dir>/<label>/<clip> folders")
    p.add_argument("--class-labels", default=None,
                   help="zero-shot/linear probe over shards: JSON list of labels or {label: index}")
    p.add_argument("--prompt", default="This is a sound of {label}.")
    p.add_argument("--five-caption", default="auto", choices=["auto", "always", "never"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None, help="also write the metrics JSON here")
    p.set_defaults(func=run)


def _labels(path: str) -> list[str]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return [k for k, _ in sorted(data.items(), key=lambda kv: kv[1])]
    return list(data)


def validate_evaluate(args) -> None:
    """Checkpoint, model names and data paths exist before torch loads anything."""
    from .train import validate_model_args

    _checks.existing_file(args.checkpoint, "--checkpoint")
    validate_model_args(args)
    if args.data_root and "://" not in args.data_root:
        _checks.existing_folder(args.data_root, "--data-root")
    if args.class_folder:
        _checks.existing_folder(args.class_folder, "--class-folder")
    if args.class_labels:
        _checks.existing_file(args.class_labels, "--class-labels")


def run(args) -> int:
    import torch

    validate_evaluate(args)
    from laion_audio.clap import evaluate as ev
    from laion_audio.clap.checkpoint import load_trained_model
    from laion_audio.clap.data import ClapShards, find_shards
    from laion_audio.clap.factory import load_model_config
    from laion_audio.clap.features import AudioConfig

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    from laion_audio.errors import UserError

    try:
        model, tokenizer, settings = load_trained_model(
            args.checkpoint, args.amodel, args.tmodel, args.enable_fusion, tokenizer_path=args.tokenizer,
            text_model_path=args.text_model_path, trust=args.trust_checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"--checkpoint: {exc}") from None
    model.to(device)
    audio_cfg = AudioConfig.from_dict(load_model_config(settings["amodel"])["audio_cfg"])
    args.data_truncating = "fusion" if settings["enable_fusion"] else "rand_trunc"
    args.data_filling = settings["data_filling"]
    args.enable_fusion = settings["enable_fusion"]
    with torch.no_grad():
        if args.task == "retrieval":
            if not args.data_root:
                print("--data-root is required for retrieval", file=sys.stderr)
                return 2
            sets = find_shards(args.data_root, args.datasets, args.splits)
            if not sets:
                print(f"no shards under {args.data_root} for splits {args.splits}", file=sys.stderr)
                return 2
            metrics = ev.evaluate_retrieval(model, sets, tokenizer, audio_cfg, args, device, args.five_caption)
        elif args.task == "zeroshot":
            if args.class_folder:
                labels, items = ev.folder_dataset(args.class_folder)
                emb, kept = ev.embed_files(model, [p for p, _ in items], audio_cfg, device,
                                           args.data_truncating, args.data_filling, args.batch_size,
                                           args.seed, fusion=args.enable_fusion)
                targets = [items[i][1] for i in kept]
                metrics = ev.zero_shot(model, tokenizer, emb, targets, labels, device, args.prompt)
                metrics["skipped"] = len(items) - len(kept)
            elif args.data_root and args.class_labels:
                sets = find_shards(args.data_root, args.datasets, args.splits)
                metrics = ev.zero_shot_shards(model, tokenizer, sets, audio_cfg, _labels(args.class_labels),
                                              args, device, args.prompt)
            else:
                print("zero-shot needs --class-folder, or --data-root with --class-labels", file=sys.stderr)
                return 2
        else:
            if not (args.data_root and args.class_labels):
                print("linear probe needs --data-root and --class-labels", file=sys.stderr)
                return 2
            labels = _labels(args.class_labels)
            index = {label: i for i, label in enumerate(labels)}
            parts = {}
            for name, splits in (("train", args.train_splits), ("test", args.splits)):
                sets = find_shards(args.data_root, args.datasets, splits)
                ds = ClapShards(sets, None, audio_cfg, args.batch_size, train=False,
                                truncating=args.data_truncating, filling=args.data_filling,
                                seed=args.seed, class_index=index, need_fusion=args.enable_fusion)
                parts[name] = ev.embed_shards(model, ds, device, projected=True)
            multilabel = bool((parts["train"]["class_label"].sum(1) > 1).any())
            with torch.enable_grad():
                metrics = ev.linear_probe(parts["train"]["audio"], parts["train"]["class_label"],
                                          parts["test"]["audio"], parts["test"]["class_label"], multilabel)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0
