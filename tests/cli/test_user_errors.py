"""The mistakes a new user makes (issue 11): each is one line on stderr with the documented exit
code (docs/cli.md, "Exit codes"), never a traceback, and leaves no work folder behind.

The table runs ``cli.main`` in this process (fast: one import of everything); a few cases also
run as ``python -m laion_audio`` to see exactly what a terminal shows."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from laion_audio.cli import main

W = "WORK"          # the --out of every case, under tmp_path; it must not exist afterwards


def _setup_bbc_csv(tmp: Path, content: bytes) -> str:
    p = tmp / "bbc.csv"
    p.write_bytes(content)
    return str(p)


def _ledger(tmp: Path) -> str:
    from laion_audio.ledger import Ledger

    with Ledger(tmp / "L"):
        pass
    return str(tmp / "L")


def _model_without_config(tmp: Path) -> str:
    (tmp / "m").mkdir()
    (tmp / "m" / "weights.bin").write_bytes(b"x")
    return str(tmp / "m")


def _segments_csv(tmp: Path, name: str = "seg.csv") -> str:
    """A two-row AudioSet segments CSV (real YouTube ids and MIDs of eval_segments.csv)."""
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("# Segments csv\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n"
                 '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"\n'
                 '--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"\n')
    return str(p)


def _other_segments_csv(folder: Path) -> str:
    """seg.csv in another folder, with other rows."""
    p = Path(_segments_csv(folder))
    p.write_text(p.read_text().replace("--BfvyPmVMo, 20.000", "--BfvyPmVMo, 40.000"))
    return str(p)


def _corpus(tmp: Path, name: str, content: bytes) -> str:
    p = tmp / name
    p.write_bytes(content)
    return str(p)


def _text_corpus(tmp: Path) -> str:
    return "text:" + _corpus(tmp, "captions.txt", b"a dog barks\na bell rings twice\n")


def _model_folder(tmp: Path) -> str:
    """A folder that already holds a model (a config and weights)."""
    (tmp / "old").mkdir()
    (tmp / "old" / "config.json").write_text("{}")
    (tmp / "old" / "model.safetensors").write_bytes(b"weights")
    return str(tmp / "old")


def _model_config_only(tmp: Path) -> str:
    """Passes the up-front model check (a config.json); the checks below fail before loading."""
    (tmp / "cm").mkdir()
    (tmp / "cm" / "config.json").write_text("{}")
    return str(tmp / "cm")


def _model_with_report(tmp: Path, report: str, name: str = "rm") -> str:
    """A model folder (config only: the gate reads the report before any weights load) whose
    caption_quality.json was edited by hand into another shape."""
    (tmp / name).mkdir()
    (tmp / name / "config.json").write_text("{}")
    (tmp / name / "caption_quality.json").write_text(report)
    return str(tmp / name)


def _labels(tmp: Path, csv_bytes: bytes, ontology: bytes | None = None) -> str:
    """An --audioset-labels folder whose class list (or ontology) is damaged."""
    (tmp / "labels").mkdir()
    (tmp / "labels" / "class_labels_indices.csv").write_bytes(csv_bytes)
    if ontology is not None:
        (tmp / "labels" / "ontology.json").write_bytes(ontology)
    return str(tmp / "labels")


_CLASS_LIST = b"index,mid,display_name\n0,/m/068hy,Domestic animals\n"


def _asc(tmp: Path, *extra: str, model: str = "template") -> list[str]:
    """audioset-captions on a good two-row CSV, with the option under test."""
    return ["audioset-captions", _segments_csv(tmp), "--model", model, "--out", str(tmp / "o.parquet"),
            *extra]


def _model_truncated_weights(tmp: Path) -> str:
    """A model folder whose safetensors file was cut short (a copy interrupted)."""
    import struct

    (tmp / "tw").mkdir()
    (tmp / "tw" / "config.json").write_text("{}")
    header = b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    (tmp / "tw" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)
    return str(tmp / "tw")


def _tc(tmp: Path, *extra: str) -> list[str]:
    """train-captioner on a good text corpus, with the option under test."""
    return ["train-captioner", "--corpus", _text_corpus(tmp), *extra]


def _cq_report(tmp: Path, *extra: str) -> list[str]:
    """caption-quality --write-report on a model folder the up-front check accepts."""
    return ["caption-quality", "--model", _model_config_only(tmp), "--write-report", *extra]


def _new_folder(path: Path) -> str:
    path.mkdir()
    return str(path)


#: (id, argv builder taking tmp_path, exit code, words the one line must contain)
CASES = [
    ("local-input-missing", lambda t: ["build", "--source", "local", "--input", "/nope"], 2, "/nope"),
    ("unknown-source", lambda t: ["build", "--source", "nosuch"], 2, "unknown source"),
    ("refresh-unknown-source", lambda t: ["refresh", "--source", "nosuch"], 2, "unknown source"),
    ("refresh-old-positional", lambda t: ["refresh", "nosuch"], 2, "unknown source"),
    ("local-without-input", lambda t: ["build", "--source", "local"], 2, "--input"),
    ("bbc-csv-missing-columns",
     lambda t: ["build", "--source", "bbc", "--bbc-csv", _setup_bbc_csv(t, b"id,text\n1,x\n")], 2,
     "location"),
    ("bbc-csv-not-utf8",
     lambda t: ["build", "--source", "bbc", "--bbc-csv",
                _setup_bbc_csv(t, b"location,description,secs,category\nx.wav,caf\xe9,1,A\n")], 2,
     "UTF-8"),
    ("freesound-without-key", lambda t: ["build", "--source", "freesound"], 2, "FREESOUND_API_KEY"),
    ("audioset-csv-unreachable",
     lambda t: ["build", "--source", "audioset", "--audioset-csv", "http://127.0.0.1:9/x.csv"], 3,
     "could not be downloaded"),
    ("audioset-csv-missing", lambda t: ["build", "--source", "audioset", "--audioset-csv", "/nope.csv"],
     2, "/nope.csv"),
    ("workers-zero", lambda t: ["build", "--source", "local", "--input", str(t), "--workers", "0"], 2,
     "--workers"),
    ("unknown-stage", lambda t: ["build", "--source", "local", "--input", str(t), "--stages",
                                 "crawl,teleport"], 2, "teleport"),
    ("caption-model-missing",
     lambda t: ["build", "--source", "local", "--input", str(t), "--caption-model", "/nope"], 2, "/nope"),
    ("caption-model-not-a-model",
     lambda t: ["build", "--source", "local", "--input", str(t), "--caption-model",
                _model_without_config(t)], 2, "config.json"),
    ("eval-audio-not-pairs",
     lambda t: ["build", "--source", "local", "--input", str(t), "--eval-audio", "clotho"], 2, "NAME=DIR"),
    ("shard-bytes-not-a-size",
     lambda t: ["build", "--source", "local", "--input", str(t), "--shard-bytes", "lots"], 2, "byte size"),
    ("transcode-input-missing", lambda t: ["transcode", "--input", "/nope"], 2, "/nope"),
    ("transcode-old-positional", lambda t: ["transcode", "/nope", str(t / W)], 2, "/nope"),
    ("train-unknown-amodel", lambda t: ["train", "--amodel", "NOPE", "--data-root", str(t)], 2, "NOPE"),
    ("train-data-root-missing", lambda t: ["train", "--data-root", "/nope"], 2, "/nope"),
    ("evaluate-checkpoint-missing", lambda t: ["evaluate", "--checkpoint", "nope.pt"], 2, "nope.pt"),
    ("caption-model-missing-cmd", lambda t: ["caption", "--ledger", _ledger(t), "--model", "/nope"], 2,
     "/nope"),
    ("caption-no-ledger", lambda t: ["caption"], 2, "ledger"),
    ("filter-no-ledger", lambda t: ["filter"], 2, "ledger"),
    ("shard-no-ledger", lambda t: ["shard"], 2, "ledger"),
    ("verify-no-shards", lambda t: ["verify"], 2, "no shards"),
    ("report-no-ledger", lambda t: ["report"], 2, "no ledger"),
    ("evalsets-only-unknown", lambda t: ["evalsets", "fetch", "--only", "nosuch", "--evalsets-cache",
                                         str(t / "cache")], 2, "nosuch"),
    ("shard-report-is-a-folder", lambda t: ["shard", "--ledger", _ledger(t), "--report", str(t)], 2,
     "is a folder"),
    ("filter-report-unwritable", lambda t: ["filter", "--ledger", _ledger(t), "--report",
                                            "/proc/no/such/report.json"], 2, "cannot write"),
    ("verify-json-unwritable", lambda t: ["verify", "--shards-to", str(t), "--json", "/proc/v.json"], 2,
     "cannot write"),
    ("audioset-captions-out-unwritable",
     lambda t: ["audioset-captions", _segments_csv(t), "--model", "template", "--out", "/proc/x.parquet"],
     2, "cannot write"),
    ("audioset-captions-out-is-a-folder",
     lambda t: ["audioset-captions", _segments_csv(t), "--model", "template", "--out",
                _new_folder(t / "d.parquet")], 2, "is a folder"),
    ("audioset-captions-csv-is-a-folder",
     lambda t: ["audioset-captions", str(t), "--model", "template", "--out", str(t / "o.parquet")], 2,
     "is not a file"),
    ("audioset-captions-csv-given-twice",
     lambda t: ["audioset-captions", _segments_csv(t), _segments_csv(t), "--model", "template", "--out",
                str(t / "o.parquet")], 2, "given twice"),
    ("audioset-captions-csv-copy-given-twice",
     lambda t: ["audioset-captions", _segments_csv(t), _segments_csv(t, "copy.csv"), "--model", "template",
                "--out", str(t / "o.parquet")], 2, "same rows"),
    ("audioset-captions-csv-same-name",
     lambda t: ["audioset-captions", _segments_csv(t, "a/seg.csv"), _other_segments_csv(t / "b"),
                "--model", "template", "--out", str(t / "o.parquet")], 2, "same file name"),
    ("audioset-captions-out-is-an-input",
     lambda t: ["audioset-captions", _segments_csv(t, "in.parquet"), "--model", "template", "--out",
                str(t / "in.parquet")], 2, "is also an input"),
    ("train-captioner-max-minutes-zero",
     lambda t: _tc(t, "--max-minutes", "0"), 2, "--max-minutes"),
    ("train-captioner-max-minutes-negative",
     lambda t: _tc(t, "--max-minutes", "-1"), 2, "--max-minutes"),
    ("train-captioner-max-steps-zero",
     lambda t: _tc(t, "--max-steps", "0"), 2, "--max-steps"),
    ("train-captioner-corpus-empty-csv",
     lambda t: ["train-captioner", "--corpus", "audiocaps:" + _corpus(t, "e.csv", b"")], 2, "caption"),
    ("train-captioner-corpus-no-caption-column",
     lambda t: ["train-captioner", "--corpus", "audiocaps:" + _corpus(t, "e.csv", b"a,b\n1,2\n")], 2,
     "no 'caption' column"),
    ("train-captioner-corpus-not-utf8",
     lambda t: ["train-captioner", "--corpus", "audiocaps:" + _corpus(t, "e.csv", b"caption\ncaf\xe9\n")],
     2, "UTF-8"),
    ("train-captioner-corpus-is-a-folder",
     lambda t: ["train-captioner", "--corpus", f"audiocaps:{t}"], 2, "is a folder"),
    ("train-captioner-corpus-bad-json",
     lambda t: ["train-captioner", "--corpus", "soundbible:" + _corpus(t, "sb.json", b'{"data": [')], 2,
     "sb.json"),
    ("train-captioner-out-holds-a-model",
     lambda t: _tc(t, "--out", _model_folder(t)), 2,
     "already holds"),
    ("caption-quality-segments-missing",
     lambda t: _cq_report(t, "--segments", "/nope.csv"), 2, "/nope.csv"),
    ("caption-quality-segments-not-utf8",
     lambda t: _cq_report(t, "--segments",
                          _corpus(t, "s.csv", b'# a\n# b\n# c\nid, 0, 10, "/m/09x0r"\n\xff\n')), 2, "UTF-8"),
    ("train-captioner-report-segments-missing",
     lambda t: _tc(t, "--report-segments", "/nope.csv"), 2,
     "/nope.csv"),
    ("caption-quality-keywords-from-no-captions",
     lambda t: ["caption-quality", "--model", _model_config_only(t), "--keywords-from",
                "audiocaps:" + _corpus(t, "k.csv", b"youtube_id,caption\nx,\ny,  \n")], 2, "no captions"),
    ("caption-quality-ledger-without-model-captions",
     lambda t: ["caption-quality", "--ledger", _ledger(t)], 1, "no model captions"),
    ("audioset-captions-report-decodings-not-a-list",
     lambda t: _asc(t, model=_model_with_report(t, '{"model_sha256": "x", "decodings": "x"}')), 2,
     "caption_quality.json"),
    ("audioset-captions-report-entry-not-a-dict",
     lambda t: _asc(t, model=_model_with_report(t, '{"model_sha256": "x", "decodings": [1, 2]}')), 2,
     "caption_quality.json"),
    ("audioset-captions-report-no-generation",
     lambda t: _asc(t, model=_model_with_report(
         t, '{"model_sha256": "x", "decodings": [{"passes": true}]}')), 2,
     "caption_quality.json"),
    ("audioset-captions-report-a-list",
     lambda t: _asc(t, model=_model_with_report(t, '[1, 2, 3]')), 2,
     "caption_quality.json"),
    ("audioset-captions-second-csv-not-utf8",
     lambda t: ["audioset-captions", _segments_csv(t), _corpus(t, "latin1.csv", b"# a\n# b\n# c\n"
                b'caf\xe9, 0.000, 10.000, "/m/03l9g"\n'), "--model", "template", "--no-progress",
                "--out", str(t / "o.parquet")], 2, "latin1.csv"),
    ("audioset-captions-labels-not-utf8",
     lambda t: _asc(t, "--audioset-labels", _labels(t, b"index,mid,display_name\n0,/m/068hy,Sp\xe9ech\n")), 2,
     "class_labels_indices.csv"),
    ("audioset-captions-labels-no-columns",
     lambda t: _asc(t, "--audioset-labels", _labels(t, b"a,b\n1,2\n")), 2, "class_labels_indices.csv"),
    ("audioset-captions-ontology-damaged",
     lambda t: _asc(t, "--audioset-labels", _labels(t, _CLASS_LIST, b'[{"id": 1')), 2, "ontology.json"),
    ("caption-labels-no-columns",
     lambda t: ["caption", "--ledger", _ledger(t), "--audioset-labels", _labels(t, b"a,b\n1,2\n")], 2,
     "class_labels_indices.csv"),
    ("audioset-captions-cache-is-the-out",
     lambda t: _asc(t, "--cache", str(t / "o.parquet")), 2, "--cache"),
    ("audioset-captions-cache-is-an-input",
     lambda t: _asc(t, "--cache", str(t / "seg.csv")), 2, "--cache"),
    ("train-captioner-lm-corpus-missing",
     lambda t: _tc(t, "--lm-corpus", "audiocaps:/nope.csv"), 2,
     "/nope.csv"),
    ("train-captioner-pretrained-unloadable",
     lambda t: _tc(t, "--pretrained", _model_config_only(t)), 2,
     "cannot load"),
    ("caption-quality-references-not-utf8",
     lambda t: _cq_report(t, "--segments", _segments_csv(t), "--references",
                          _corpus(t, "refs.csv", b"caption\ncaf\xe9\n")), 2,
     "refs.csv"),
    ("train-captioner-out-unwritable",
     lambda t: _tc(t, "--out", "/proc/model"), 2, "cannot write"),
    ("caption-model-truncated-weights",
     lambda t: ["build", "--source", "local", "--input", str(t), "--caption-model",
                _model_truncated_weights(t)], 2, "model.safetensors"),
    ("caption-status-typo",
     lambda t: ["caption", "--ledger", _ledger(t), "--status", "transcodd"], 2, "transcodd"),
    ("caption-source-unknown",
     lambda t: ["caption", "--ledger", _ledger(t), "--source", "nosuch"], 2, "unknown source"),
    ("train-captioner-corpus-missing",
     lambda t: ["train-captioner", "--corpus", "audiocaps:/nope.csv", "--out", str(t / W)], 2, "/nope.csv"),
    ("caption-min-duration-negative",
     lambda t: ["caption", "--ledger", _ledger(t), "--min-duration", "-5"], 2, "must be 0 or more"),
]


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:     # argparse's own usage errors
        return exc.code


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line(case, tmp_path, monkeypatch, capsys):
    name, argv, code, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FREESOUND_API_KEY", raising=False)
    monkeypatch.setenv("LAION_AUDIO_CACHE", str(tmp_path / "cache"))
    args = argv(tmp_path)
    if "--out" not in args and args[0] not in ("evaluate", "evalsets", "train", "caption-quality"):
        args += ["--out", str(tmp_path / W)]
    got = run_main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert words in lines[0], err
    assert not (tmp_path / W).exists()


def test_lock_held_is_one_line(tmp_path, capsys):
    """A second build on a work folder another process writes: exit 2, the folder untouched."""
    from laion_audio.ledger import Ledger

    (tmp_path / "in").mkdir()
    with Ledger(tmp_path / W / "ledger"):
        got = run_main(["build", "--source", "local", "--input", str(tmp_path / "in"),
                        "--out", str(tmp_path / W), "--inline", "--skip-eval-filter"])
    err = capsys.readouterr().err
    assert got == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"laion-audio build: error: another laion-audio process is writing {tmp_path / W / 'ledger'}"]
    assert (tmp_path / W / "ledger").is_dir()


def test_disk_full_while_sharding(tmp_path, monkeypatch, capsys):
    """ENOSPC from the shard writer: exit 3 (rerun resumes), one line, the ledger kept."""
    import dataclasses

    from pipelines.stages import BY_NAME

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "shards" / "x.tar"))

    # the shard command runs the stage table's shard entry (the function object it holds)
    monkeypatch.setitem(BY_NAME, "shard", dataclasses.replace(BY_NAME["shard"], fn=full))
    got = run_main(["shard", "--ledger", _ledger(tmp_path), "--shards-to", str(tmp_path / "shards")])
    err = capsys.readouterr().err
    assert got == 3 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk full" in lines[0] and "rerun" in lines[0]
    assert (tmp_path / "L").is_dir()


@pytest.mark.parametrize("command, words", [("shard", "rerun the same command to resume"),
                                             ("train-captioner", "training does not resume")])
def test_ctrl_c_says_whether_a_rerun_resumes(command, words, tmp_path, monkeypatch, capsys):
    """Ctrl-C: exit 130 and one line; a command whose rerun starts over (training) says so
    instead of promising a resume."""
    import laion_audio.commands.shard as shard_cmd
    import laion_audio.commands.train_captioner as tc_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shard_cmd if command == "shard" else tc_cmd, "run", interrupted)
    argv = (["shard", "--ledger", _ledger(tmp_path), "--shards-to", str(tmp_path / "shards")]
            if command == "shard" else
            ["train-captioner", "--corpus", f"text:{_corpus(tmp_path, 'c.txt', b'a dog barks')}",
             "--out", str(tmp_path / "model"), "--max-minutes", "1"])
    got = run_main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == 130 and len(lines) == 1 and words in lines[0], lines


def test_a_bug_still_shows_its_traceback(tmp_path, monkeypatch):
    """Only user mistakes are one line: an unexpected exception is ours and keeps its traceback."""
    import dataclasses

    from pipelines.stages import BY_NAME

    monkeypatch.setitem(BY_NAME, "shard", dataclasses.replace(BY_NAME["shard"], fn=lambda *a, **k: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        main(["shard", "--ledger", _ledger(tmp_path), "--shards-to", str(tmp_path / "shards")])


@pytest.mark.parametrize("argv, code", [
    (["build", "--source", "local", "--input", "/nope", "--out", "W"], 2),
    (["build", "--workers", "0"], 2),
    (["evaluate", "--checkpoint", "nope.pt"], 2),
])
def test_terminal_sees_one_line(argv, code, tmp_path):
    done = subprocess.run([sys.executable, "-m", "laion_audio", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "W").exists()


# ---------------------------------------------------------------- silent skips (issue 11, item 4)
def _bad_captions_file(tmp: Path) -> str:
    p = tmp / "caps.csv"
    p.write_text("name,words\nsound000.wav,a dog barks\n")
    return str(p)


CASES_SKIPS = [
    ("captions-file-columns-match-nothing",
     lambda t: ["build", "--source", "local", "--input", str(t), "--captions-file", _bad_captions_file(t)],
     2, "no row names a file"),
]


@pytest.mark.parametrize("case", CASES_SKIPS, ids=[c[0] for c in CASES_SKIPS])
def test_skip_mistake_is_one_line(case, tmp_path, monkeypatch, capsys):
    test_mistake_is_one_line(case, tmp_path, monkeypatch, capsys)


def _cli(args, tmp_path, **env):
    import os

    return subprocess.run([sys.executable, "-m", "laion_audio", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"sound{i:03d}.wav").write_bytes(b"RIFF")
    return src


def test_no_eval_sets_and_none_fetchable_stops_before_work(tmp_path):
    """The eval filter never runs silently empty: nothing fetched and nothing fetchable is one
    line (exit 3) that names --skip-eval-filter, and no work folder."""
    (tmp_path / "empty-mirror").mkdir()
    done = _cli(["build", "--source", "local", "--input", str(_folder(tmp_path)), "--out", "W",
                 "--inline"], tmp_path, LAION_AUDIO_EVALSETS_CACHE=str(tmp_path / "cache"),
                LAION_AUDIO_EVALSETS_MIRROR=str(tmp_path / "empty-mirror"))
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--skip-eval-filter" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "W").exists()


def test_skip_eval_filter_and_bare_stem_captions_are_said(tmp_path):
    """--skip-eval-filter is recorded in the stats and printed; captions that are only a file
    name ("sound000") are a counted warning."""
    import json

    done = _cli(["build", "--source", "local", "--input", str(_folder(tmp_path)), "--out", "W",
                 "--stages", "crawl,filter", "--skip-eval-filter", "--inline"], tmp_path,
                LAION_AUDIO_EVALSETS_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "W" / "stats" / "summary.json").read_text())
    assert summary["eval_filter"].startswith("skipped (--skip-eval-filter)")
    assert summary["warnings"] == {"caption_is_file_name": 3}
    assert "eval filter: skipped" in done.stdout and "caption_is_file_name=3" in done.stdout
    report = _cli(["report", "--out", "W"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Eval-set filter:</b> skipped (--skip-eval-filter)" in (
        tmp_path / "W" / "report" / "index.html").read_text()


@pytest.mark.needs_shared
def test_build_fetches_missing_eval_sets(shared_data, tmp_path):
    import json

    done = _cli(["build", "--source", "local", "--input", str(_folder(tmp_path)), "--out", "W",
                 "--stages", "crawl,filter", "--inline"], tmp_path,
                LAION_AUDIO_EVALSETS_CACHE=str(tmp_path / "cache"),
                LAION_AUDIO_EVALSETS_MIRROR=str(shared_data))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "W" / "stats" / "summary.json").read_text())
    assert "eval-set files fetched now" in summary["eval_filter"]
    assert (tmp_path / "cache" / "fetched.json").is_file()
