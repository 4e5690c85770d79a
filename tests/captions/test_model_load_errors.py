"""A caption model folder that cannot load (missing, empty, foreign, damaged) is the user's
mistake: one line and exit 2 from every command that takes one, before any record is touched.
Anything else raised while loading is a bug of ours and keeps its traceback.

The folders are real damage done to a real (tiny, untrained) T5 folder as ``save_pretrained``
writes it; which exception each raises in transformers/tokenizers/safetensors is noted in
docs/captions.md ("Model folders that cannot load")."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from laion_audio.cli import main
from laion_audio.errors import UserError
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

CAPTIONS = ["a dog barks at night", "a bell rings twice", "rain falls on a metal roof",
            "wind blows hard through trees", "a man speaks while cars pass"] * 4


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    """A T5 folder with its own trained tokenizer: what train-captioner writes, minus training."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from laion_audio.captions.train import train_tokenizer

    tok = train_tokenizer(CAPTIONS + ["dog | bark | bell"], 80)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                   num_decoder_layers=1, num_heads=2, feed_forward_proj="relu",
                   tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    folder = tmp_path_factory.mktemp("k2c") / "good"
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    return folder


def _write(name: str, data: str | bytes):
    def damage(d: Path) -> None:
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return damage


def _cut(name: str, keep: int):
    def damage(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes()[:keep])
    return damage


def _remove(*names: str):
    def damage(d: Path) -> None:
        for n in names:
            (d / n).unlink()
    return damage


def _config_sizes(d: Path) -> None:
    """config.json of another size than the weights (a config edited or copied from a sibling
    run): transformers raises a RuntimeError asking for ignore_mismatched_sizes."""
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_ff"] *= 2
    (d / "config.json").write_text(json.dumps(cfg))


def _empty(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


#: id -> damage done to a copy of the good folder
DAMAGED = {
    "empty-folder": _empty,
    "config-sizes-not-the-weights": _config_sizes,
    "config-not-json": _write("config.json", "{model_type: t5"),
    "config-a-json-list": _write("config.json", "[1, 2]"),
    "config-another-model-type": _write("config.json", json.dumps({"model_type": "bert"})),
    "config-unknown-model-type": _write("config.json", json.dumps({"model_type": "nosuchmodel"})),
    "weights-cut-short": _cut("model.safetensors", 1000),
    "weights-garbage": _write("model.safetensors", b"garbage" * 100),
    "weights-missing": _remove("model.safetensors"),
    "tokenizer-json-missing": _remove("tokenizer.json"),
    "tokenizer-files-missing": _remove("tokenizer.json", "tokenizer_config.json"),
    "tokenizer-not-json": _write("tokenizer.json", "garbage{"),
    "tokenizer-cut-short": _cut("tokenizer.json", 300),
    "tokenizer-json-of-something-else": _write("tokenizer.json", '{"a": 1}'),
    "tokenizer-config-a-json-list": _write("tokenizer_config.json", "[1]"),
}


@pytest.fixture(params=sorted(DAMAGED))
def damaged(request, good_model, tmp_path) -> Path:
    folder = tmp_path / request.param
    shutil.copytree(good_model, folder)
    DAMAGED[request.param](folder)
    return folder


def _transcoded_ledger(path: Path, n: int = 3) -> Path:
    with Ledger(path) as ledger:
        ledger.write([Record(source="freesound", source_id=str(i), tags=["dog", "bark"],
                             audio_duration=5.0, status=Status.TRANSCODED) for i in range(n)])
    return path


def _one_line(code: int, err: str) -> str:
    """The one line a mistake prints (the gate's warning for --force-caption-model aside)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    return lines[0]


def _statuses(ledger_dir: Path) -> list[str]:
    with Ledger(ledger_dir, lock=False) as ledger:
        return [r.status for r in ledger.records()]


def test_good_model_loads(good_model):
    """The folder the damage is done to loads (else every case below would pass for nothing)."""
    from laion_audio.captions.k2c import load_t5

    tok, net = load_t5(good_model, "good")
    assert tok("a dog barks").input_ids[:-1] and tok.unk_token_id not in tok("dog").input_ids


def test_caption_with_damaged_model_is_one_line(damaged, tmp_path, capsys):
    ledger_dir = _transcoded_ledger(tmp_path / "work" / "ledger")
    code = main(["caption", "--ledger", str(ledger_dir), "--model", str(damaged),
                 "--force-caption-model", "--device", "cpu"])
    line = _one_line(code, capsys.readouterr().err)
    assert damaged.name in line or str(damaged) in line, line
    assert _statuses(ledger_dir) == [Status.TRANSCODED] * 3


@pytest.mark.parametrize("case", ["config-another-model-type", "weights-cut-short",
                                  "tokenizer-files-missing", "tokenizer-json-of-something-else"])
def test_train_captioner_pretrained_damaged_is_one_line(case, good_model, tmp_path, capsys):
    folder = tmp_path / case
    shutil.copytree(good_model, folder)
    DAMAGED[case](folder)
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(CAPTIONS) + "\n")
    code = main(["train-captioner", "--corpus", f"text:{corpus}", "--out", str(tmp_path / "out"),
                 "--pretrained", str(folder), "--max-steps", "1", "--batch-size", "2",
                 "--threads", "1", "--no-fusion-lm"])
    line = _one_line(code, capsys.readouterr().err)
    assert "--pretrained" in line and case in line, line


def test_a_bug_while_loading_is_not_called_a_user_mistake(good_model):
    """A caller passing an option the model class does not take is our bug: its TypeError
    propagates (before, every exception became 'cannot load it', exit 2)."""
    from laion_audio.captions.k2c import load_t5

    with pytest.raises(TypeError, match="no_such_option") as info:
        load_t5(good_model, "captioner", no_such_option=1)
    assert not isinstance(info.value, UserError)


@pytest.fixture(scope="module")
def transcoded_work(tmp_path_factory) -> Path:
    """A work folder with four BBC records transcoded from the bundled replay server."""
    from crawlers.replay import serve
    from pipelines.build import BuildConfig, run_build
    from pipelines.demo import demo_sources

    out = tmp_path_factory.mktemp("replay") / "work"
    with serve(seed=0, sizes={"bbc": 4}) as (_app, base):
        summary = run_build(BuildConfig(out=out, sources={"bbc": demo_sources(base, out)["bbc"]},
                                        inline=True, stages=("crawl", "fetch", "transcode")))
    assert [st["succeeded"] for st in summary["stages"]] == [4, 4, 4], summary["stages"]
    return out


def _build_caption(work: Path, model: Path) -> int:
    return main(["build", "--source", "bbc", "--out", str(work), "--stages", "caption",
                 "--caption-model", str(model), "--force-caption-model", "--inline"])


def test_build_with_damaged_model_stops_before_any_record(damaged, transcoded_work, tmp_path, capsys):
    """Before: the workers loaded the model per batch and every record failed as internal_error
    (a rerun then needed --retry-failed); now build loads it up front as the worker will."""
    work = tmp_path / "work"
    shutil.copytree(transcoded_work, work)
    line = _one_line(_build_caption(work, damaged), capsys.readouterr().err)
    assert damaged.name in line, line
    assert _statuses(work / "ledger") == [Status.TRANSCODED] * 4


def test_build_with_good_model_captions(good_model, transcoded_work, tmp_path, capsys):
    """The same command with the undamaged folder captions every record (the up-front load is
    the one the inline worker uses)."""
    from laion_audio.captions import worker

    work = tmp_path / "work"
    shutil.copytree(transcoded_work, work)
    assert _build_caption(work, good_model) == 0, capsys.readouterr().err[-2000:]
    assert _statuses(work / "ledger") == [Status.CAPTIONED] * 4
    assert sum(key[0] == str(good_model) for key in worker._CAPTIONERS) == 1


@pytest.mark.parametrize("inline", [False, True])
def test_build_keeps_the_checked_model_only_when_the_stage_runs_in_the_driver(good_model, inline):
    """The up-front load checks the folder; on Ray the workers load their own copy, so the
    driver's is dropped (it held the model's memory, on a GPU too, for the whole run)."""
    import argparse

    from laion_audio.captions import worker
    from laion_audio.commands.build import _checked_captions

    worker.release(str(good_model))
    args = argparse.Namespace(caption_model=str(good_model), force_caption_model=True,
                              caption_input_format=None, audioset_captions=None, inline=inline)
    _checked_captions(args)
    held = [k for k in worker._CAPTIONERS if k[0] == str(good_model)]
    assert len(held) == (1 if inline else 0)
    worker.release(str(good_model))
