"""Keyword sources and normalisation: AudioSet metadata (real files), captions' content words,
and the checksum-pinned download served from 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest

from laion_audio.captions.keywords import (AUDIOSET_FILES, AudioSetLabels, ChecksumError,
                                           caption_keywords, ensure_audioset_metadata,
                                           normalise_keywords, read_segments)


def test_normalise_never_splits_on_dots():
    assert normalise_keywords(["  p.a.  system", ".45 cartridge", "P.A. system", "", "Mr. Smith"]) == (
        "p.a. system", ".45 cartridge", "Mr. Smith")


def test_caption_keywords_are_base_content_words():
    assert caption_keywords("A woman talks nearby as water pours") == ["woman", "talk", "water", "pour"]
    assert caption_keywords("Dogs bark and men shout in the background") == ["dog", "bark", "man", "shout"]
    assert len(caption_keywords("one two three four five six seven eight nine ten", 6)) <= 6


@pytest.mark.needs_shared
def test_audioset_labels_and_segments(shared_data):
    labels = AudioSetLabels.from_dir(shared_data / "audioset")
    assert labels.names["/m/09x0r"] == "Speech"
    assert labels.label_names(["/m/05zppz"]) == ["Male speech, man speaking"]
    with pytest.raises(KeyError, match="unknown AudioSet MID"):
        labels.label_names(["/m/not_a_mid"])
    segs = list(read_segments(shared_data / "audioset/balanced_train_segments.csv"))
    assert len(segs) == 22160                       # the CSV's own num_segs
    assert segs[0].ytid == "--PJHxphWEs" and segs[0].mids == ("/m/09x0r", "/t/dd00088")
    assert sum(len(s.mids) for s in segs) == 52882  # num_positive_labels
    assert all(m in labels.names for s in segs for m in s.mids)


def test_read_segments_skips_malformed_rows(tmp_path):
    p = tmp_path / "seg.csv"
    p.write_text('# c\n# c\n# YTID, start_seconds, end_seconds, positive_labels\n'
                 'abc, 1.0, 11.0, "/m/09x0r,/m/0jbk"\nbroken row\nxyz, oops, 3, "/m/09x0r"\n')
    segs = list(read_segments(p))
    assert [s.ytid for s in segs] == ["abc"]


@pytest.fixture
def local_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.needs_shared
def test_download_checks_sha256(shared_data, local_server, tmp_path):
    served, base = local_server
    shutil.copy(shared_data / "audioset/class_labels_indices.csv", served / "good.csv")
    (served / "bad.csv").write_text("index,mid,display_name\n0,/m/x,tampered\n")
    dest = tmp_path / "meta"
    ensure_audioset_metadata(dest, base_urls={"class_labels_indices.csv": f"{base}/good.csv"})
    assert AudioSetLabels.from_dir(dest).names["/m/09x0r"] == "Speech"
    # a tampered file never replaces a good one, and a fresh folder gets no file at all
    other = tmp_path / "meta2"
    with pytest.raises(ChecksumError):
        ensure_audioset_metadata(other, base_urls={"class_labels_indices.csv": f"{base}/bad.csv"})
    assert not any(other.iterdir())
    assert set(AUDIOSET_FILES) >= {"class_labels_indices.csv", "ontology.json"}


def test_read_segments_refuses_rows_that_would_be_wrong_segments(tmp_path):
    """A row with an extra column, a negative, infinite or NaN time, an end before its start,
    or a quote left open is malformed (counted), and an open quote never swallows the next row."""
    p = tmp_path / "seg.csv"
    p.write_text('# c\n# c\n# YTID, start_seconds, end_seconds, positive_labels\n'
                 'good1, 0.000, 10.000, "/m/03l9g"\n'
                 'extra, 0.000, 10.000, "/m/03l9g", "/m/0jbk"\n'
                 'neg, -5.000, 10.000, "/m/03l9g"\n'
                 'nan, nan, 10.000, "/m/03l9g"\n'
                 'inf, 0.000, inf, "/m/03l9g"\n'
                 'backwards, 30.000, 10.000, "/m/03l9g"\n'
                 'openquote, 0.000, 10.000, "/m/03l9g\n'
                 'good2, 20.000, 30.000, "/m/03l9g,/m/0jbk"\n')
    bad = []
    segs = list(read_segments(p, on_error=lambda n, row: bad.append(n), numbered=True))
    assert [(n, s.ytid, s.mids) for n, s in segs] == [(1, "good1", ("/m/03l9g",)),
                                                      (8, "good2", ("/m/03l9g", "/m/0jbk"))]
    assert bad == [2, 3, 4, 5, 6, 7]


@pytest.mark.needs_shared
def test_segment_rows_fast_path_gives_the_csv_modules_fields(shared_data):
    """The regex read of a published row (``YTID, start, end, "mids"``) yields exactly the
    fields the csv module does, for every real row and for mutants of them (a character
    inserted or deleted); anything it does not match goes to the csv module itself."""
    import csv
    import random

    from laion_audio.captions.keywords import _SEGMENT_ROW

    lines = [line for name in ("eval_segments.csv", "balanced_train_segments.csv")
             for line in open(shared_data / "audioset" / name, newline="", encoding="utf-8")
             if not line.startswith("#")]
    rng = random.Random(0)
    mutants = []
    for _ in range(20_000):
        line = rng.choice(lines)
        i = rng.randrange(len(line))
        mutants.append(line[:i] + rng.choice(', "\t\r\nx1.') + line[i:] if rng.random() < 0.5
                       else line[:i] + line[i + 1:])
    fast = 0
    for line in lines + mutants:
        m = _SEGMENT_ROW.match(line)
        if m is None:
            continue
        fast += 1
        assert list(m.groups()) == next(csv.reader((line,), skipinitialspace=True, strict=True)), line
    assert fast > len(lines)          # every real row, and the mutants that stay well formed
