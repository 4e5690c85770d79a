"""``laion-audio audioset-captions`` on real AudioSet CSVs, its resume after kill -9, the
quality gate (caption, audioset-captions, build), and the build-side join of its rows."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_audio.captions import gate
from laion_audio.captions.k2c import Captioner, GenerationParams, model_fingerprint
from laion_audio.captions.keywords import read_segments
from laion_audio.captions.stage import AudioSetCaptionTable, CaptionOptions, CaptionStats, caption_batch
from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.needs_shared]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "laion_audio", *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subset(shared_data, tmp_path, rows: int, extra: list[str] = ()) -> Path:
    lines = (shared_data / "audioset/eval_segments.csv").read_text().splitlines(keepends=True)
    out = tmp_path / "segments.csv"
    out.write_text("".join(lines[:3 + rows]) + "".join(extra))
    return out


@pytest.mark.slow
def test_template_captions_for_every_real_eval_segment(shared_data, tmp_path):
    csv_path = shared_data / "audioset/eval_segments.csv"
    out = tmp_path / "eval.parquet"
    res = _cli("audioset-captions", csv_path, "--model", "template", "--out", out,
               "--audioset-labels", shared_data / "audioset", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    segs = list(read_segments(csv_path))
    assert summary["rows"] == len(segs) == 20371 and summary["captions"]["template"] == 20371
    t = pq.read_table(out)
    assert t.num_rows == 20371
    assert t.column("ytid").to_pylist() == [s.ytid for s in segs]
    assert t.column("label_ids").to_pylist() == [list(s.mids) for s in segs]
    texts = t.column("text").to_pylist()
    assert all(texts) and texts == t.column("text_template").to_pylist()
    assert texts[0] == "The sounds of Domestic animals, pets, Squeak, Dog and Animal"
    assert json.loads(t.column("provenance")[0].as_py())["rule"] == "template"
    assert not list(tmp_path.glob(".eval.parquet.parts"))           # parts cleaned up
    first = _sha(out)
    again = _cli("audioset-captions", csv_path, "--model", "template", "--out", out,
                 "--audioset-labels", shared_data / "audioset", "--no-progress")
    assert again.returncode == 0 and "up to date" in again.stderr and _sha(out) == first
    forced = _cli("audioset-captions", csv_path, "--model", "template", "--out", out,
                  "--audioset-labels", shared_data / "audioset", "--no-progress", "--force")
    assert forced.returncode == 0 and pq.read_table(out).equals(t)


def test_bad_rows_are_counted_and_mistakes_are_one_line(shared_data, tmp_path):
    csv_path = _subset(shared_data, tmp_path, 40, ["broken row without numbers\n",
                                                   'abcdefghijk, 0.000, 10.000, "/m/not_a_mid"\n'])
    out = tmp_path / "o.parquet"
    res = _cli("audioset-captions", csv_path, "--model", "template", "--out", out,
               "--audioset-labels", shared_data / "audioset", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)
    assert s["rows"] == 40 and s["malformed_rows"] == 1 and s["unknown_mids"] == 1
    assert "/m/not_a_mid" in res.stderr
    labels = ("--audioset-labels", shared_data / "audioset")
    for args, needle in [((tmp_path / "nope.csv", "--model", "template", "--out", out, *labels), "does not exist"),
                         ((csv_path, "--model", tmp_path / "nomodel", "--out", out, *labels), "not a model folder"),
                         ((csv_path, "--model", "template", "--out", tmp_path / "o.csv", *labels), ".parquet"),
                         ((csv_path, "--model", "template", "--out", out, "--audioset-labels", tmp_path),
                          "class_labels_indices.csv")]:
        bad = _cli("audioset-captions", *args, "--no-progress")
        assert bad.returncode == 2 and needle in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    binary = tmp_path / "binary.csv"
    binary.write_bytes(csv_path.read_bytes()[:400] + b"\xff\xfe\x00garbage, 1, 2, \"x\"\n")
    bad = _cli("audioset-captions", binary, "--model", "template", "--out", out, *labels, "--no-progress")
    assert bad.returncode == 2 and "unreadable segments CSV" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_model_run_resumes_after_kill_9(tiny, shared_data, tmp_path):
    """A run killed with SIGKILL mid-way keeps its finished parts; the rerun reuses them and the
    output equals an uninterrupted run's."""
    csv_path = _subset(shared_data, tmp_path, 200)
    out = tmp_path / "m.parquet"
    args = ["audioset-captions", csv_path, "--model", tiny[0], "--out", out, "--audioset-labels",
            shared_data / "audioset", "--force-caption-model", "--chunk-rows", "25", "--no-progress",
            "--no-keyword-fallback"]
    parts = tmp_path / ".m.parquet.parts"
    proc = subprocess.Popen([sys.executable, "-m", "laion_audio", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list(parts.glob("part-*.parquet")))
    assert not out.exists() and 3 <= done_before < 8
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)
    assert s["parts_reused"] == done_before and s["rows"] == 200
    resumed = pq.read_table(out)
    assert resumed.column("row").to_pylist() == list(range(1, 201))
    provs = [json.loads(p) for p in resumed.column("provenance").to_pylist()]
    assert all(p["rule"] == "k2c" and p["model_sha256"] == model_fingerprint(tiny[0]) for p in provs)
    assert all(p["generation"]["keyword_boost"] == 2.0 and p["generation"]["rerank_by_coverage"]
               for p in provs)
    # an uninterrupted run (the cache makes it cheap) writes the same rows
    fresh = tmp_path / "fresh.parquet"
    res2 = _cli(*[fresh if a == out else a for a in args], "--cache", str(out) + ".cache.sqlite")
    assert res2.returncode == 0, res2.stderr[-2000:]
    s2 = json.loads(res2.stdout)
    assert s2["captions"]["generated"] == 0 and s2["captions"]["cache_hits"] == 200
    assert pq.read_table(fresh).drop(["csv"]).equals(resumed.drop(["csv"]))


def test_gate_refuses_without_a_passing_report(tiny, shared_data, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny[0], model)
    csv_path = _subset(shared_data, tmp_path, 20)
    out = tmp_path / "o.parquet"
    base = ["audioset-captions", csv_path, "--model", model, "--out", out, "--audioset-labels",
            shared_data / "audioset", "--no-progress"]
    res = _cli(*base)
    assert res.returncode == 2 and "no quality report" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # a real report: the tiny model is far below the template
    report = gate.write_model_report(model, shared_data / "audioset/eval_segments.csv",
                                     ("audiocaps", str(shared_data / "audiocaps/dataset/test.csv")),
                                     n=20, labels_dir=str(shared_data / "audioset"), ref_n=20)
    assert not report["passes"] and report["template"]["keyword_coverage"] == 1.0
    # reference scores (the LM corpus is AudioCaps): a human caption beats the template
    refs = report["references"]
    assert refs["n"] == 20 and refs["human"]["cider_d"] > refs["template"]["cider_d"] > 0
    assert all("cider_d" in d["references"] for d in report["decodings"])
    assert (model / gate.REPORT_MD).read_text().startswith("# Captioner quality")
    assert model_fingerprint(model) == model_fingerprint(tiny[0])   # the report is not hashed
    res = _cli(*base)
    assert res.returncode == 2 and "worse than the template" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    from laion_audio.ledger import writing

    with writing(tmp_path / "ledger"):    # an (empty) ledger: the gate is what refuses
        pass
    for cmd in (["caption", "--ledger", tmp_path / "ledger", "--model", model],
                ["build", "--source", "audioset", "--out", tmp_path / "b", "--caption-model", model,
                 "--stages", "caption", "--inline"]):
        r = _cli(*cmd)
        assert r.returncode == 2 and "worse than the template" in r.stderr, r.stderr[-1000:]
        assert len(r.stderr.strip().splitlines()) == 1
    forced = _cli(*base, "--force-caption-model")
    assert forced.returncode == 0 and "--force-caption-model" in forced.stderr
    # other weights: the report no longer describes them
    side = model / "config.json"
    side.write_text(side.read_text().replace("}", ', "note": "changed"}', 1))
    res = _cli(*base)
    assert res.returncode == 2 and "other weights" in res.stderr


def test_gate_limits_and_decoding_match(tiny, tmp_path):
    """The gate's logic on a report for the right weights: a passing entry for the asked
    decoding passes, a failing one or a missing decoding is refused."""
    cap = Captioner.load(tiny[0], device="cpu", params=GenerationParams(keyword_boost=2.0,
                                                                        rerank_by_coverage=True))
    good = {"keyword_coverage": 0.95, "all_keywords_rate": 0.8, "invented_word_rate": 0.05,
            "repetition_rate": 0.01, "misplaced_word_rate": 0.02}
    assert gate.verdict(good) == []
    assert len(gate.verdict({**good, "invented_word_rate": 0.2, "repetition_rate": 0.03})) == 2
    # fluency: judged against human captions' perplexity when the report has both
    assert gate.verdict({**good, "function_word_perplexity": 20.0}, 8.1) == []
    assert gate.verdict({**good, "function_word_perplexity": 50.0}, None) == []
    [why] = gate.verdict({**good, "function_word_perplexity": 50.0}, 8.1)
    assert "not fluent" in why
    model = tmp_path / "m"
    model.mkdir()
    entry = {"generation": gate._decoding_key(cap.params), **good, "passes": True, "broken": []}
    (model / gate.REPORT).write_text(json.dumps({"model_sha256": cap.fingerprint, "decodings": [entry]}))
    cap.name = str(model)
    assert gate.check(cap)["passes"]
    plain = Captioner(**{**cap.__dict__, "params": GenerationParams()})
    with pytest.raises(gate.GateError, match="not scored with this decoding.*passes with rerank=True"):
        gate.check(plain)
    assert gate.recommended_params(model) == cap.params


def test_build_join_gives_audioset_records_the_file_captions(shared_data, tmp_path):
    csv_path = _subset(shared_data, tmp_path, 30)
    out = tmp_path / "t.parquet"
    res = _cli("audioset-captions", csv_path, "--model", "template", "--out", out,
               "--audioset-labels", shared_data / "audioset", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    table = AudioSetCaptionTable(out)
    segs = list(read_segments(csv_path))
    recs = [Record(source="audioset", source_id=f"{s.ytid}_{int(s.start)}", trim_start=s.start,
                   trim_end=s.end, tags=list(s.mids), status=Status.TRANSCODED,
                   original_data={"youtube_id": s.ytid, "start_seconds": s.start})
            for s in segs[:10]]
    other = Record(source="audioset", source_id="zzz_0", tags=["Dog"], trim_start=0, trim_end=10,
                   status=Status.TRANSCODED, original_data={"youtube_id": "zzzzzzzzzzz", "start_seconds": 0.0})
    stats = CaptionStats()
    caption_batch(recs + [other], None, CaptionOptions(audioset_captions=table), stats=stats)
    rows = pq.read_table(out).to_pylist()
    for rec, row in zip(recs, rows):
        assert rec.texts == [row["text"]] and rec.text_augment_t5 == row["text"]
        assert rec.caption_provenance["joined_from"] == "t.parquet"
        assert rec.status == Status.CAPTIONED
    assert other.texts == ["The sound of Dog"] and other.text_augment_t5 is None
    assert stats.joined == 10 and stats.join_missing == 1
    bad = _cli("build", "--source", "audioset", "--out", tmp_path / "b", "--audioset-captions",
               csv_path, "--stages", "caption", "--inline")
    assert bad.returncode == 2 and "--audioset-captions" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


#: runs the CLI (argv[3:]) and SIGKILLs it right after its ``atomic.publish`` of a file named
#: argv[1] returns for the argv[2]-th time: the state a kill at that point leaves, exactly
_KILL_AFTER_PUBLISH = r"""
import os, signal, sys
from pathlib import Path
from laion_audio import atomic
from laion_audio.cli import main

name, nth, real, seen = sys.argv[1], int(sys.argv[2]), atomic.publish, [0]

def publish(src, dest):
    real(src, dest)
    if Path(dest).name == name:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

atomic.publish = publish
sys.exit(main(sys.argv[3:]))
"""


def _killed_after_publish(name: str, nth: int, *args) -> None:
    res = subprocess.run([sys.executable, "-c", _KILL_AFTER_PUBLISH, name, str(nth), *map(str, args)],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]


def test_run_killed_between_publishing_and_cleaning_up(shared_data, tmp_path):
    """Killed after ``--out`` is published, before its parts folder and lock file are removed:
    a rerun of the same command finds the output complete, removes the leftovers and exits 0
    with the same file; another command on that --out writes its own rows, not the finished
    run's; another run's unfinished parts are kept for it to resume."""
    csv_path = _subset(shared_data, tmp_path, 60)
    out = tmp_path / "o.parquet"
    parts, lock = tmp_path / ".o.parquet.parts", tmp_path / ".o.parquet.lock"
    cmd = ["audioset-captions", csv_path, "--model", "template", "--out", out,
           "--audioset-labels", shared_data / "audioset", "--chunk-rows", "25", "--no-progress"]
    other = [*cmd, "--template", "sound_of_the"]
    clean = tmp_path / "clean.parquet"
    assert _cli(*[clean if a == out else a for a in cmd]).returncode == 0

    _killed_after_publish("o.parquet", 1, *cmd)
    assert _sha(out) == _sha(clean)                # complete ...
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-000000.parquet", "part-000001.parquet", "part-000002.parquet", "run.json"]
    assert lock.is_file()                          # ... with the leftovers a kill leaves
    again = _cli(*cmd)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr[-2000:]
    assert _sha(out) == _sha(clean) and not parts.exists() and not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.parquet", "o.parquet", "segments.csv"]

    _killed_after_publish("o.parquet", 1, *cmd, "--force")         # the same state again
    assert parts.is_dir() and lock.is_file()
    res = _cli(*other)                             # another command on the same --out
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["parts_reused"] == 0
    texts = pq.read_table(out).column("text").to_pylist()
    assert len(texts) == 60 and all(t.startswith("The sound of the ") for t in texts)
    assert not parts.exists() and not lock.exists()
    res = _cli(*cmd)                               # and the first command is not "up to date"
    assert res.returncode == 0 and "up to date" not in res.stderr and _sha(out) == _sha(clean)

    _killed_after_publish("part-000001.parquet", 1, *other)     # the other run, mid-way
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-000000.parquet", "part-000001.parquet", "run.json"]
    again = _cli(*cmd)
    assert again.returncode == 0 and "up to date" in again.stderr and _sha(out) == _sha(clean)
    assert len(list(parts.glob("part-*.parquet"))) == 2          # not this run's to remove
    res = _cli(*other)
    assert res.returncode == 0 and json.loads(res.stdout)["parts_reused"] == 2, res.stderr[-2000:]
    assert not parts.exists() and not lock.exists()
