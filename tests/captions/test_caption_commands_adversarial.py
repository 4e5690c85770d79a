"""Inputs the caption commands' author did not imagine (an adversarial audit): each user mistake
is one line and exit 2, each bad row a counted failure, never a wrong row or a traceback."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from laion_audio.captions.cache import CaptionCache
from laion_audio.errors import UserError
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "laion_audio", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def _one_line(res, code=2) -> str:
    """The one line a mistake prints (a gate warning from --force-caption-model may precede it)."""
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert res.returncode == code, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("content", [b"not a database at all\n", b"SQLite format 3\x00" + b"\x00" * 90])
def test_cache_that_is_not_a_caption_cache_is_a_user_error(tmp_path, content):
    """A --cache pointing at a damaged or foreign file: a UserError naming it, not sqlite3's
    DatabaseError from deep inside a run."""
    path = tmp_path / "c.sqlite"
    path.write_bytes(content)
    with pytest.raises(UserError, match="c.sqlite"):
        CaptionCache(path)
    with pytest.raises(UserError, match="is a folder"):
        CaptionCache(tmp_path)


def test_truncated_cache_is_a_user_error(tmp_path):
    path = tmp_path / "c.sqlite"
    with CaptionCache(path) as cache:
        cache.put_many((f"k{i}", ["dog", str(i)], "a dog barks " * 20) for i in range(2000))
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(UserError, match="c.sqlite"):
        with CaptionCache(path) as cache:
            cache.get_many(f"k{i}" for i in range(2000))


def _segments(shared_data, tmp_path, rows: int, name="segments.csv") -> Path:
    lines = (shared_data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    out = tmp_path / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines[:3 + rows]))
    return out


@pytest.fixture
def truncated_weights(tiny, tmp_path) -> Path:
    """The session's tiny captioner with its weights file cut short (a copy interrupted)."""
    model = tmp_path / "truncated"
    shutil.copytree(tiny[0], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return model


@pytest.mark.needs_shared
def test_model_with_truncated_weights_is_one_line(truncated_weights, shared_data, tmp_path):
    """Before: audioset-captions died with SafetensorError's traceback; caption failed every
    record as internal_error and still exited 0."""
    res = _cli("audioset-captions", _segments(shared_data, tmp_path, 5), "--model", truncated_weights,
               "--force-caption-model", "--out", tmp_path / "o.parquet", "--no-progress",
               "--device", "cpu", "--audioset-labels", shared_data / "audioset")
    assert "truncated" in _one_line(res) and not (tmp_path / "o.parquet").exists()
    ledger_dir = tmp_path / "work" / "ledger"
    with Ledger(ledger_dir) as ledger:
        ledger.write([Record(source="freesound", source_id=str(i), tags=["dog", "bark"],
                             audio_duration=5.0, status=Status.TRANSCODED) for i in range(3)])
    res = _cli("caption", "--ledger", ledger_dir, "--model", truncated_weights,
               "--force-caption-model", "--device", "cpu")
    assert "truncated" in _one_line(res)
    with Ledger(ledger_dir, lock=False) as ledger:
        assert [r.status for r in ledger.records()] == [Status.TRANSCODED] * 3


def test_train_captioner_report_segments_without_label_sets_is_one_line(tmp_path):
    """Report segments that give no label set (header only): the trained model stays, the run
    says in one line that it has no report and exits 1; before, GateError's traceback."""
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a dog barks\na bell rings twice\nrain falls on a roof\nwind blows hard\n" * 5)
    segments = tmp_path / "segments.csv"
    segments.write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n")
    res = _cli("train-captioner", "--corpus", f"text:{corpus}", "--out", tmp_path / "m",
               "--max-steps", "2", "--d-model", "16", "--layers", "1", "--vocab-size", "120",
               "--batch-size", "4", "--threads", "1", "--no-fusion-lm",
               "--report-segments", segments, "--lm-corpus", f"text:{corpus}", "--report-n", "5")
    lines = [line for line in res.stderr.splitlines() if line.startswith("train-captioner:")]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "segments.csv: no label sets" in lines[-1] and "no quality report" in lines[-1]
    assert (tmp_path / "m" / "config.json").is_file()
    assert not (tmp_path / "m" / "caption_quality.json").exists()


def test_caption_provenance_names_the_model_folder_not_its_path(captioner, tiny, tmp_path):
    """The provenance goes into the ledger and every shard's JSON: it named the model by the
    path it was loaded from (/home/<user>/...), now by its folder name and weights hash."""
    from laion_audio.captions.stage import CaptionOptions, CaptionStats, caption_batch

    recs = [Record(source="freesound", source_id="1", tags=["dog", "bark"], audio_duration=5.0,
                   status=Status.TRANSCODED)]
    with CaptionCache(tmp_path / "c.sqlite") as cache:
        out = caption_batch(recs, captioner, CaptionOptions(keyword_fallback=False), cache=cache,
                            stats=CaptionStats())
    prov = out[0].caption_provenance
    assert prov["rule"] == "k2c" and prov["model"] == Path(tiny[0]).name
    assert str(Path(tiny[0]).parent) not in json.dumps(prov)


@pytest.mark.needs_shared
def test_bad_rows_stay_counted_after_a_kill_9_resume(shared_data, tmp_path):
    """A run killed after its first parts: the rerun reuses them, and the summary still counts
    the bad rows those parts skipped (before, unknown_mids and no_labels fell to 0)."""
    import os
    import signal
    import time

    import pyarrow.parquet as pq

    lines = (shared_data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    body = [f"r{i}_{line}" for i in range(3) for line in lines[3:]]
    csv_path = tmp_path / "segments.csv"
    csv_path.write_text("".join(lines[:3]) + 'unknown, 0.000, 10.000, "/m/not_a_mid"\n'
                        'nolabels, 0.000, 10.000, ""\nbroken row\n' + "".join(body))
    args = ["audioset-captions", csv_path, "--model", "template", "--chunk-rows", "2048",
            "--audioset-labels", shared_data / "audioset", "--no-progress"]
    full = _cli(*args, "--out", tmp_path / "full.parquet")
    assert full.returncode == 0, full.stderr[-2000:]
    parts = tmp_path / ".o.parquet.parts"
    proc = subprocess.Popen([sys.executable, "-m", "laion_audio", *map(str, args), "--out",
                             str(tmp_path / "o.parquet")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "o.parquet").exists()
    res = _cli(*args, "--out", tmp_path / "o.parquet")
    assert res.returncode == 0, res.stderr[-2000:]
    got, want = json.loads(res.stdout), json.loads(full.stdout)
    assert got["parts_reused"] >= 2
    for key in ("rows", "malformed_rows", "unknown_mids", "no_labels"):
        assert got[key] == want[key], key
    assert (want["malformed_rows"], want["unknown_mids"], want["no_labels"]) == (1, 1, 1)
    assert got["resumed_rows"] + got["captions"]["template"] == got["rows"]
    assert pq.read_table(tmp_path / "o.parquet").equals(pq.read_table(tmp_path / "full.parquet"))


@pytest.mark.needs_shared
def test_a_second_run_on_the_same_out_is_refused_not_mixed_in(shared_data, tmp_path):
    """Two runs on one --out with other CSVs: the second removed the first's parts folder and
    wrote its own parts into it, so the first published a file of both CSVs' rows under its
    own inputs (or one of them crashed). Now the second is one line, exit 2."""
    import time

    import pyarrow.parquet as pq

    lines = (shared_data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("".join(lines[:3]) + "".join(f"a{i}_{x}" for i in range(3) for x in lines[3:]))
    second.write_text("".join(lines[:403]))
    out = tmp_path / "o.parquet"
    common = ["--model", "template", "--out", out, "--chunk-rows", "2048",
              "--audioset-labels", shared_data / "audioset", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "laion_audio", "audioset-captions",
                             *map(str, [first, *common])], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    parts = tmp_path / ".o.parquet.parts"
    deadline = time.monotonic() + 120
    while not list(parts.glob("part-*.parquet")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    res = _cli("audioset-captions", second, *common)
    assert "another audioset-captions run" in _one_line(res)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    table = pq.read_table(out)
    assert table.num_rows == 3 * 20371 and set(table.column("csv").to_pylist()) == {"first.csv"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.parquet")]


@pytest.mark.needs_shared
def test_damaged_run_state_is_discarded_and_an_empty_run_leaves_nothing(shared_data, tmp_path):
    """A parts folder whose run.json is damaged was a JSONDecodeError traceback: its parts are
    now discarded like those of another run. A run that captions nothing (header-only CSV)
    exits 2 and no longer leaves its parts folder and lock behind."""
    import pyarrow.parquet as pq

    parts = tmp_path / ".o.parquet.parts"
    parts.mkdir()
    (parts / "run.json").write_text("{damaged")
    (parts / "part-000000.parquet").write_bytes(b"not parquet")
    csv_path = _segments(shared_data, tmp_path, 30)
    labels = ("--audioset-labels", shared_data / "audioset")
    res = _cli("audioset-captions", csv_path, "--model", "template", "--out", tmp_path / "o.parquet",
               *labels, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "discarding parts" in res.stderr and pq.read_table(tmp_path / "o.parquet").num_rows == 30
    header = _segments(shared_data, tmp_path, 0, "header.csv")
    res = _cli("audioset-captions", header, "--model", "template", "--out", tmp_path / "e.parquet",
               *labels, "--no-progress")
    assert "no segments captioned" in _one_line(res)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".e.parquet", "e.parquet"))]


@pytest.mark.needs_shared
def test_duplicate_segments_are_counted_not_written_twice(shared_data, tmp_path):
    """A segment (YouTube id, start) given twice, in one CSV or across two, was written twice;
    the build joins rows by that key, so one of two different label sets won silently. Now the
    first stands and the rest are counted as duplicate_segments; another start of the same
    video is another segment."""
    import pyarrow.parquet as pq

    first = _segments(shared_data, tmp_path, 5, "first.csv")
    rows = first.read_text().splitlines(keepends=True)
    second = tmp_path / "second.csv"
    second.write_text("".join(rows[:3]) + rows[3]                              # exact repeat
                      + rows[4].replace('"/m/03l9g"', '"/m/09x0r"')            # other labels
                      + rows[5].replace("0.000, 10.000", "100.000, 110.000"))  # another segment
    first.write_text("".join(rows) + rows[6])                                  # repeat in one CSV
    res = _cli("audioset-captions", first, second, "--model", "template", "--out", tmp_path / "o.parquet",
               "--audioset-labels", shared_data / "audioset", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["rows"] == 6 and summary["duplicate_segments"] == 3
    table = pq.read_table(tmp_path / "o.parquet").to_pylist()
    keys = [(r["ytid"], r["start"]) for r in table]
    assert len(set(keys)) == len(keys) == 6
    ytid_2 = rows[4].split(",")[0]
    assert [r["label_ids"] for r in table if r["ytid"] == ytid_2] == [["/m/03l9g"]]


def test_caption_says_when_the_ledger_keeps_captions_of_other_weights(tiny, tmp_path, capsys):
    """caption with model B on a ledger model A captioned (partly): B captions only what is
    left, and the ledger mixed both models' captions without a word. Now a line counts the
    records that keep captions of other weights."""
    from laion_audio.cli import main

    other = tmp_path / "other"
    shutil.copytree(tiny[0], other)
    cfg = other / "config.json"
    cfg.write_text(cfg.read_text().replace("}", ', "note": "other weights"}', 1))   # other sha256
    ledger_dir = tmp_path / "work" / "ledger"

    def add(ids):
        with Ledger(ledger_dir) as ledger:
            ledger.write([Record(source="freesound", source_id=str(i), tags=["dog", "bark"],
                                 audio_duration=5.0, status=Status.TRANSCODED) for i in ids])

    common = ["--ledger", str(ledger_dir), "--force-caption-model", "--device", "cpu",
              "--rerank", "--keyword-boost", "2"]
    add(range(3))
    assert main(["caption", "--model", str(tiny[0]), *common]) == 0
    capsys.readouterr()
    add(range(3, 5))
    assert main(["caption", "--model", str(other), *common]) == 0
    captured = capsys.readouterr()
    assert "2 in = 2 ok" in captured.out
    assert "3 records keep captions made with other weights" in captured.err
    # the hint is true: --status captioned recaptions them with these weights
    assert main(["caption", "--model", str(other), *common, "--status", "captioned"]) == 0
    captured = capsys.readouterr()
    assert "5 in = 5 ok" in captured.out and "other weights" not in captured.err


def test_caption_model_template_is_the_template(tmp_path):
    """``caption --model template`` (audioset-captions' spelling) captions with the template;
    before, it was looked up as a hub id and refused with a message about the HF cache."""
    ledger_dir = tmp_path / "work" / "ledger"
    with Ledger(ledger_dir) as ledger:
        ledger.write([Record(source="freesound", source_id=str(i), tags=["dog", "bark"],
                             audio_duration=5.0, status=Status.TRANSCODED) for i in range(3)])
    res = _cli("caption", "--ledger", ledger_dir, "--model", "template")
    assert res.returncode == 0, res.stderr[-2000:]
    with Ledger(ledger_dir, lock=False) as ledger:
        recs = list(ledger.records())
    assert [r.status for r in recs] == [Status.CAPTIONED] * 3
    assert all(r.texts and "dog" in r.texts[-1].lower() for r in recs), [r.texts for r in recs]


@pytest.mark.parametrize("labels", [None, "class_list_only", "-1"])
def test_rare_labels_without_an_ontology_is_one_line(tmp_path, shared_data, labels):
    """--rare-labels takes its siblings from ontology.json: without --audioset-labels, or with a
    folder that has only the class list, it would add nothing; a negative count is a typo."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("a dog barks\n" * 50)
    args = ["train-captioner", "--corpus", f"text:{corpus}", "--out", tmp_path / "m",
            "--max-steps", "1", "--no-report"]
    if labels == "class_list_only":
        folder = tmp_path / "labels"
        folder.mkdir()
        shutil.copy(shared_data / "audioset/class_labels_indices.csv", folder)
        args += ["--audioset-labels", folder, "--rare-labels", "5"]
    elif labels == "-1":
        args += ["--audioset-labels", shared_data / "audioset", "--rare-labels", "-1"]
    else:
        args += ["--rare-labels", "5"]
    line = _one_line(_cli(*args))
    assert ("ontology.json" in line) if labels != "-1" else ("0 or more" in line)
    assert not (tmp_path / "m" / "model.safetensors").exists()
