"""Safe defaults and one grammar (issue 11, items 5, 9, 10)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from crawlers.audioset import DEFAULT_CSVS, OFFICIAL_CSVS, SHIPPED_LABELS_DIR, AudioSetSource
from laion_audio.clap.train import run_warmup

ROWS = ("# Segments csv\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"\n'
        '--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"\n')


def test_audioset_defaults_are_training_csvs_and_shipped_labels(tmp_path):
    source = AudioSetSource(cache_dir=tmp_path)
    assert source.csvs == DEFAULT_CSVS and OFFICIAL_CSVS["eval"] not in source.csvs
    assert Path(source.labels) == SHIPPED_LABELS_DIR / "class_labels_indices.csv"
    assert Path(source.ontology) == SHIPPED_LABELS_DIR / "ontology.json"
    assert (SHIPPED_LABELS_DIR / "README.md").read_text().count("CC BY 4.0") >= 1


def test_audioset_crawl_offline_without_labels_option(tmp_path, caplog):
    """No --audioset-labels and no network: names come from the shipped table; an eval CSV
    is accepted with a warning."""
    csv = tmp_path / "eval_segments.csv"
    csv.write_text(ROWS)
    source = AudioSetSource(csv=[str(csv)], cache_dir=tmp_path / "cache")
    source.check()
    assert "evaluation set" in caplog.text
    records = list(source.crawl({}))
    assert records[0].tags == ["Domestic animals, pets", "Squeak", "Dog", "Animal"]
    assert not (tmp_path / "cache").exists()      # nothing was downloaded


def test_audioset_captions_offline_without_labels_option(tmp_path):
    """The caption job's one-line form (README): the class list shipped in manifests/audioset,
    the same table the crawl uses."""
    import pyarrow.parquet as pq

    from laion_audio.captions.gate import SHIPPED_LABELS_DIR as CAPTION_LABELS

    assert CAPTION_LABELS.resolve() == SHIPPED_LABELS_DIR.resolve()
    csv = tmp_path / "segments.csv"
    csv.write_text(ROWS)
    out = tmp_path / "captions.parquet"
    res = subprocess.run([sys.executable, "-m", "laion_audio.cli", "audioset-captions", str(csv),
                          "--model", "template", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert pq.read_table(out).column("text").to_pylist() == [
        "The sounds of Domestic animals, pets, Squeak, Dog and Animal", "The sound of Hammer"]


def test_audioset_labels_is_a_folder_or_the_csv(tmp_path):
    folder = AudioSetSource(labels=str(SHIPPED_LABELS_DIR), cache_dir=tmp_path)
    csv = AudioSetSource(labels=str(SHIPPED_LABELS_DIR / "class_labels_indices.csv"), cache_dir=tmp_path)
    assert folder.labels == csv.labels
    assert folder.label_names()["/m/0bt9lr"] == csv.label_names()["/m/0bt9lr"] == "Dog"


def test_warmup_scales_to_the_run():
    assert run_warmup(None, total_steps=30) == 3          # a 30-step CPU run leaves warmup
    assert run_warmup(None, total_steps=10**6) == 3200    # LAION's value for real runs
    assert run_warmup(None, total_steps=10**6, max_steps=100) == 10
    assert run_warmup(500, total_steps=30) == 500         # what the user asked for


def test_one_file_transcode_runs_in_process_and_says_transcode(tmp_path):
    """A small job does not start Ray (no token-auth warning, no worker logs); the summary
    header names the command; the new --input/--out spelling and the old positional one both
    work, the old one with a note."""
    src = tmp_path / "in"
    src.mkdir()
    t = np.arange(48000) / 48000
    sf.write(src / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), 48000)
    done = subprocess.run([sys.executable, "-m", "laion_audio", "transcode", "--input", str(src),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "laion-audio transcode: 1 records" in done.stdout
    assert "laion-audio build" not in done.stdout
    assert "Token authentication" not in done.stderr and "ray" not in done.stderr.lower()
    old = subprocess.run([sys.executable, "-m", "laion_audio", "transcode", str(src),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert old.returncode == 0 and "deprecated; use --input IN_DIR" in old.stderr


def test_evalsets_fetch_offline_reports_each_file_once(tmp_path):
    """An unreachable mirror: each eval file is one MISSING line, the host is tried once, and
    no retry chatter repeats the errors."""
    done = subprocess.run([sys.executable, "-m", "laion_audio", "evalsets", "fetch",
                           "--mirror", "http://127.0.0.1:9", "--evalsets-cache", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() if "MISSING" in line]
    from laion_audio.filters.evalsets import load_registry

    splits = sum(len(es.files) for es in load_registry())
    assert len(lines) == splits
    assert sum("connection" in line for line in lines) == 1      # later files: "unreachable"
    assert all("unreachable" in line for line in lines if "connection" not in line)
    assert "retrying" not in done.stderr
