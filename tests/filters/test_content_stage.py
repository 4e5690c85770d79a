"""The filter stage's content step: an MP3 re-upload of a local ESC-50 clip is dropped with the
eval set, split (from the real manifest), matched file and score; an unrelated clip stays."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from robustness import load_mono, mp3_roundtrip  # benchmarks/ (tests/filters/conftest.py)
from laion_audio.filters.stage import FilterConfig, filter_ledger
from laion_audio.ledger import Ledger
from laion_audio.records import Record, Status


def _corpus(tmp_path, debian_sounds):
    """A ledger with an MP3 re-upload of an eval clip, an unrelated clip and a record without
    audio; and the eval clip's folder."""
    clips = [p for p in debian_sounds if 2.0 < sf.info(str(p)).duration < 6.0][:3]
    eval_dir = tmp_path / "esc50_audio"
    eval_dir.mkdir()
    x = load_mono(clips[0])
    sf.write(eval_dir / "1-100038-A-14.wav", x, 48_000)           # a real ESC-50 file name (fold 1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    y = mp3_roundtrip(x[4800:-4800] * np.float32(0.5), 48_000)      # trimmed, -6 dB, MP3
    sf.write(corpus / "reupload.flac", y, 48_000)
    sf.write(corpus / "other.flac", load_mono(clips[1]), 48_000)
    ledger = Ledger(tmp_path / "ledger")
    ledger.write([Record("bbc", "re1", flac_path=str(corpus / "reupload.flac"), status=Status.CAPTIONED),
                  Record("bbc", "ok1", flac_path=str(corpus / "other.flac"), status=Status.CAPTIONED),
                  Record("bbc", "na", status=Status.CAPTIONED)])
    return ledger, eval_dir


def test_reupload_of_local_eval_clip_is_dropped(evalsets_cache, debian_sounds, tmp_path):
    cache, _ = evalsets_cache
    ledger, eval_dir = _corpus(tmp_path, debian_sounds)
    report, stats = filter_ledger(ledger, FilterConfig(evalsets_cache=str(cache),
                                                       eval_audio={"esc50": str(eval_dir)}))
    re1 = ledger.get("bbc", "re1")
    assert re1.status == Status.DROPPED and re1.filter_reason == "eval_overlap_content"
    m = re1.filter_match
    assert (m["eval_set"], m["split"], m["matched_id"]) == ("esc50", "fold1", "1-100038-A-14.wav")
    assert m["score"] >= 0.7 and m["method"] == "landmark+aligned_band_correlation"
    assert ledger.get("bbc", "ok1").status == Status.CAPTIONED
    assert report.no_audio == 1 and report.eval_clips == {"esc50": 1}
    assert report.by_source_evalset[("bbc", "esc50")] == 1 and stats.closes


def test_content_step_without_the_eval_id_step(debian_sounds, tmp_path):
    """``--skip-eval-filter --eval-audio``: no eval manifests, so the split is unknown (this
    once crashed the filter stage)."""
    ledger, eval_dir = _corpus(tmp_path, debian_sounds)
    report, _ = filter_ledger(ledger, FilterConfig(eval_ids=False,
                                                   eval_audio={"esc50": str(eval_dir)}))
    re1 = ledger.get("bbc", "re1")
    assert re1.filter_reason == "eval_overlap_content" and re1.filter_match["split"] == "unknown"
    assert ledger.get("bbc", "ok1").status == Status.CAPTIONED


def test_unreadable_and_too_short_eval_clips_are_counted_and_said(debian_sounds, tmp_path):
    """An eval folder as users have them: junk named .wav, an empty .flac, a WAV cut short, a
    0.05 s blip. The run goes on, still drops the re-upload, and the table says how many eval
    clips it could not read or could never match."""
    ledger, eval_dir = _corpus(tmp_path, debian_sounds)
    (eval_dir / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    (eval_dir / "empty.flac").write_bytes(b"")
    sf.write(eval_dir / "blip.wav", np.full(2400, 0.3, np.float32), 48_000)
    whole = (eval_dir / "1-100038-A-14.wav").read_bytes()
    (eval_dir / "cut.wav").write_bytes(whole[: len(whole) // 2])     # header promises twice this
    report, stats = filter_ledger(ledger, FilterConfig(eval_ids=False, eval_audio={"esc50": str(eval_dir)}))
    assert ledger.get("bbc", "re1").filter_reason == "eval_overlap_content" and stats.closes
    assert report.eval_clips_unreadable == 2 and report.eval_clips == {"esc50": 3}
    assert report.eval_clips_too_short == 1
    assert "3 clips; 2 unreadable (see the warnings); 1 too short to match" in report.table()
