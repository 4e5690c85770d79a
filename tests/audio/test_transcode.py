"""The transcode stage over records: fields filled, failures recorded, reruns idempotent."""
from __future__ import annotations

from pathlib import Path

import soundfile as sf

from laion_audio.transcode import stage as transcode_mod
from laion_audio.ledger import Ledger, StageStats
from laion_audio.records import FailureCode, Record, Status, sample_key
from laion_audio.transcode import TranscodeOptions, transcode_batch, transcode_record

from .conftest import leftovers, sine, write_sf


def make_records(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_sf(src / "stereo 44k.wav", sine(44100, 1.0, 2), 44100, "PCM_16")
    write_sf(src / "float 96k.wav", sine(96000, 2.0, 1), 96000, "FLOAT")
    write_sf(src / "vorbis.ogg", sine(22050, 4.0, 2), 22050, "VORBIS", "OGG")
    (src / "text.wav").write_text("not audio\n")
    (src / "empty.wav").write_bytes(b"")
    return [
        Record("local", "stereo 44k.wav", audio_path=str(src / "stereo 44k.wav"),
               status=Status.FETCHED),
        Record("local", "../../etc/passwd", audio_path=str(src / "float 96k.wav"),
               status=Status.FETCHED),
        Record("audioset", "YTID_30000", audio_path=str(src / "vorbis.ogg"), trim_start=1.0,
               trim_end=3.5, status=Status.FETCHED),
        Record("local", "text.wav", audio_path=str(src / "text.wav"), status=Status.FETCHED),
        Record("local", "empty.wav", audio_path=str(src / "empty.wav"), status=Status.FETCHED),
        Record("local", "gone.wav", audio_path=str(src / "gone.wav"), status=Status.FETCHED),
        Record("local", "never fetched"),
        Record("../evil", "x", audio_path=str(src / "stereo 44k.wav"), status=Status.FETCHED),
    ]


def test_batch_fills_fields_and_records_failures(tmp_path):
    records = make_records(tmp_path)
    out_dir = tmp_path / "flac"
    done = transcode_batch(records, out_dir)
    assert [r.key for r in done] == [r.key for r in records]
    assert all(r.status == Status.FETCHED for r in records[:6])   # inputs are not mutated
    ok = [r for r in done if r.status == Status.TRANSCODED]
    assert len(ok) == 3
    for r in ok:
        assert r.flac_path == str(out_dir / r.source / f"{sample_key(r.source, r.source_id)}.flac")
        info = sf.info(r.flac_path)
        assert (info.samplerate, info.channels) == (48000, 1)
        assert abs(info.duration - r.audio_duration) < 1e-9
        assert len(r.audio_sha256) == 64 and r.failure_code == ""
    a, b, c = ok
    assert (a.input_sample_rate, a.input_channels, a.input_codec, a.input_subtype,
            a.output_subtype) == (44100, 2, "pcm", "PCM_16", "PCM_16")
    assert (b.input_sample_rate, b.input_subtype, b.output_subtype) == (96000, "FLOAT", "PCM_24")
    assert (c.input_codec, c.output_subtype) == ("vorbis", "PCM_24")
    assert abs(c.audio_duration - 2.5) < 1e-3                        # trim window applied
    codes = {r.source_id: r.failure_code for r in done if r.status == Status.FAILED}
    assert codes == {"text.wav": FailureCode.UNDECODABLE, "empty.wav": FailureCode.EMPTY_FILE,
                     "gone.wav": FailureCode.MISSING_FILE,
                     "never fetched": FailureCode.MISSING_FILE, "x": FailureCode.UNSAFE_PATH}
    assert all(r.failure_stage == "transcode" and r.failure_message
               for r in done if r.status == Status.FAILED)
    # only finished FLACs in the output tree, all inside it
    assert sorted(leftovers(out_dir)) == sorted(
        str(Path(r.flac_path).relative_to(out_dir)) for r in ok)
    # accounting closes and the ledger stores the rows
    stats = StageStats("transcode")
    for before, after in zip(records, done):
        stats.add(before, after)
    assert stats.inputs == stats.succeeded + stats.failed == len(records)
    with Ledger(tmp_path / "ledger") as ledger:
        ledger.write(done, tag="transcode")
        assert ledger.failure_counts()["transcode:undecodable"] == 1


def test_rerun_rewrites_identical_bytes(tmp_path):
    records = make_records(tmp_path)[:3]
    first = transcode_batch(records, tmp_path / "flac")
    blobs = {r.flac_path: open(r.flac_path, "rb").read() for r in first}
    second = transcode_batch(first, tmp_path / "flac", TranscodeOptions())
    assert [r.to_row() for r in second] == [r.to_row() for r in first]
    assert {r.flac_path: open(r.flac_path, "rb").read() for r in second} == blobs


def test_retrying_a_failed_record_clears_the_failure(tmp_path):
    records = make_records(tmp_path)
    failed = transcode_record(records[5], tmp_path / "flac")          # gone.wav
    assert failed.status == Status.FAILED
    write_sf(tmp_path / "in" / "gone.wav", sine(16000, 0.5), 16000, "PCM_16")
    fixed = transcode_record(failed, tmp_path / "flac")
    assert fixed.status == Status.TRANSCODED and fixed.failure_code == fixed.failure_stage == ""


def test_options_reach_the_decoder(tmp_path):
    records = make_records(tmp_path)[:1]
    done = transcode_batch(records, tmp_path / "flac", TranscodeOptions(min_input_rate=48000))
    assert done[0].failure_code == FailureCode.LOW_SAMPLE_RATE


def test_an_unexpected_error_is_recorded_not_raised(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the decoder glue")

    monkeypatch.setattr(transcode_mod, "transcode_file", broken)
    done = transcode_batch(make_records(tmp_path)[:1], tmp_path / "flac")
    assert done[0].status == Status.FAILED
    assert done[0].failure_code == FailureCode.INTERNAL
    assert "ZeroDivisionError: a bug" in done[0].failure_message
