"""CLAP training throughput: samples/s of a full training step (forward, InfoNCE, backward,
Adam) for HTS-AT tiny and PANN CNN14 with a RoBERTa-base text tower (random weights, the
released architecture), and the data loader's throughput against the step time.

    python benchmarks/train.py [--batch 4] [--steps 3] [--workers 2] [--device cpu|cuda]

Prints medians and the loader/step ratio (> 1: the loader keeps up). Shards are built from
Debian sound files (10 s clips cut/padded by the loader) in a temporary folder.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laion_audio.clap.data import ClapShards, find_shards, make_loader  # noqa: E402
from laion_audio.clap.factory import create_model  # noqa: E402
from laion_audio.clap.features import AudioConfig  # noqa: E402
from laion_audio.clap.text import train_tokenizer  # noqa: E402
from laion_audio.clap.train import autocast_for, train_step  # noqa: E402


def build_shards(root: Path, n: int) -> None:
    from tests.clap.synth import debian_caption, load_debian, write_shards
    from tests.conftest import find_debian_sounds

    files = find_debian_sounds()[:n] or []
    items = []
    for i in range(n):
        if files:
            p = files[i % len(files)]
            wave = load_debian(p, 15.0)
            cap = debian_caption(p)
        else:
            wave = (np.random.default_rng(i).standard_normal(48000 * 8) * 0.1).astype(np.float32)
            cap = f"noise {i}"
        items.append((f"bench-{i:04d}", wave, {"text": [cap, f"clip {i}"]}))
    write_shards(root, "bench", "train", items, per_shard=16)


def bench_model(amodel: str, tok, batch: dict, steps: int, device, precision: str) -> float:
    torch.manual_seed(0)
    model = create_model(amodel, "roberta", tokenizer=tok).to(device)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = autocast_for(device, precision)
    train_step(model, [batch], opt, device, autocast)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, [batch], opt, device, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--models", nargs="*", default=["HTSAT-tiny", "PANN-14"])
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = max(64, args.batch * 8)
        build_shards(root / "shards", n)
        tok = train_tokenizer([f"clip {i}" for i in range(50)], root / "tok", "roberta", 500)
        sets = find_shards(root / "shards")
        ds = ClapShards(sets, tok, AudioConfig(), args.batch, train=True, workers=args.workers,
                        shuffle_buffer=64, shuffle_initial=16)
        ds.set_epoch(0)
        t0 = time.perf_counter()
        batches = list(make_loader(ds, args.workers))
        load_time = time.perf_counter() - t0
        loader_sps = sum(len(b["raw_text"]) for b in batches) / load_time
        print(f"loader: {loader_sps:.1f} samples/s ({args.workers} workers, {len(batches)} batches of "
              f"{args.batch}, FLAC decode + 10 s fit + tokenise)")
        results = {}
        for amodel in args.models:
            step = bench_model(amodel, tok, batches[0], args.steps, device, args.precision)
            results[amodel] = args.batch / step
            print(f"{amodel}+RoBERTa-base train step: median {step:.2f} s for batch {args.batch} -> "
                  f"{results[amodel]:.2f} samples/s on {device}; loader/step ratio {loader_sps / results[amodel]:.1f}x")
        if len(results) == 2:
            a, b = args.models
            print(f"ratio {a}/{b} samples/s: {results[a] / results[b]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
