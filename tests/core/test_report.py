"""`laion-audio report` renders from a ledger: HTML, real PNG images, figures.json whose numbers
are recomputed from the rows (with the paper's counts beside ours)."""
from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg

from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status

REPO = Path(__file__).resolve().parents[2]


def make_ledger(root: Path) -> None:
    records = []
    for i in range(6):
        records.append(Record(source="sonniss_game_effects", source_id=f"pack/{i}.wav", license="Sonniss licence",
                              texts=["Concrete Impact", "two words"][: 1 + i % 2], status=Status.SHARDED,
                              audio_duration=1.5 * (i + 1)))
    for i in range(3):
        rec = Record(source="audioset", source_id=f"vid{i:08d}_0", license="YouTube", trim_start=0.0, trim_end=10.0)
        records.append(rec.fail("fetch", "unavailable", "Private video"))
    records.append(Record(source="audioset", source_id="ok000000000_0", license="YouTube",
                          texts=["The sounds of Speech and Music"], status=Status.CAPTIONED, audio_duration=10.0))
    records.append(Record(source="local", source_id="dup.wav", status=Status.DROPPED, filter_reason="eval_overlap"))
    records.append(Record(source="local", source_id="new.wav", status=Status.NEW, duration=3.0))
    with Ledger(root) as ledger:
        ledger.write(records)


def test_report_cli_writes_html_pngs_and_figures(tmp_path):
    make_ledger(tmp_path / "out" / "ledger")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "laion_audio", "report", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = tmp_path / "out" / "report"
    page = (report / "index.html").read_text()
    assert str(tmp_path) not in page and "<code>../ledger</code>" in page   # no local path published
    figures = json.loads((report / "figures.json").read_text())
    sonniss = figures["sources"]["sonniss_game_effects"]
    assert sonniss["kept"] == 6 and sonniss["paper_samples"] == 5049
    assert abs(sonniss["hours"] - 1.5 * 21 / 3600) < 1e-4
    assert figures["sources"]["audioset"]["failures"] == {"fetch:unavailable": 3}
    assert figures["failures"] == {"fetch:unavailable": 3} and figures["dropped"] == {"eval_overlap": 1}
    assert sum(figures["duration_histogram"]["counts"]) == 7
    assert sum(figures["caption_words_histogram"]["counts"]) == 3 + 3 * 2 + 1
    assert figures["licences"] == {"Sonniss licence": 6, "YouTube": 1, "(unknown)": 1}
    pngs = sorted(report.glob("*.png"))
    assert {p.stem for p in pngs} == {"samples_per_source", "hours_per_source", "durations", "caption_lengths",
                                      "licences", "failures", "dropped"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
        assert f"src='{png.name}'" in page
    assert "5049" in page and "fetch:unavailable" in page


def test_report_without_ledger_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "laion_audio", "report", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no ledger" in done.stderr


def test_report_draws_site_text_as_plain_text(tmp_path):
    """A Freesound licence string with TeX math in it crashed the licence plot (issue 10 item 10)."""
    hostile = ["$\\undefinedmacro{x}$", "50$ and $", "a_b^c $\\frac{1}{0", "\\usepackage{evil}",
               "x" * 500, "ctl\x00\x1b[31m"]
    records = [Record(source="freesound", source_id=str(i), license=lic, texts=["a dog"],
                      status=Status.SHARDED, audio_duration=1.0) for i, lic in enumerate(hostile)]
    records.append(Record(source="$\\bad{source}$", source_id="z", license="$\\x$").fail("fetch",
                        "$\\oops$", "m"))
    with Ledger(tmp_path / "out" / "ledger") as ledger:
        ledger.write(records)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "laion_audio", "report", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report" / "licences.png").read_bytes()[:4] == b"\x89PNG"
    figures = json.loads((tmp_path / "out" / "report" / "figures.json").read_text())
    assert figures["licences"]["$\\undefinedmacro{x}$"] == 1


def test_figures_from_chunked_arrow_equal_a_row_by_row_count(tmp_path):
    """compute_figures reads the ledger in Arrow chunks; every figure equals a plain Python count
    over the rows, nulls, empty licences, zero durations and odd whitespace included."""
    import random

    from laion_audio.report import CAPTION_WORD_BINS, DURATION_BINS, KEPT, compute_figures

    rng = random.Random(7)
    statuses = [Status.NEW, Status.FAILED, Status.DROPPED, Status.VANISHED, Status.TRANSCODED,
                Status.CAPTIONED, Status.SHARDED]
    records = []
    for i in range(3000):
        rec = Record(source=rng.choice(["bbc", "freesound", "local"]), source_id=f"id{i}",
                     status=rng.choice(statuses), duration=rng.choice([None, 0.0, rng.uniform(0, 4000)]),
                     license=rng.choice([None, "", "CC0", "CC-BY"]),
                     texts=rng.choice([[], ["a b  c", " lead space\t"], ["x " * rng.randint(0, 120)]]))
        rec.audio_duration = rng.choice([None, rng.uniform(0, 50)])
        if rec.status == Status.FAILED:
            rec.failure_stage, rec.failure_code = rng.choice([None, "fetch"]), rng.choice([None, "http_error"])
        if rec.status == Status.DROPPED:
            rec.filter_reason = rng.choice([None, "duplicate_exact"])
        records.append(rec)
    Ledger(tmp_path / "ledger").write(records)
    fig = compute_figures(Ledger(tmp_path / "ledger", lock=False))

    def hist(values, edges):
        counts = [0] * len(edges)
        for v in values:
            below = [i for i, e in enumerate(edges) if v >= e]
            if below:
                counts[below[-1]] += 1
        return counts

    failed = [r for r in records if r.status == Status.FAILED]
    kept = [r for r in records if r.status in KEPT]
    secs = [r.audio_duration if r.audio_duration is not None else r.duration for r in kept]
    assert fig["total"]["records"] == len(records)
    assert fig["total"]["failed"] == len(failed)
    assert fig["total"]["dropped"] == sum(r.status == Status.DROPPED for r in records)
    assert fig["total"]["kept"] == len(kept)
    assert fig["failures"] == dict(Counter(
        f"{r.failure_stage or '?'}:{r.failure_code or '?'}" for r in failed))
    live = [r for r in records if r.status not in (Status.FAILED, Status.DROPPED, Status.VANISHED)]
    assert fig["licences"] == dict(Counter(r.license or "(unknown)" for r in live))
    assert fig["duration_histogram"]["counts"] == hist([s for s in secs if s], DURATION_BINS)
    assert fig["caption_words_histogram"]["counts"] == hist(
        [len(t.split()) for r in kept for t in r.texts], CAPTION_WORD_BINS)
    for src in ("bbc", "freesound", "local"):
        mine = [s for r, s in zip(kept, secs) if r.source == src and s]
        assert abs(fig["sources"][src]["hours"] - round(sum(mine) / 3600, 4)) < 1e-9
