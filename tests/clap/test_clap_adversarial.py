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
    ["--dataset-weights", "synth=0"], ["--dataset-weights", "synht=2"], ["--epochs", "0"],
    ["--datasets", "nosuch"], ["--datasets", "synth", "snyth"], ["--train-splits", "nosuch"],
    ["--batch-size", "13"],
])
def test_train_option_mistakes_are_one_line_and_make_no_run_folder(corpus, tmp_path, capsys, extra):
    rc, err = _run(_train_argv(corpus, tmp_path, "r", *extra), capsys)
    _one_line_usage_error(rc, err)
    assert not (tmp_path / "r").exists()


def _bad_corpus(root: Path, items) -> Path:
    write_shards(root, "bad", "train", items, per_shard=4)
    return root


def test_a_corpus_with_no_usable_sample_fails_instead_of_cycling_forever(corpus, tmp_path, capsys):
    """Every FLAC garbage or every caption blank: exit 1 in seconds, no checkpoint (it hung
    forever, re-reading the same bad samples pass after pass)."""
    data = _bad_corpus(tmp_path / "shards", [(f"g{i}", b"not a flac" * 5, {"text": "x"}) for i in range(4)]
                       + [(f"b{i}", synth_clip("clicking", 0, 1, np.random.default_rng(i), 0.3),
                           {"text": ["", "  "]}) for i in range(4)])
    proc = subprocess.run([sys.executable, "-m", "laion_audio", *_train_argv(corpus, tmp_path / "logs", "r",
                                                                            data=data)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "no training step was made" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "logs" / "r" / "checkpoints").exists()
    # the data fixed, the same command runs: a folder whose run made no step holds no run
    write_shards(data, "bad", "train", _items(4), per_shard=4)
    rc, err = _run(_train_argv(corpus, tmp_path / "logs", "r", data=data), capsys)
    assert rc == 0, err


def test_blank_captions_are_skipped_and_each_bad_sample_counted_once(corpus, tmp_path, capsys):
    """Blank captions ("", "   ", ["", ""]) were trained on; a bad sample met again on every
    pass over a small corpus was counted again each time (204 'corrupt samples' for 2)."""
    import csv

    good = _items(8, "ok")
    w = synth_clip("clicking", 0, 1, np.random.default_rng(1), 0.3)
    bad = [("blank", w, {"text": ""}), ("spaces", w, {"text": "   "}), ("blanks", w, {"text": ["", " "]}),
           ("garbage", b"not a flac" * 5, {"text": "garbage"})]
    data = _bad_corpus(tmp_path / "shards", good[:4] + bad + good[4:])
    # an epoch of 12 / 4 = 3 batches takes 1.5 passes over the 8 good samples: the bad ones are
    # met twice, and counted once
    rc, err = _run(_train_argv(corpus, tmp_path / "logs", "r", data=data), capsys)
    assert rc == 0, err
    with open(tmp_path / "logs" / "r" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["skipped_total"]) == 4


def test_a_diverging_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys):
    import torch

    rc, err = _run(_train_argv(corpus, tmp_path, "r", "--max-steps", "1"), capsys)
    assert rc == 0, err
    ckpt = tmp_path / "r" / "checkpoints" / "latest.pt"
    before = ckpt.read_bytes()
    rc, err = _run(_train_argv(corpus, tmp_path, "r", "--resume", "latest", "--epochs", "2",
                               "--lr", "1e30"), capsys)
    assert rc == 1, err
    assert "diverged" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert ckpt.read_bytes() == before
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A one-step run (its checkpoint) and files that are not checkpoints of it."""
    import torch

    logs = tmp_path_factory.mktemp("logs")
    assert cli(_train_argv(corpus, logs, "run", "--max-steps", "1")) == 0
    ckpt = logs / "run" / "checkpoints" / "latest.pt"
    bad = logs / "bad"
    bad.mkdir()
    data = ckpt.read_bytes()
    (bad / "truncated.pt").write_bytes(data[: len(data) // 2])
    (bad / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({"a": torch.zeros(2)}, bad / "foreign.pt")
    torch.save([1, 2], bad / "list.pt")
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"] = {k: v for k, v in list(state["state_dict"].items())[:-3]}
    torch.save(state, bad / "other_model.pt")
    return logs, ckpt, bad


BAD_CHECKPOINTS = [("truncated.pt", []), ("garbage.pt", []), ("garbage.pt", ["--trust-checkpoint"]),
                   ("foreign.pt", []), ("list.pt", []), ("other_model.pt", [])]


@pytest.mark.parametrize("name,extra", BAD_CHECKPOINTS)
def test_resume_from_a_file_that_is_not_this_runs_checkpoint_is_one_line(corpus, trained, tmp_path, capsys,
                                                                        name, extra):
    _, _, bad = trained
    rc, err = _run(_train_argv(corpus, tmp_path, "r", "--resume", str(bad / name), *extra), capsys)
    _one_line_usage_error(rc, err)
    assert "--resume" in err


def test_resume_latest_of_a_run_that_has_none_is_one_line(corpus, tmp_path, capsys):
    rc, err = _run(_train_argv(corpus, tmp_path, "never", "--resume", "latest"), capsys)
    _one_line_usage_error(rc, err)
    assert "no checkpoint to resume" in err


def test_resume_of_a_checkpoint_path_with_a_typo_names_that_path(corpus, tmp_path, capsys):
    """--resume FILE that does not exist: one line naming that file (the CLI checks it; the
    trainer's own message for it, reached by API callers, no longer says "--resume latest")."""
    rc, err = _run(_train_argv(corpus, tmp_path, "r", "--resume", str(tmp_path / "chekpoint.pt")), capsys)
    _one_line_usage_error(rc, err)
    assert "chekpoint.pt" in err and "latest" not in err


@pytest.mark.parametrize("name,extra", BAD_CHECKPOINTS)
def test_evaluate_a_file_that_is_not_a_checkpoint_is_one_line(corpus, trained, capsys, name, extra):
    _, _, bad = trained
    rc, err = _run(["evaluate", "--checkpoint", str(bad / name), "--tokenizer", str(corpus / "tok"),
                    "--data-root", str(corpus / "shards"), *extra], capsys)
    _one_line_usage_error(rc, err)


def test_a_run_folder_that_holds_another_run_is_not_overwritten(corpus, trained, capsys):
    logs, ckpt, _ = trained
    before = ckpt.read_bytes()
    rc, err = _run(_train_argv(corpus, logs, "run"), capsys)
    _one_line_usage_error(rc, err)
    assert "already holds a run" in err and ckpt.read_bytes() == before


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_logs_each_step_once(corpus, tmp_path):
    """SIGKILL after step 3 when the last checkpoint is step 2: the resumed run redoes step 3;
    train_log.csv used to hold it twice (and every step after the checkpoint of a longer run)."""
    import csv
    import os
    import signal
    import time

    data = tmp_path / "shards"
    write_shards(data, "synth", "train", _items(24), per_shard=6)
    argv = [sys.executable, "-m", "laion_audio", *_train_argv(corpus, tmp_path / "logs", "k", "--save-every-steps",
                                                             "2", data=data)]
    log = tmp_path / "logs" / "k" / "train_log.csv"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 4:   # header + steps 1-3
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    import torch

    saved = torch.load(tmp_path / "logs" / "k" / "checkpoints" / "latest.pt", weights_only=False)["step"]
    with open(log) as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert logged[-1] > saved, "killed right at a checkpoint: nothing to redo, the test proves nothing"
    resumed = subprocess.run(argv + ["--resume", "latest"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(log) as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 7))


def _labels_file(tmp_path, name, raw: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


@pytest.mark.parametrize("raw", [b"[]", b'["humming tone", "humming tone"]', b'["caf\\xe9"]'.replace(b"\\xe9", b"\xe9"),
                                 b'{"a": 1', b'"humming tone"', b"[1, 2]", b'{"a": 0, "b": 0}', b'["", "x"]'])
def test_evaluate_class_labels_that_are_no_class_list_are_one_line(corpus, trained, tmp_path, capsys, raw):
    """Empty, duplicated, non-UTF-8, broken, a bare string (read letter by letter), numbers:
    tracebacks, or NaN metrics with exit 0."""
    _, ckpt, _ = trained
    labels = _labels_file(tmp_path, "labels.json", raw)
    for task in ("zeroshot", "linear-probe"):
        rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", task, "--data-root",
                        str(corpus / "shards"), "--class-labels", labels], capsys)
        _one_line_usage_error(rc, err)
        assert "--class-labels" in err


@pytest.mark.parametrize("prompt", ["{lable} sound", "a sound", "{0} {label}"])
def test_evaluate_a_prompt_without_exactly_label_is_one_line(corpus, trained, tmp_path, capsys, prompt):
    _, ckpt, _ = trained
    labels = _labels_file(tmp_path, "labels.json", json.dumps(LABELS).encode())
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "zeroshot", "--data-root",
                    str(corpus / "shards"), "--class-labels", labels, "--prompt", prompt], capsys)
    _one_line_usage_error(rc, err)


def test_evaluate_output_that_is_a_folder_fails_before_the_work(corpus, trained, tmp_path, capsys):
    _, ckpt, _ = trained
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(corpus / "shards"),
                    "--output", str(tmp_path)], capsys)
    _one_line_usage_error(rc, err)


@pytest.mark.filterwarnings("error::RuntimeWarning")     # no NaN figures computed on the way
def test_evaluate_over_nothing_usable_exits_1_not_nan(corpus, trained, tmp_path, capsys):
    """No sample decodes, no sample carries one of the labels, empty class folders: NaN
    metrics with exit 0 (or a KeyError)."""
    _, ckpt, _ = trained
    bad = tmp_path / "bad"
    write_shards(bad, "bad", "test", [(f"g{i}", b"not a flac" * 5, {"text": "x"}) for i in range(3)])
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(bad)], capsys)
    assert rc == 1 and "nothing to evaluate" in err and "Traceback" not in err, err
    other = _labels_file(tmp_path, "other.json", b'["dog", "cat"]')
    for task in ("zeroshot", "linear-probe"):
        rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", task, "--data-root",
                        str(corpus / "shards"), "--splits", "test", "--class-labels", other], capsys)
        assert rc == 1 and "without a label" in err, err
    for name in ("dog", "cat"):
        (tmp_path / "classes" / name).mkdir(parents=True)
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "zeroshot", "--class-folder",
                    str(tmp_path / "classes")], capsys)
    _one_line_usage_error(rc, err)
    (tmp_path / "classes" / "dog" / "bark.flac").write_bytes(b"not a flac")
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "zeroshot", "--class-folder",
                    str(tmp_path / "classes")], capsys)
    assert rc == 1 and "nothing to evaluate" in err, err


def test_linear_probe_leaves_out_samples_without_a_label(corpus, trained, tmp_path, capsys):
    """Half the samples carry no tag among the labels: they were class 0 for the probe."""
    _, ckpt, _ = trained
    labels = _labels_file(tmp_path, "l.json", json.dumps(LABELS[:3]).encode())
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "linear-probe", "--data-root",
                    str(corpus / "shards"), "--train-splits", "train", "--splits", "test",
                    "--class-labels", labels, "--output", str(tmp_path / "m.json")], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["num_train"], metrics["num_test"]) == (6, 3)   # tags of LABELS[:3] only


def test_a_validation_split_with_no_usable_sample_does_not_crash_training(corpus, tmp_path, capsys):
    """evaluate_retrieval over no decoded sample raised KeyError 'dataset' at the first epoch
    end, killing the run after its checkpoint."""
    data = tmp_path / "shards"
    write_shards(data, "synth", "train", _items(4), per_shard=4)
    write_shards(data, "synth", "test", [(f"g{i}", b"not a flac" * 5, {"text": "x"}) for i in range(2)])
    argv = _train_argv(corpus, tmp_path / "logs", "r", data=data)
    argv[argv.index("--val-frequency") + 1] = "1"
    rc, err = _run(argv, capsys)
    assert rc == 0, err
    result = json.loads((tmp_path / "logs" / "r" / "results.jsonl").read_text().splitlines()[-1])
    assert (result["num_samples"], result["skipped"]) == (0, 2)


@pytest.mark.parametrize("extra", [["--batch-size", "2"], ["--seed", "9"], ["--shuffle-buffer", "8"]])
def test_resume_mid_epoch_with_another_epoch_plan_is_refused(corpus, trained, capsys, extra):
    """The loader skips the batches already seen; with another batch size or seed those are
    other samples (some trained twice, some never), silently."""
    logs, ckpt, _ = trained
    before = ckpt.read_bytes()
    rc, err = _run(_train_argv(corpus, logs, "run", "--resume", "latest", *extra), capsys)
    _one_line_usage_error(rc, err)
    assert "mid-epoch" in err and ckpt.read_bytes() == before


def test_train_paths_that_are_not_what_they_claim_are_one_line(corpus, trained, tmp_path, capsys):
    """An unwritable or file --logs, broken or list --class-label-path, an empty --tokenizer or
    --text-model-path folder, a garbage --pretrained-audio, sizes.json with a non-integer count
    or a list: tracebacks (or a list of labels silently ignored)."""
    _, _, bad = trained
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.json").write_text('{"a": 1')
    (tmp_path / "list.json").write_text('["a", "b"]')
    odd = tmp_path / "odd"
    write_shards(odd, "a", "train", _items(4), per_shard=2)
    (odd / "a" / "train" / "sizes.json").write_text('{"0.tar": "two", "1.tar": 2}')
    write_shards(odd, "b", "train", _items(4), per_shard=2)
    (odd / "b" / "train" / "sizes.json").write_text('["0.tar", "1.tar"]')
    cases = [["--logs", "/proc/logs"], ["--logs", str(tmp_path / "afile")],
             ["--class-label-path", str(tmp_path / "broken.json")],
             ["--class-label-path", str(tmp_path / "list.json")],
             ["--tokenizer", str(tmp_path / "empty")], ["--text-model-path", str(tmp_path / "empty")],
             ["--pretrained-audio", str(bad / "garbage.pt")], ["--pretrained-audio", str(bad / "list.pt")],
             ["--data-root", str(odd)]]
    for extra in cases:
        argv = _train_argv(corpus, tmp_path / "logs", "r")
        for opt, value in zip(extra[::2], extra[1::2]):
            if opt in argv:
                argv[argv.index(opt) + 1] = value
            else:
                argv += [opt, value]
        rc, err = _run(argv, capsys)
        assert rc == 2 and "Traceback" not in err, (extra, err)
        assert err.strip().splitlines()[-1].startswith("laion-audio train: error:"), (extra, err)
        if "--data-root" not in extra:
            assert len(err.strip().splitlines()) == 1, (extra, err)
        import shutil

        shutil.rmtree(tmp_path / "logs", ignore_errors=True)


def test_a_model_config_given_by_path_is_published_by_name_and_travels_in_the_checkpoint(corpus, tmp_path,
                                                                                        capsys):
    """--amodel /some/where/my.json: the default run name held the path (four nested folders)
    and params.json and the checkpoint published it; evaluate needed the file again."""
    import shutil

    import torch

    from laion_audio.clap.factory import CONFIG_DIR

    cfg = tmp_path / "private" / "my-pann.json"
    cfg.parent.mkdir()
    shutil.copy(CONFIG_DIR / "PANN-test.json", cfg)
    argv = _train_argv(corpus, tmp_path / "logs", "unused", "--max-steps", "1")
    argv[argv.index("--amodel") + 1] = str(cfg)
    i = argv.index("--name")
    del argv[i:i + 2]
    rc, err = _run(argv, capsys)
    assert rc == 0, err
    (run,) = list((tmp_path / "logs").iterdir())
    assert "my-pann" in run.name and (run / "checkpoints" / "latest.pt").is_file()
    ckpt = run / "checkpoints" / "latest.pt"
    state = torch.load(ckpt, weights_only=False)
    published = (run / "params.json").read_text() + json.dumps(state["args"], default=str) + state["name"]
    assert str(tmp_path) not in published
    cfg.unlink()
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(corpus / "shards"),
                    "--splits", "test"], capsys)
    assert rc == 0, err
    rc, err = _run(_train_argv(corpus, tmp_path / "logs", "../escape"), capsys)
    _one_line_usage_error(rc, err)


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_checkpoints_the_last_step_and_resume_continues_from_it(corpus, tmp_path, signum):
    """Ctrl-C (or a scheduler's SIGTERM) lost every step since the last checkpoint, and the
    message said to rerun the same command, which started over."""
    import csv
    import signal
    import time

    import torch

    data = tmp_path / "shards"
    write_shards(data, "synth", "train", _items(24), per_shard=6)
    argv = [sys.executable, "-m", "laion_audio", *_train_argv(corpus, tmp_path / "logs", "k", data=data)]
    log = tmp_path / "logs" / "k" / "train_log.csv"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:   # header + steps 1-2
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume latest" in err.strip().splitlines()[-1]
    with open(log) as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    saved = torch.load(tmp_path / "logs" / "k" / "checkpoints" / "latest.pt", weights_only=False)["step"]
    assert saved == logged[-1] and 2 <= saved < 6
    resumed = subprocess.run(argv + ["--resume", "latest"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(log) as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 7))


@pytest.mark.parametrize("device", ["banana", "cuda:99"] + ([] if __import__("torch").cuda.is_available() else ["cuda"]))
def test_a_device_this_machine_lacks_is_one_line(corpus, trained, tmp_path, capsys, device):
    _, ckpt, _ = trained
    rc, err = _run(_train_argv(corpus, tmp_path, "r", "--device", device), capsys)
    _one_line_usage_error(rc, err)
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(corpus / "shards"),
                    "--device", device], capsys)
    _one_line_usage_error(rc, err)


def test_five_caption_always_on_data_without_five_captions_each_is_one_line(corpus, trained, tmp_path, capsys):
    """4 + 6 captions make 10 = 5 x 2: the 5-caption protocol paired captions with the wrong
    audio and printed metrics (other counts were a traceback)."""
    _, ckpt, _ = trained
    items = _items(2)
    items[0][2]["text"] = [f"first {i}" for i in range(4)]
    items[1][2]["text"] = [f"second {i}" for i in range(6)]
    write_shards(tmp_path / "shards", "odd", "test", items)
    for data in (tmp_path / "shards", corpus / "shards"):
        rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(data), "--splits", "test",
                        "--five-caption", "always"], capsys)
        _one_line_usage_error(rc, err)
        assert "--five-caption" in err


def test_zero_shot_needs_two_distinct_classes(corpus, trained, tmp_path, capsys):
    """One class scores 100 % whatever the model; 'dog_bark' and 'dog bark' are one label."""
    _, ckpt, _ = trained
    one = _labels_file(tmp_path, "one.json", b'["humming tone"]')
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "zeroshot", "--data-root",
                    str(corpus / "shards"), "--class-labels", one], capsys)
    _one_line_usage_error(rc, err)
    for name in ("dog_bark", "dog bark"):
        (tmp_path / "classes" / name).mkdir(parents=True)
        (tmp_path / "classes" / name / "a.flac").write_bytes(b"x")
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--task", "zeroshot", "--class-folder",
                    str(tmp_path / "classes")], capsys)
    _one_line_usage_error(rc, err)


def test_evaluate_a_typo_in_datasets_is_one_line(corpus, trained, capsys):
    """--datasets synth snyth evaluated synth alone, exit 0."""
    _, ckpt, _ = trained
    rc, err = _run(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(corpus / "shards"),
                    "--datasets", "synth", "snyth"], capsys)
    _one_line_usage_error(rc, err)
    assert "snyth" in err


def test_a_split_folder_given_as_data_root_gets_the_right_folder_named(corpus, tmp_path, capsys):
    split = corpus / "shards" / "synth" / "train"
    rc, err = _run(_train_argv(corpus, tmp_path, "r", data=split), capsys)
    _one_line_usage_error(rc, err)
    assert f"--data-root {(corpus / 'shards').resolve()}" in err


@pytest.mark.slow
def test_resume_after_a_kill_between_the_checkpoint_and_its_validation_validates_that_epoch(
        corpus, tmp_path, capsys):
    """The epoch's checkpoints are written before its validation: a kill in between left
    results.jsonl without that epoch's row for good (the resumed run went on to the next epoch).
    The state is what such a kill leaves: both checkpoints, the row missing."""
    data = tmp_path / "shards"
    write_shards(data, "synth", "train", _items(4), per_shard=4)
    write_shards(data, "synth", "test", _items(4), per_shard=4)
    argv = _train_argv(corpus, tmp_path / "logs", "r", data=data)
    argv[argv.index("--val-frequency") + 1] = "1"
    rc, err = _run(argv, capsys)
    assert rc == 0, err
    results = tmp_path / "logs" / "r" / "results.jsonl"
    assert [json.loads(x)["epoch"] for x in results.read_text().splitlines()] == [1]
    results.unlink()                               # the kill came before the validation
    argv[argv.index("--epochs") + 1] = "2"
    rc, err = _run(argv + ["--resume", "latest"], capsys)
    assert rc == 0, err
    assert [json.loads(x)["epoch"] for x in results.read_text().splitlines()] == [1, 2]
    # resuming a run whose rows are all there validates nothing twice
    argv[argv.index("--epochs") + 1] = "3"
    rc, err = _run(argv + ["--resume", "latest"], capsys)
    assert rc == 0, err
    assert [json.loads(x)["epoch"] for x in results.read_text().splitlines()] == [1, 2, 3]


def test_validating_on_a_training_split_is_said(corpus, tmp_path, capsys, caplog):
    """--val-splits train was taken silently: its retrieval figures measure fitting."""
    import logging

    data = tmp_path / "shards"
    write_shards(data, "synth", "train", _items(4), per_shard=4)
    argv = _train_argv(corpus, tmp_path / "logs", "r", "--val-splits", "train", data=data)
    argv[argv.index("--val-frequency") + 1] = "1"
    with caplog.at_level(logging.WARNING):
        rc, err = _run(argv, capsys)
    assert rc == 0, err
    assert any("validating on training split(s) train" in r.getMessage() for r in caplog.records)
