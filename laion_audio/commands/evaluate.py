"""``laion-audio evaluate``: retrieval, zero-shot classification or linear probe of a CLAP
checkpoint (ours, or LAION's with --amodel/--tmodel/--tokenizer). Prints metrics as JSON."""
from __future__ import annotations

import json

from ..errors import IncompleteError, UserError
from . import _checks
from ._checks import positive_int


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
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None, help="also write the metrics JSON here")
    p.set_defaults(func=run)


def _labels(path: str) -> list[str]:
    """--class-labels: a JSON list of distinct, non-blank strings, or {label: index} with the
    indices 0..n-1 once each. Anything else (a bare string read letter by letter, duplicates
    that split one class's score, bad UTF-8) is the user's to fix."""
    what = f"--class-labels {path}"
    data = _checks.json_file(path, "--class-labels")
    if isinstance(data, dict) and data:
        data = _checks.labels_by_index(data, what)
    if not isinstance(data, list) or not data:
        raise UserError(f"{what}: expected a non-empty JSON list of labels or {{label: index}}")
    if not all(isinstance(x, str) and x.strip() for x in data):
        raise UserError(f"{what}: every label must be a non-blank string")
    return _distinct_classes(data, what)


def _distinct_classes(labels: list[str], what: str) -> list[str]:
    """At least two classes, each once: with one class every answer is right, and a label
    twice splits its score between two prompts."""
    dups = sorted({x for x in labels if labels.count(x) > 1})
    if dups:
        raise UserError(f"{what}: labels occur twice ({', '.join(dups[:3])}); each class once")
    if len(labels) < 2:
        raise UserError(f"{what}: {len(labels)} class; classification needs at least 2")
    return labels


def _check_prompt(prompt: str) -> None:
    try:
        a, b = prompt.format(label="a"), prompt.format(label="b")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--prompt {prompt!r}: only {{label}} may be filled in ({exc!r})") from None
    if a == b:
        raise UserError(f"--prompt {prompt!r} has no {{label}}: every class would get the same text")


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
        args.labels = _labels(args.class_labels)
    if args.task == "zeroshot":
        _check_prompt(args.prompt)
    _checks.writable_file(args.output, "--output")


def _shards(args, splits):
    from laion_audio.clap.data import require_shards

    return require_shards(args.data_root, args.datasets, splits)


def _evaluated(n: int, skipped: int, what: str, unlabelled: int = 0) -> None:
    """Metrics over no sample are NaN, not a result: exit 1."""
    if n == 0:
        raise IncompleteError(f"nothing to evaluate: no sample {what} ({skipped} undecodable, "
                              f"{unlabelled} without a label)")


def run(args) -> int:
    import torch

    validate_evaluate(args)
    from laion_audio.clap import evaluate as ev
    from laion_audio.clap.checkpoint import load_trained_model
    from laion_audio.clap.data import ClapShards
    from laion_audio.clap.factory import load_model_config
    from laion_audio.clap.features import AudioConfig

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
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
                raise UserError("--data-root is required for retrieval")
            try:
                metrics = ev.evaluate_retrieval(model, _shards(args, args.splits), tokenizer, audio_cfg,
                                                args, device, args.five_caption)
            except ValueError as exc:
                if "--five-caption" not in str(exc):
                    raise
                raise UserError(str(exc)) from None
            _evaluated(metrics.get("num_samples", 0), metrics["skipped"], "decoded")
        elif args.task == "zeroshot":
            if args.class_folder:
                labels, items = ev.folder_dataset(args.class_folder)
                _distinct_classes(labels, f"--class-folder {args.class_folder} (subfolder names, "
                                          "underscores as spaces)")
                if not items:
                    raise UserError(f"--class-folder {args.class_folder}: no audio files in "
                                    "<folder>/<label>/ subfolders")
                emb, kept = ev.embed_files(model, [p for p, _ in items], audio_cfg, device,
                                           args.data_truncating, args.data_filling, args.batch_size,
                                           args.seed, fusion=args.enable_fusion)
                targets = [items[i][1] for i in kept]
                _evaluated(len(kept), len(items) - len(kept), "decoded")   # before NaN figures
                metrics = ev.zero_shot(model, tokenizer, emb, targets, labels, device, args.prompt)
                metrics["skipped"] = len(items) - len(kept)
            elif args.data_root and args.class_labels:
                metrics = ev.zero_shot_shards(model, tokenizer, _shards(args, args.splits), audio_cfg,
                                              args.labels, args, device, args.prompt)
                _evaluated(metrics["num_samples"], metrics["skipped"], "has a tag among the labels",
                           metrics["unlabelled"])
            else:
                raise UserError("zero-shot needs --class-folder, or --data-root with --class-labels")
        else:
            if not (args.data_root and args.class_labels):
                raise UserError("linear probe needs --data-root and --class-labels")
            index = {label: i for i, label in enumerate(args.labels)}
            parts = {}
            for name, splits in (("train", args.train_splits), ("test", args.splits)):
                ds = ClapShards(_shards(args, splits), None, audio_cfg, args.batch_size, train=False,
                                truncating=args.data_truncating, filling=args.data_filling,
                                seed=args.seed, class_index=index, need_fusion=args.enable_fusion)
                emb = ev.embed_shards(model, ds, device, projected=True)
                labelled = emb["class_label"].sum(1) > 0 if "class_label" in emb else None
                # a sample with no tag among the labels has no class: as zero-shot, it is left
                # out (its all-zero row read as class 0 and scored 100 %)
                _evaluated(0 if labelled is None else int(labelled.sum()), emb["skipped"],
                           f"({name}) has a tag among the labels",
                           0 if labelled is None else int((~labelled).sum()))
                parts[name] = {"audio": emb["audio"][labelled], "class_label": emb["class_label"][labelled]}
            multilabel = bool((parts["train"]["class_label"].sum(1) > 1).any())
            with torch.enable_grad():
                metrics = ev.linear_probe(parts["train"]["audio"], parts["train"]["class_label"],
                                          parts["test"]["audio"], parts["test"]["class_label"], multilabel)
    if args.task == "linear-probe":
        metrics.update(num_train=len(parts["train"]["audio"]), num_test=len(parts["test"]["audio"]))
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.output:
        from laion_audio import atomic

        atomic.write_text(args.output, text + "\n")   # a kill never leaves half a report
    return 0
