"""Every good input becomes 48 kHz mono FLAC of the right length, pitch, level and bit depth."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from laion_audio.transcode.audio import TranscodeOptions, pcm_sha256_of_file, transcode_file

from .conftest import ffmpeg_encode, needs_ffmpeg, read_flac, sine, write_sf

RATE = 44100
SECONDS = 1.2345            # not a multiple of any codec frame: length errors show
MEAN_AMP = 0.5 * (1 + 2) / 2 / 2   # stereo sine(): channel amps 0.25 and 0.5


def duration_tolerance(seconds: float, rate: int) -> float:
    """1 ms per second of audio, plus one sample of rounding on each side."""
    return 0.001 * seconds + 1 / 48000 + 1 / rate


def peak_hz(mono: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * rate / len(mono))


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x))))


def check_sine_output(out, expected_seconds, expected_amp, level_tol_db, src_rate=RATE,
                      extra_duration_tol=0.0):
    data, info = read_flac(out)
    assert info.samplerate == 48000 and info.channels == 1 and info.format == "FLAC"
    assert abs(info.duration - expected_seconds) <= (
        duration_tolerance(expected_seconds, src_rate) + extra_duration_tol), info.duration
    middle = data[len(data) // 5: -len(data) // 5]     # away from edges and codec ramps
    assert abs(peak_hz(middle, 48000) - 1000) < 48000 / len(middle) * 1.5
    assert abs(rms_db(middle) - rms_db(expected_amp * np.sin(np.linspace(0, 200 * np.pi, 48000)))) \
        < level_tol_db
    return data, info


# (file name, soundfile subtype, soundfile format, expected output subtype, level tolerance dB)
SOUNDFILE_CASES = [
    ("u8.wav", "PCM_U8", "WAV", "PCM_16", 0.1),
    ("s16.wav", "PCM_16", "WAV", "PCM_16", 0.1),
    ("s24.wav", "PCM_24", "WAV", "PCM_24", 0.1),
    ("s32.wav", "PCM_32", "WAV", "PCM_24", 0.1),
    ("f32.wav", "FLOAT", "WAV", "PCM_24", 0.1),
    ("f64.wav", "DOUBLE", "WAV", "PCM_24", 0.1),
    ("ulaw.wav", "ULAW", "WAV", "PCM_16", 0.1),
    ("ima.wav", "IMA_ADPCM", "WAV", "PCM_16", 0.3),
    ("s8.flac", "PCM_S8", "FLAC", "PCM_16", 0.1),
    ("s16.flac", "PCM_16", "FLAC", "PCM_16", 0.1),
    ("s24.flac", "PCM_24", "FLAC", "PCM_24", 0.1),
    ("s16.aiff", "PCM_16", "AIFF", "PCM_16", 0.1),
    ("s24.aiff", "PCM_24", "AIFF", "PCM_24", 0.1),
    ("vorbis.ogg", "VORBIS", "OGG", "PCM_24", 1.0),
    ("layer3.mp3", "MPEG_LAYER_III", "MP3", "PCM_24", 1.0),
]


@pytest.mark.parametrize("name,subtype,fmt,out_subtype,level_tol", SOUNDFILE_CASES)
def test_soundfile_written_formats(tmp_path, name, subtype, fmt, out_subtype, level_tol):
    src = write_sf(tmp_path / name, sine(RATE, SECONDS, channels=2), RATE, subtype, fmt)
    res = transcode_file(src, tmp_path / "out.flac")
    assert res.output_subtype == out_subtype
    assert (res.input_sample_rate, res.input_channels, res.input_subtype) == (RATE, 2, subtype)
    stated = sf.info(str(src)).duration     # IMA ADPCM pads to whole blocks: the file's length
    assert abs(stated - SECONDS) < 0.03
    _, info = check_sine_output(tmp_path / "out.flac", stated, MEAN_AMP, level_tol)
    assert info.subtype == out_subtype
    assert res.sha256 == pcm_sha256_of_file(tmp_path / "out.flac")
    assert abs(res.duration - info.duration) < 1e-9


def test_opus_written_by_libsndfile(tmp_path):
    src = write_sf(tmp_path / "a.opus", sine(48000, SECONDS, channels=2), 48000, "OPUS", "OGG")
    res = transcode_file(src, tmp_path / "out.flac")
    assert (res.input_codec, res.output_subtype) == ("opus", "PCM_24")
    check_sine_output(tmp_path / "out.flac", SECONDS, MEAN_AMP, 0.3, src_rate=48000)


# (file name, ffmpeg args, codec, output subtype, extra duration tolerance in seconds)
FFMPEG_CASES = [
    ("aac.m4a", ["-c:a", "aac"], "aac", "PCM_24", 0.0),
    # raw ADTS carries no gapless info: encoder priming/padding (<= 3 AAC frames) is real output
    ("adts.aac", ["-c:a", "aac"], "aac", "PCM_24", 3 * 1024 / RATE),
    ("opus.webm", ["-c:a", "libopus"], "opus", "PCM_24", 0.0),
    ("libopus.opus", ["-c:a", "libopus"], "opus", "PCM_24", 0.0),
    ("lame.mp3", ["-c:a", "libmp3lame"], "mp3", "PCM_24", 0.0),
    ("vorbis.ogg", ["-c:a", "libvorbis"], "vorbis", "PCM_24", 0.0),
    ("be.aiff", ["-c:a", "pcm_s16be"], "pcm", "PCM_16", 0.0),
    ("alac.caf", ["-c:a", "alac"], "alac", "PCM_16", 0.0),
    ("flac.mka", ["-c:a", "flac"], "flac", "PCM_16", 0.0),
]


@needs_ffmpeg
@pytest.mark.parametrize("name,args,codec,out_subtype,extra_tol", FFMPEG_CASES)
def test_ffmpeg_written_formats(tmp_path, name, args, codec, out_subtype, extra_tol):
    wav = write_sf(tmp_path / "src.wav", sine(RATE, SECONDS, channels=2), RATE, "PCM_16")
    src = ffmpeg_encode(wav, tmp_path / name, *args)
    res = transcode_file(src, tmp_path / "out.flac")
    assert res.input_codec == codec
    assert res.output_subtype == out_subtype
    level_tol = 0.1 if out_subtype == "PCM_16" else 1.0   # lossy encoders move the level (LAME: -0.45 dB)
    check_sine_output(tmp_path / "out.flac", SECONDS, MEAN_AMP, level_tol,
                      src_rate=48000 if "opus" in codec else RATE, extra_duration_tol=extra_tol)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000, 192000])
def test_sine_keeps_frequency_and_level(tmp_path, rate):
    src = write_sf(tmp_path / f"sine{rate}.wav", sine(rate, 1.0), rate, "FLOAT")
    res = transcode_file(src, tmp_path / "out.flac")
    data, _ = check_sine_output(tmp_path / "out.flac", 1.0, 0.5, 0.1, src_rate=rate)
    assert res.input_sample_rate == rate
    middle = data[9600:-9600]
    assert abs(peak_hz(middle, 48000) - 1000) <= 48000 / len(middle)
    assert abs(rms_db(middle) - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1


@pytest.mark.parametrize("channels,rate", [(1, 8000), (2, 16000), (3, 22050), (4, 32000),
                                           (6, 48000), (8, 96000), (8, 192000)])
def test_channels_and_rates_downmix_by_mean(tmp_path, channels, rate):
    src = write_sf(tmp_path / f"c{channels}r{rate}.wav", sine(rate, 0.5, channels), rate, "PCM_24")
    res = transcode_file(src, tmp_path / "out.flac")
    assert (res.input_channels, res.input_sample_rate, res.output_subtype) == (channels, rate,
                                                                                "PCM_24")
    mean_amp = 0.5 * (channels + 1) / 2 / channels
    check_sine_output(tmp_path / "out.flac", 0.5, mean_amp, 0.1, src_rate=rate)


def test_downmix_and_16_bit_rule_are_exact_without_resampling(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=(4800, 2), dtype=np.int16)
    sf.write(str(tmp_path / "a.wav"), pcm, 48000, subtype="PCM_16")
    transcode_file(tmp_path / "a.wav", tmp_path / "out.flac")
    out, _ = sf.read(str(tmp_path / "out.flac"), dtype="int16")
    expected = np.clip(np.rint(pcm.astype(np.float64).mean(axis=1)), -32768, 32767)
    assert sf.info(str(tmp_path / "out.flac")).subtype == "PCM_16"
    np.testing.assert_array_equal(out, expected.astype(np.int16))


def test_same_pcm_in_wav_and_flac_hashes_equal(tmp_path):
    # integer PCM (libsndfile's float->int conversion differs between its WAV and FLAC writers)
    pcm = (np.rint(sine(44100, 0.7, 2) * 2 ** 23).astype(np.int32) << 8)
    write_sf(tmp_path / "a.wav", pcm, 44100, "PCM_24")
    write_sf(tmp_path / "a.flac", pcm, 44100, "PCM_24")
    assert np.array_equal(sf.read(str(tmp_path / "a.wav"), dtype="int32")[0],
                          sf.read(str(tmp_path / "a.flac"), dtype="int32")[0])
    a = transcode_file(tmp_path / "a.wav", tmp_path / "a_out.flac")
    b = transcode_file(tmp_path / "a.flac", tmp_path / "b_out.flac")
    assert a.sha256 == b.sha256 == pcm_sha256_of_file(tmp_path / "b_out.flac")
    c = transcode_file(tmp_path / "a.wav", tmp_path / "c.flac", start=0.1)
    assert c.sha256 != a.sha256


def test_flac_bytes_are_deterministic(tmp_path):
    src = write_sf(tmp_path / "a.ogg", sine(44100, 1.0, 2), 44100, "VORBIS", "OGG")
    transcode_file(src, tmp_path / "one.flac")
    transcode_file(src, tmp_path / "two.flac")
    assert (tmp_path / "one.flac").read_bytes() == (tmp_path / "two.flac").read_bytes()


def test_compression_level_changes_bytes_not_samples(tmp_path):
    src = write_sf(tmp_path / "a.wav", sine(44100, 1.0, 2), 44100, "PCM_24")
    fast = transcode_file(src, tmp_path / "fast.flac", TranscodeOptions(compression_level=0.0))
    best = transcode_file(src, tmp_path / "best.flac", TranscodeOptions(compression_level=1.0))
    assert fast.sha256 == best.sha256
    assert (tmp_path / "best.flac").stat().st_size <= (tmp_path / "fast.flac").stat().st_size


# ----------------------------------------------------------------------------- trim windows
def test_trim_window_is_sample_exact_with_libsndfile(tmp_path):
    data = sine(44100, 3.0, 2, freq=440)
    write_sf(tmp_path / "full.wav", data, 44100, "PCM_16")
    write_sf(tmp_path / "cut.wav", data[int(0.5 * 44100):int(1.75 * 44100)], 44100, "PCM_16")
    trimmed = transcode_file(tmp_path / "full.wav", tmp_path / "t.flac", start=0.5, end=1.75)
    cut = transcode_file(tmp_path / "cut.wav", tmp_path / "c.flac")
    assert trimmed.sha256 == cut.sha256
    assert abs(trimmed.duration - 1.25) < 1e-4


def test_trim_end_past_the_file_end_clamps(tmp_path):
    write_sf(tmp_path / "a.flac", sine(22050, 2.0), 22050, "PCM_16")
    res = transcode_file(tmp_path / "a.flac", tmp_path / "o.flac", start=1.0, end=60.0)
    assert abs(res.duration - 1.0) < 1e-4


@needs_ffmpeg
@pytest.mark.parametrize("name,args", [("a.m4a", ["-c:a", "aac"]),
                                       ("a.webm", ["-c:a", "libopus"])])
def test_trim_window_with_pyav_seek(tmp_path, name, args):
    wav = write_sf(tmp_path / "src.wav", sine(RATE, 6.0, 2), RATE, "PCM_16")
    src = ffmpeg_encode(wav, tmp_path / name, *args)
    res = transcode_file(src, tmp_path / "o.flac", start=2.5, end=4.0)
    assert res.decoder == "pyav"
    check_sine_output(tmp_path / "o.flac", 1.5, MEAN_AMP, 0.3, src_rate=48000)


# ----------------------------------------------------------------------------- Debian sounds
def _check_debian(tmp_path, paths):
    checked = 0
    for i, path in enumerate(paths):
        info = sf.info(str(path))
        out = tmp_path / f"{i}.flac"
        res = transcode_file(path, out)
        got = sf.info(str(out))
        assert (got.samplerate, got.channels, got.format) == (48000, 1, "FLAC"), path
        assert abs(got.duration - info.duration) <= duration_tolerance(info.duration,
                                                                       info.samplerate), path
        assert res.output_subtype == ("PCM_16" if info.subtype in ("PCM_16", "PCM_U8")
                                      else "PCM_24"), path
        checked += 1
    return checked


def test_debian_sound_clips(tmp_path, debian_sounds):
    clips = [p for p in debian_sounds if sf.info(str(p)).duration < 30]
    assert _check_debian(tmp_path, clips) == len(clips) >= 10


@pytest.mark.slow
def test_debian_long_music(tmp_path, debian_sounds):
    music = [p for p in debian_sounds if sf.info(str(p)).duration >= 30]
    if not music:
        pytest.skip("colobot music is not installed")
    _check_debian(tmp_path, music)


def test_streamed_blocks_equal_a_one_shot_reference(tmp_path):
    """Block streaming (4 s > 3 blocks) gives exactly mean -> soxr HQ -> round of the whole."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((44100 * 4, 2)) * 0.1).astype(np.float32)
    write_sf(tmp_path / "noise.wav", x, 44100, "FLOAT")
    transcode_file(tmp_path / "noise.wav", tmp_path / "out.flac")
    got = sf.read(str(tmp_path / "out.flac"), dtype="int32")[0] >> 8
    mono = (x[:, 0] + x[:, 1]) * np.float32(0.5)
    ref = soxr.resample(mono, 44100, 48000, quality="HQ")
    expected = np.clip(np.rint(ref * np.float32(2 ** 23)), -2 ** 23, 2 ** 23 - 1).astype(np.int32)
    np.testing.assert_array_equal(got, expected)


def test_memory_is_bounded_by_the_block_size(tmp_path):
    """20 s of 8-channel 96 kHz audio is 61 MB as float32; streaming never holds it all."""
    rate, channels, seconds = 96000, 8, 20
    rng = np.random.default_rng(2)
    with sf.SoundFile(str(tmp_path / "big.wav"), "w", rate, channels, "PCM_16") as f:
        for _ in range(seconds):
            f.write(rng.integers(-3000, 3000, (rate, channels), dtype=np.int16))
    tracemalloc.start()
    try:
        res = transcode_file(tmp_path / "big.wav", tmp_path / "out.flac")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(res.duration - seconds) < 1e-3
    assert 1e6 < peak < 20e6, f"peak traced memory {peak / 1e6:.1f} MB"


@needs_ffmpeg
def test_channel_layout_change_mid_stream(tmp_path):
    """Two ADTS AAC streams glued together (mono, then stereo) decode as one mono output."""
    mono = ffmpeg_encode(write_sf(tmp_path / "m.wav", sine(44100, 1.0, 1), 44100, "PCM_16"),
                         tmp_path / "m.aac", "-c:a", "aac")
    stereo = ffmpeg_encode(write_sf(tmp_path / "s.wav", sine(44100, 1.0, 2), 44100, "PCM_16"),
                           tmp_path / "s.aac", "-c:a", "aac")
    (tmp_path / "both.aac").write_bytes(mono.read_bytes() + stereo.read_bytes())
    res = transcode_file(tmp_path / "both.aac", tmp_path / "out.flac")
    assert 2.0 <= res.duration <= 2.0 + 6 * 1024 / 44100     # + priming/padding of both parts
