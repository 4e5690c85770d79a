"""Contrastive training loop (LAION-CLAP's recipe, reference/clap.md §3).

One process on a laptop CPU, or ``torchrun`` DDP across GPUs and nodes (gloo on CPU). Per
step: symmetric InfoNCE over the global batch (features all-gathered with gradients), Adam
(betas configurable), warmup + cosine lr, logit scales clamped to [0, ln 100], bf16 autocast
on GPU, optional gradient accumulation with cached features (the loss is the one of the whole
accumulated batch, as open_clip's ``--accum-freq``).

Checkpoints hold model, optimizer, scheduler, RNG states and the data position (epoch and
batches consumed), so ``--resume`` continues bit-for-bit on CPU: the data loader is a pure
function of (seed, epoch) and skips the batches already seen.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import random
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import atomic
from ..errors import IncompleteError, UserError
from .checkpoint import fix_state_dict, load_pretrained_audio, load_state_strict, read_checkpoint
from .data import ClapShards, find_shards, make_loader, require_shards
from .distributed import DistInfo, init_distributed
from .factory import create_model, create_tokenizer, load_model_config
from .features import AudioConfig
from .loss import clip_loss
from .model import unwrap
from .scheduler import CosineWarmup
from .text import train_tokenizer

log = logging.getLogger(__name__)

LOG_FIELDS = ["step", "epoch", "batch_in_epoch", "loss", "lr", "logit_scale", "samples_per_s",
              "data_time", "batch_time", "skipped_total"]


# -- building blocks -------------------------------------------------------------------------
def to_device(batch: dict, device: torch.device) -> tuple[dict, dict]:
    """(audio input dict, text token dict) on ``device``."""
    audio = {k: batch[k].to(device, non_blocking=True) for k in ("waveform", "longer", "mel_fusion")
             if k in batch}
    text = {k: v.to(device, non_blocking=True) for k, v in batch["text"].items()}
    return audio, text


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """LAION: no decay for 1-d params and names with bn/ln/bias/logit_scale; frozen params
    (the STFT/mel tensors) are not optimised at all."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    betas = (args.beta1, args.beta2)
    if args.optimizer == "adam":  # LAION forces weight decay 0 with Adam
        return torch.optim.Adam(param_groups(model, 0.0), lr=args.lr, betas=betas, eps=args.eps)
    return torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=betas, eps=args.eps)


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_step(model, batches: list[dict], optimizer, device: torch.device, autocast=contextlib.nullcontext,
               grad_clip: float | None = None) -> float:
    """One optimizer step over ``batches`` (1 = plain step; >1 = accumulation with cached
    features so the loss is the loss of the concatenated batch). Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    inputs = [to_device(b, device) for b in batches]
    if len(inputs) == 1:
        with autocast():
            a, t, _, _, scale, _ = model(*inputs[0])
            loss = clip_loss(a, t, scale)
        loss.backward()
    else:
        with torch.no_grad(), autocast():
            cached = [model(*x)[:2] for x in inputs]
        sync = getattr(model, "no_sync", contextlib.nullcontext)
        for j, x in enumerate(inputs):
            ctx = contextlib.nullcontext() if j == len(inputs) - 1 else sync()
            with ctx:
                with autocast():
                    a, t, _, _, scale, _ = model(*x)
                    audio = torch.cat([c[0] for c in cached[:j]] + [a] + [c[0] for c in cached[j + 1:]])
                    text = torch.cat([c[1] for c in cached[:j]] + [t] + [c[1] for c in cached[j + 1:]])
                    # each pass adds d loss / d (its own features); the scale's gradient once
                    loss = clip_loss(audio, text, scale if j == 0 else scale.detach())
                loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    unwrap(model).clamp_logit_scales()
    return float(loss.detach())


def rng_state() -> dict:
    """RNG states in plain types, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, keys.tolist(), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, batches_done: int,
                    step: int, args, extra: dict | None = None) -> None:
    """Atomic write (tmp + rename) so a kill never leaves a half checkpoint."""
    state = {"name": args.name, "epoch": epoch, "batches_done": batches_done, "step": step,
             "state_dict": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "args": public_args(args, path.parent.parent)}  # <run>/checkpoints/x.pt
    text_config = hf_text_config(unwrap(model))
    if text_config is not None:
        state["text_config"] = text_config
    if str(args.amodel).endswith(".json"):   # published by name only: the config travels along
        state["amodel_config"] = load_model_config(args.amodel)
    state.update(extra or {})
    with atomic.atomic_path(path, fsync=True) as tmp:
        torch.save(state, tmp)


class StopRequest:
    """Ctrl-C or SIGTERM (a scheduler's preemption) during training: finish the step in flight,
    checkpoint it, then stop, instead of dying with everything since the last checkpoint lost.
    A second signal stops at once. Single process only (DDP ranks would have to agree)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.saved = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("stopping after this step (checkpointing it); signal again to stop at once")

    def restore(self) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)


class RunLog:
    """CSV log (always) + TensorBoard (when installed), master rank only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None,
                 resume_epoch: int | None = None):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path = run_dir / "train_log.csv"
        if resume_step is not None:
            self._trim(run_dir, resume_step, resume_epoch)
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.info("tensorboard not installed: CSV log only")

    def _trim(self, run_dir: Path, step: int, epoch: int | None) -> None:
        """A run killed after its last checkpoint logged steps (and validations) it will redo
        on resume: drop them, so each step and epoch is in the logs once."""
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
            with atomic.atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        results = run_dir / "results.jsonl"
        if epoch is not None and results.is_file():
            kept = [line for line in results.read_text().splitlines()
                    if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
            with atomic.atomic_path(results) as tmp:
                Path(tmp).write_text("".join(line + "\n" for line in kept))

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow(row)
        self.file.flush()
        if self.tb:
            for k in ("loss", "lr", "logit_scale", "samples_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def metrics(self, run_dir: Path, epoch: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(run_dir / "results.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"val/{k}", v, epoch)

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tb:
                self.tb.close()


def read_captions(shard_sets) -> list[str]:
    """Every caption of the training shards (JSON members only) to train a tokenizer."""
    import tarfile

    import fsspec

    texts = []
    for s in shard_sets:
        for url in s.urls:
            try:
                with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                    for member in tar:
                        if member.name.endswith(".json"):
                            try:
                                meta = json.loads(tar.extractfile(member).read())
                                t = meta.get("text")
                                texts += [t] if isinstance(t, str) else [x for x in t or [] if isinstance(x, str)]
                            except (ValueError, AttributeError):
                                continue
            except (OSError, tarfile.TarError) as exc:
                log.warning("tokenizer: skipped unreadable %s (%s)", url, exc)
    return texts


def prepare_tokenizer(args, shard_sets, run_dir: Path, info: DistInfo):
    path = args.tokenizer or args.text_model_path
    tok_dir = run_dir / "tokenizer"
    if path:
        tokenizer = create_tokenizer(path)
        if info.is_master and not tok_dir.is_dir():
            # a copy in the run folder: the run (and its checkpoints) stay usable without the
            # folder it came from, and nothing published needs to name that folder
            tokenizer.hf.save_pretrained(str(tok_dir))
        if info.distributed:
            dist.barrier()
        args.tokenizer = str(tok_dir.resolve())
        return tokenizer
    if info.is_master and not (tok_dir / "tokenizer.json").exists():
        kind = "bert" if args.tmodel == "bert" else "roberta"
        train_tokenizer(read_captions(shard_sets), tok_dir, kind, args.tokenizer_vocab_size)
        log.info("trained a %s tokenizer on the training captions: %s", kind, tok_dir)
    if info.distributed:
        dist.barrier()
    args.tokenizer = str(tok_dir.resolve())
    return create_tokenizer(tok_dir)


#: options whose values are places on the user's machine
LOCAL_PATH_OPTIONS = ("data_root", "logs", "tokenizer", "text_model_path", "pretrained_audio",
                      "class_label_path", "resume", "amodel")


def public_args(args, run_dir: Path) -> dict:
    """The run's settings as params.json and checkpoints publish them. A path inside the run
    folder becomes relative to it; any other local path keeps only its last name (the model
    folder's name says which model) so nothing published names a folder of the user's machine.
    URLs keep their place with secrets redacted."""
    from laion_audio.http import redact

    out = {k: v for k, v in vars(args).items() if k != "func"}
    root = Path(run_dir).resolve()
    for key in LOCAL_PATH_OPTIONS:
        value = out.get(key)
        if not value or value == "latest":
            continue
        value = str(value)
        if "://" in value:
            out[key] = redact(value)
            continue
        place = Path(value).resolve()
        out[key] = place.relative_to(root).as_posix() if place.is_relative_to(root) else place.name
    return out


def hf_text_config(model) -> dict | None:
    """A Hugging Face text tower's config without its local origin, saved in checkpoints so a
    tower built from a pretrained folder can be rebuilt without that folder."""
    config = getattr(getattr(model, "text_branch", None), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def default_name(args) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y_%m_%d-%H_%M_%S")
    return f"{stamp}-model_{Path(args.amodel).stem}-lr_{args.lr}-b_{args.batch_size}-j_{args.workers}-p_{args.precision}"


def parse_weights(items) -> dict | None:
    """``--dataset-weights`` (already (name, weight) pairs, see params.dataset_weight)."""
    return dict(items) if items else None


# -- the loop --------------------------------------------------------------------------------
#: LAION's warmup for HTS-AT; a short run warms up for a tenth of its steps instead
DEFAULT_WARMUP = 3200


def run_warmup(warmup: int | None, total_steps: int, max_steps: int | None = None) -> int:
    """``--warmup`` as given, else LAION's 3200 capped at a tenth of the steps this run will
    take (a 30-step CPU run would otherwise never leave warmup)."""
    if warmup is not None:
        return warmup
    steps = min(total_steps, max_steps) if max_steps else total_steps
    return max(1, min(DEFAULT_WARMUP, steps // 10))


#: settings that decide which samples make up each batch of an epoch
EPOCH_PLAN = ("batch_size", "accum_freq", "workers", "seed", "shuffle_buffer", "shuffle_initial",
              "datasets", "train_splits", "dataset_weights")


def check_same_epoch_plan(state: dict, args) -> None:
    """A checkpoint taken mid-epoch resumes by skipping the batches already seen; with another
    batch size, worker count, seed or data selection those are other samples, so some would be
    trained twice and others never. Between epochs anything may change."""
    saved = state.get("args")
    if not state.get("batches_done") or not isinstance(saved, dict):
        return
    plain = lambda v: json.dumps(v, default=str)  # noqa: E731  (tuples and lists alike)
    changed = [k for k in EPOCH_PLAN if k in saved and plain(saved[k]) != plain(getattr(args, k, None))]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in changed)
        raise UserError(f"--resume: the checkpoint stopped mid-epoch (after {state['batches_done']} "
                        f"batches) with {was}; resume with the same settings (or from an epoch_N.pt)")


def validated(run_dir: Path, epoch: int) -> bool:
    """``results.jsonl`` holds the validation of ``epoch`` (a damaged line counts as none)."""
    results = run_dir / "results.jsonl"
    if not results.is_file():
        return False
    for line in results.read_text().splitlines():
        try:
            if json.loads(line).get("epoch") == epoch:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def holds_run(run_dir: Path) -> bool:
    """A run folder with checkpoints or logged steps: starting afresh there would append to its
    log and overwrite its checkpoints."""
    log_file = run_dir / "train_log.csv"      # a header alone: a run that made no step
    return any((run_dir / "checkpoints").glob("*.pt")) or (
        log_file.is_file() and len(log_file.read_text().splitlines()) > 1)


def check_corpus(train_sets, args, world_size: int) -> None:
    """The weights name training datasets and the shards hold at least one global batch,
    before any run folder is made. A batch larger than the corpus would repeat samples inside
    one batch, each copy a negative of itself in the contrastive loss."""
    found = {s.dataset for s in train_sets}
    unknown = sorted(set(dict(args.dataset_weights or ())) - found)
    if unknown:   # a typo here silently trained unweighted
        raise UserError(f"--dataset-weights names {', '.join(unknown)}, not a training dataset here "
                        f"(found: {', '.join(sorted(found))})")
    samples = sum(s.num_samples for s in train_sets)
    if args.batch_size * world_size > samples:
        raise UserError(f"--batch-size {args.batch_size} x {world_size} process(es) is more than the "
                        f"{samples} training samples in sizes.json; use a batch of at most {samples}")


def train(args) -> int:
    info = init_distributed(args.device)
    logging.getLogger().setLevel(logging.INFO if info.is_master else logging.WARNING)
    resume_state = None
    if args.resume:
        resume_path = args.resume
        if resume_path == "latest":
            resume_path = Path(args.logs) / args.name / "checkpoints" / "latest.pt"
        if not Path(resume_path).is_file():
            raise UserError(f"--resume latest: run {args.name!r} has no checkpoint to resume "
                            f"({resume_path} does not exist); drop --resume to start it"
                            if args.resume == "latest" else
                            f"--resume {args.resume}: no such checkpoint file")
        try:
            resume_state = read_checkpoint(resume_path, trust=args.trust_checkpoint)
            fix_state_dict(resume_state)
        except ValueError as exc:
            raise UserError(f"--resume: {exc}") from None
        check_same_epoch_plan(resume_state, args)
        args.name = args.name or resume_state.get("name")
    args.name = args.name or default_name(args)
    run_dir = Path(args.logs) / args.name
    weights = parse_weights(args.dataset_weights)
    train_sets = require_shards(args.data_root, args.datasets, args.train_splits, weights, "training ")
    check_corpus(train_sets, args, info.world_size)
    if resume_state is None and holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run (checkpoints or train_log.csv); add --resume "
                        "latest to continue it, or choose another --name or --logs")
    if info.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(args, train_sets, run_dir, info)
    if info.is_master:  # after the tokenizer: params.json names the run's own copy
        atomic.write_text(run_dir / "params.json", json.dumps(public_args(args, run_dir), indent=2, default=str))

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = create_model(args.amodel, args.tmodel, args.enable_fusion, args.fusion_type,
                         args.text_model_path, tokenizer, spec_augment=not args.no_spec_augment)
    if args.pretrained_audio and resume_state is None:
        try:
            load_pretrained_audio(model, args.pretrained_audio, trust=args.trust_checkpoint)
        except ValueError as exc:
            raise UserError(f"--pretrained-audio: {exc}") from None
    if args.freeze_text:
        for p in model.text_branch.parameters():
            p.requires_grad = False
    model.to(info.device)
    if info.distributed:
        if args.use_bn_sync and info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            find_unused_parameters=True)

    audio_cfg = AudioConfig.from_dict(load_model_config(args.amodel)["audio_cfg"])
    class_index = json.loads(Path(args.class_label_path).read_text(encoding="utf-8")) if args.class_label_path else None
    dataset = ClapShards(train_sets, tokenizer, audio_cfg, args.batch_size, train=True,
                         truncating=args.data_truncating, filling=args.data_filling,
                         text_augment_selection=args.text_augment_selection, seed=args.seed,
                         rank=info.rank, world_size=info.world_size, workers=args.workers,
                         shuffle_buffer=args.shuffle_buffer, shuffle_initial=args.shuffle_initial,
                         class_index=class_index, need_fusion=args.enable_fusion,
                         weighted=weights is not None)
    steps_per_epoch = dataset.num_batches // args.accum_freq
    if steps_per_epoch == 0:
        raise UserError(f"an epoch has {dataset.num_batches} batches, fewer than --accum-freq "
                        f"{args.accum_freq}")
    total_steps = steps_per_epoch * args.epochs
    optimizer = build_optimizer(model, args)
    args.warmup = run_warmup(args.warmup, total_steps, args.max_steps)
    scheduler = CosineWarmup(optimizer, args.lr, args.warmup, total_steps)

    start_epoch, batches_done, step = 0, 0, 0
    if resume_state is not None:
        try:
            load_state_strict(unwrap(model), fix_state_dict(resume_state), resume_path)
        except ValueError as exc:
            raise UserError(f"--resume: {exc}") from None
        if "optimizer" in resume_state and "epoch" in resume_state:
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            start_epoch, batches_done = resume_state["epoch"], resume_state["batches_done"]
            step = resume_state["step"]
        log.info("resumed from %s at epoch %d, batch %d, step %d", args.resume, start_epoch, batches_done, step)
    torch.manual_seed(args.seed + info.rank)  # per-rank dropout / SpecAugment streams
    random.seed(args.seed + info.rank)
    np.random.seed((args.seed + info.rank) % 2 ** 32)
    if resume_state is not None and "rng" in resume_state:
        set_rng_state(resume_state["rng"])

    val_sets = find_shards(args.data_root, args.datasets, args.val_splits) if args.val_frequency else []
    shared = sorted(set(args.val_splits) & set(args.train_splits)) if val_sets else []
    if shared and info.is_master:     # legal (a quick check of fitting), but never silent
        log.warning("validating on training split(s) %s: the retrieval figures measure fitting, "
                    "not generalisation", ", ".join(shared))
    autocast = autocast_for(info.device, args.precision)
    runlog = RunLog(run_dir, info.is_master, step if resume_state is not None else None,
                    start_epoch if resume_state is not None else None)
    ckpt_dir = run_dir / "checkpoints"
    global_batch = args.batch_size * info.world_size * args.accum_freq
    skipped_total = 0
    if info.is_master:      # on stdout: what a user running `train` watches
        print(f"training {args.amodel}/{args.tmodel}: {dataset.num_samples} samples, "
              f"{steps_per_epoch} steps/epoch x {args.epochs} epochs, global batch {global_batch}, "
              f"world {info.world_size}, warmup {args.warmup} steps", flush=True)
    stop = False
    first_step = step
    import threading

    stopping = (StopRequest() if not info.distributed and threading.current_thread() is threading.main_thread()
                else None)          # signal handlers can only be set from the main thread

    def validate(epoch_done: int) -> None:
        if info.is_master:
            from .evaluate import evaluate_retrieval
            metrics = evaluate_retrieval(unwrap(model), val_sets, tokenizer, audio_cfg, args,
                                         info.device)
            runlog.metrics(run_dir, epoch_done, metrics)
            log.info("epoch %d validation: %s", epoch_done,
                     {k: round(v, 4) for k, v in metrics.items() if k.endswith(("R@1", "mAP@10"))})
        if info.distributed:
            dist.barrier()

    try:
        if (resume_state is not None and batches_done == 0 and start_epoch > 0 and val_sets
                and start_epoch % args.val_frequency == 0
                and not validated(run_dir, start_epoch)):
            # killed between the epoch's checkpoint and its validation: that row is owed
            validate(start_epoch)
        for epoch in range(start_epoch, args.epochs):
            model.train()
            dataset.set_epoch(epoch, skip_batches=batches_done)
            loader = make_loader(dataset, args.workers, seed=args.seed + epoch)
            progress = None
            if info.is_master and not args.no_progress:
                from tqdm import tqdm
                progress = tqdm(total=steps_per_epoch, initial=batches_done // args.accum_freq,
                                desc=f"epoch {epoch}", dynamic_ncols=True)
            pending: list[dict] = []
            owed = batches_done < steps_per_epoch * args.accum_freq   # a resume may owe none
            t_data = time.perf_counter()
            for batch in loader:
                skipped_total += batch.pop("skipped", 0)
                pending.append(batch)
                if len(pending) < args.accum_freq:
                    continue
                data_time = time.perf_counter() - t_data
                t0 = time.perf_counter()
                lr = scheduler.step()
                loss = train_step(model, pending, optimizer, info.device, autocast, args.grad_clip)
                if not math.isfinite(loss):
                    # the weights are now garbage: keep the last checkpoint, save nothing
                    raise IncompleteError(
                        f"the loss is {loss} at step {step + 1} (epoch {epoch}): training diverged; "
                        "lower --lr or set --grad-clip, then --resume from the last checkpoint")
                batch_time = time.perf_counter() - t0
                pending = []
                batches_done += args.accum_freq
                step += 1
                scale = float(unwrap(model).logit_scale_a.detach().exp())
                if progress:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                runlog.step({"step": step, "epoch": epoch, "batch_in_epoch": batches_done, "loss": loss,
                             "lr": lr, "logit_scale": scale,
                             "samples_per_s": global_batch / max(batch_time + data_time, 1e-9),
                             "data_time": data_time, "batch_time": batch_time,
                             "skipped_total": skipped_total})
                if step % max(1, args.log_every_steps) == 0 and info.is_master:
                    print(f"step {step} epoch {epoch} loss {loss:.4f} lr {lr:.3e} scale {scale:.2f} "
                          f"data {data_time:.3f}s batch {batch_time:.3f}s", flush=True)
                if (info.is_master and args.save_every_steps and step % args.save_every_steps == 0
                        or stopping and stopping.signum):
                    save_checkpoint(ckpt_dir / "latest.pt", model, optimizer, scheduler, epoch,
                                    batches_done, step, args)
                if stopping and stopping.signum:
                    raise KeyboardInterrupt     # after the checkpoint: --resume latest loses nothing
                if args.max_steps and step >= args.max_steps:
                    stop = True
                    break
                if batches_done >= steps_per_epoch * args.accum_freq:
                    break
                t_data = time.perf_counter()
            if progress:
                progress.close()
            if owed and step == first_step:   # before any checkpoint of untrained weights
                raise IncompleteError(
                    f"no training step was made: no sample of the {dataset.num_samples} in sizes.json "
                    "was usable (the warnings above name them); check the data root with "
                    "`laion-audio verify --shards-to`")
            if stop:
                if info.is_master:
                    save_checkpoint(ckpt_dir / "latest.pt", model, optimizer, scheduler, epoch,
                                    batches_done, step, args)
                break
            batches_done = 0
            if info.is_master:
                save_checkpoint(ckpt_dir / f"epoch_{epoch + 1}.pt", model, optimizer, scheduler,
                                epoch + 1, 0, step, args)
                save_checkpoint(ckpt_dir / "latest.pt", model, optimizer, scheduler, epoch + 1, 0, step, args)
            if val_sets and args.val_frequency and (epoch + 1) % args.val_frequency == 0:
                validate(epoch + 1)
    finally:
        runlog.close()
        if stopping:
            stopping.restore()
    if skipped_total:
        log.warning("%d corrupt samples were skipped during training", skipped_total)
    if info.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0
