"""Bad inputs: each is a typed Failure with a clear reason (or correct output), never a partial file."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from laion_audio.transcode.audio import TranscodeOptions, transcode_file
from laion_audio.records import Failure, FailureCode

from .conftest import ffmpeg_encode, leftovers, needs_ffmpeg, sine, write_sf


def expect_failure(tmp_path, src, code, options=None, **window):
    out_dir = tmp_path / "out"
    with pytest.raises(Failure) as info:
        transcode_file(src, out_dir / "x.flac", options, **window)
    assert info.value.code == code, info.value
    assert info.value.message                     # a reason a person can read
    assert leftovers(out_dir) == [] if out_dir.exists() else True
    return info.value


def test_missing_file(tmp_path):
    expect_failure(tmp_path, tmp_path / "nope.wav", FailureCode.MISSING_FILE)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    expect_failure(tmp_path, tmp_path / "empty.wav", FailureCode.EMPTY_FILE)


@pytest.mark.parametrize("name,payload", [
    ("text.wav", b"this is not audio, just some text someone renamed\n" * 20),
    ("page.mp3", b"<html><body>403 Forbidden</body></html>"),
    ("json.ogg", b'{"error": "rate limited"}'),
    ("noise.flac", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))),
])
def test_not_audio(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    failure = expect_failure(tmp_path, tmp_path / name, FailureCode.UNDECODABLE)
    assert "audio" in failure.message


def test_truncated_flac(tmp_path):
    src = write_sf(tmp_path / "a.flac", sine(44100, 3.0, 2), 44100, "PCM_16")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    expect_failure(tmp_path, src, FailureCode.TRUNCATED_AUDIO)


@needs_ffmpeg
def test_truncated_mp3(tmp_path):
    wav = write_sf(tmp_path / "a.wav", sine(44100, 3.0, 2), 44100, "PCM_16")
    src = ffmpeg_encode(wav, tmp_path / "a.mp3", "-c:a", "libmp3lame")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    failure = expect_failure(tmp_path, src, FailureCode.TRUNCATED_AUDIO)
    assert "header states 3.0" in failure.message


def test_wav_header_claims_more_data_than_present(tmp_path):
    src = write_sf(tmp_path / "a.wav", sine(16000, 2.0), 16000, "PCM_16")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 20000])       # header still says 64000 bytes of data
    failure = expect_failure(tmp_path, src, FailureCode.TRUNCATED_AUDIO)
    assert "WAV header claims" in failure.message


def test_streamed_wav_with_unknown_length_is_fine(tmp_path):
    src = write_sf(tmp_path / "a.wav", sine(16000, 1.0), 16000, "PCM_16")
    data = bytearray(src.read_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)         # RIFF size unknown (written to a pipe)
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)       # data size unknown
    src.write_bytes(bytes(data))
    res = transcode_file(src, tmp_path / "out" / "x.flac")
    assert abs(res.duration - 1.0) < 1e-3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_nonfinite_float_samples(tmp_path, bad, subtype):
    data = sine(44100, 3.0, 2)
    data[int(2.5 * 44100), 1] = bad                   # after the first decoded blocks were written
    src = write_sf(tmp_path / "a.wav", data, 44100, subtype)
    failure = expect_failure(tmp_path, src, FailureCode.NONFINITE)
    assert "2.50" in failure.message


def test_too_short(tmp_path):
    src = write_sf(tmp_path / "a.wav", sine(44100, 0.001), 44100, "PCM_16")
    expect_failure(tmp_path, src, FailureCode.TOO_SHORT)
    empty = write_sf(tmp_path / "zero_frames.wav", np.zeros((0, 1)), 44100, "PCM_16")
    expect_failure(tmp_path, empty, FailureCode.TOO_SHORT)
    ten_ms = write_sf(tmp_path / "ten_ms.wav", sine(44100, 0.02), 44100, "PCM_16")
    expect_failure(tmp_path, ten_ms, FailureCode.TOO_SHORT, TranscodeOptions(min_duration=0.05))


def test_a_10_ms_clip_is_kept_by_default(tmp_path):
    src = write_sf(tmp_path / "a.wav", sine(44100, 0.01, 2), 44100, "PCM_16")
    res = transcode_file(src, tmp_path / "out.flac")
    assert abs(res.frames - 480) <= 1 and sf.info(str(tmp_path / "out.flac")).frames == res.frames


def test_too_long_is_refused_from_the_header(tmp_path):
    src = write_sf(tmp_path / "a.flac", sine(8000, 3.0), 8000, "PCM_16")
    failure = expect_failure(tmp_path, src, FailureCode.TOO_LONG, TranscodeOptions(max_duration=2))
    assert "(header)" in failure.message
    # a trim window that fits is fine
    res = transcode_file(src, tmp_path / "ok.flac", TranscodeOptions(max_duration=2), start=1.5)
    assert abs(res.duration - 1.5) < 1e-3


@needs_ffmpeg
def test_too_long_is_caught_while_decoding_when_no_length_is_stated(tmp_path):
    wav = write_sf(tmp_path / "a.wav", sine(44100, 3.0), 44100, "PCM_16")
    src = ffmpeg_encode(wav, tmp_path / "a.aac", "-c:a", "aac")   # raw ADTS: length unknown
    failure = expect_failure(tmp_path, src, FailureCode.TOO_LONG, TranscodeOptions(max_duration=1))
    assert "decoded more than" in failure.message


def test_sample_rate_floor(tmp_path):
    low = write_sf(tmp_path / "low.wav", sine(8000, 0.5), 8000, "PCM_16")
    floor = TranscodeOptions(min_input_rate=16000)
    expect_failure(tmp_path, low, FailureCode.LOW_SAMPLE_RATE, floor)
    assert transcode_file(low, tmp_path / "a.flac").input_sample_rate == 8000   # off by default
    ok = write_sf(tmp_path / "ok.wav", sine(16000, 0.5), 16000, "PCM_16")
    assert transcode_file(ok, tmp_path / "b.flac", floor).input_sample_rate == 16000


def test_silence_option(tmp_path):
    silent = write_sf(tmp_path / "silent.wav", np.zeros((22050, 2)), 22050, "PCM_16")
    quiet = write_sf(tmp_path / "quiet.wav", sine(22050, 0.5, amp=10 ** (-70 / 20)), 22050, "FLOAT")
    gate = TranscodeOptions(silence_db=-60)
    expect_failure(tmp_path, silent, FailureCode.SILENT, gate)
    failure = expect_failure(tmp_path, quiet, FailureCode.SILENT, gate)
    assert "-70" in failure.message
    assert transcode_file(silent, tmp_path / "kept.flac").peak_db == -np.inf   # off by default
    assert transcode_file(quiet, tmp_path / "kept2.flac",
                          TranscodeOptions(silence_db=-80)).peak_db > -80


@pytest.mark.parametrize("window", [dict(start=2.0, end=1.0), dict(start=1.0, end=1.0),
                                    dict(start=-1.0), dict(start=5.0), dict(start=float("nan")),
                                    dict(start=0.0, end=float("inf"))])
def test_bad_trim_window(tmp_path, window):
    src = write_sf(tmp_path / "a.wav", sine(16000, 2.0), 16000, "PCM_16")
    expect_failure(tmp_path, src, FailureCode.BAD_TRIM, **window)


@needs_ffmpeg
def test_trim_start_past_the_end_without_a_stated_length(tmp_path):
    wav = write_sf(tmp_path / "a.wav", sine(44100, 1.0), 44100, "PCM_16")
    src = ffmpeg_encode(wav, tmp_path / "a.aac", "-c:a", "aac")
    expect_failure(tmp_path, src, FailureCode.BAD_TRIM, start=30.0)


@pytest.mark.parametrize("name", ["with spaces.wav", "ünïcødé 名前.wav", "quote's \"double\".wav",
                                  "..dots..wav", "-leading-dash.wav", "$(echo x) `y`.wav"])
def test_awkward_file_names(tmp_path, name):
    src = write_sf(tmp_path / name, sine(44100, 0.3, 2), 44100, "PCM_16")
    res = transcode_file(src, tmp_path / "out" / "x.flac")
    assert abs(res.duration - 0.3) < 1e-3
    # the same file reached through a "../" path component
    (tmp_path / "sub").mkdir()
    res2 = transcode_file(tmp_path / "sub" / ".." / name, tmp_path / "out" / "y.flac")
    assert res2.sha256 == res.sha256
    assert leftovers(tmp_path / "out") == ["x.flac", "y.flac"]


def test_failure_replaces_nothing_and_a_stale_partial_is_cleaned(tmp_path):
    good = write_sf(tmp_path / "good.wav", sine(44100, 0.5), 44100, "PCM_16")
    out = tmp_path / "out" / "x.flac"
    transcode_file(good, out)
    before = out.read_bytes()
    (tmp_path / "out" / ".x.flac.partial").write_bytes(b"left by a kill -9")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 10)
    with pytest.raises(Failure):
        transcode_file(tmp_path / "bad.wav", out)
    assert out.read_bytes() == before                  # a failed rerun keeps the old output
    assert leftovers(tmp_path / "out") == ["x.flac"]   # and removes the stale partial
