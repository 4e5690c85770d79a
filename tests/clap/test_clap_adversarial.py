"""Inputs the trainer and the evaluator's authors did not plan for: each mistake is one line on
stderr and exit 2, a run that produced nothing does not exit 0, bad samples are skipped and
counted (never trained on, never a hang). Tiny PANN-test runs on 0.3 s synthetic clips."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from laion_audio.cli import main as cli
from laion_audio.clap.text import train_tokenizer
from tests.clap.synth import CLASSES, synth_clip, write_shards

REPO = Path(__file__).resolve().parents[2]
LABELS = list(CLASSES)


def _items(n, prefix="c"):
    rng = np.random.default_rng(0)
    return [(f"{prefix}{i:02d}", synth_clip(LABELS[i % 6], i % 2, 1, rng, seconds=0.3),
             {"text": [f"a {LABELS[i % 6]}", f"the sound of {LABELS[i % 6]} {i}"], "tag": [LABELS[i % 6]]})
            for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    items = _items(12)
    write_shards(root / "shards", "synth", "train", items, per_shard=3)
    write_shards(root / "shards", "synth", "test", items[:6], per_shard=3)
    train_tokenizer([t for _, _, m in items for t in m["text"]], root / "tok", "roberta", 200)
    return root


def _run(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of the CLI in-process; argparse's own errors exit via SystemExit."""
    capsys.readouterr()
    try:
        rc = cli(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def _train_argv(corpus, logs, name, *extra, data=None):
    return ["train", "--data-root", str(data or corpus / "shards"), "--amodel", "PANN-test",
            "--tokenizer", str(corpus / "tok"), "--batch-size", "4", "--workers", "0", "--epochs", "1",
            "--warmup", "1", "--logs", str(logs), "--name", name, "--val-frequency", "0",
            "--no-progress", "--shuffle-buffer", "4", "--shuffle-initial", "2", *extra]


def _one_line_usage_error(rc, err):
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra", [
    ["--lr", "nan"], ["--lr", "-1"], ["--lr", "inf"], ["--beta1", "1.5"], ["--eps", "0"],
    ["--workers", "-1"], ["--warmup", "-5"], ["--max-steps", "0"], ["--grad-clip", "-1"],
    ["--log-every-steps", "0"], ["--dataset-weights", "synth"], ["--dataset-weights", "synth=abc"],
    ["--dataset-weights", "synth=0"], ["--epochs", "0"],
    ["--datasets", "nosuch"], ["--train-splits", "nosuch"], ["--batch-size", "13"],
])
def test_train_option_mistakes_are_one_line_and_make_no_run_folder(corpus, tmp_path, capsys, extra):
    rc, err = _run(_train_argv(corpus, tmp_path, "r", *extra), capsys)
    _one_line_usage_error(rc, err)
    assert not (tmp_path / "r").exists()
