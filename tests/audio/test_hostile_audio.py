"""Hostile audio (issue 10 items 11 and 13, issue 11 item 7): lossless data decodes exactly or
fails ``corrupt_audio`` (no error concealment, STREAMINFO MD5 checked), a FLAC without a stated
length is read in full, headers that would expand a few KB into hours are refused before
decoding, and a long clip streams in bounded memory."""
from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from laion_audio.transcode.audio import MAX_SAMPLES_PER_BYTE, flac_streaminfo, transcode_file
from laion_audio.records import Failure, FailureCode

from .conftest import FFMPEG, leftovers, needs_ffmpeg, sine, write_sf

REPO = Path(__file__).resolve().parents[2]
#: the child's own peak RSS: VmHWM of its address space (ru_maxrss would also count the pytest
#: process it was forked from, which Linux carries over into the child's maxrss at exec)
PEAK = ("def peak_kb():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n")


def fails(src, tmp_path) -> Failure:
    out = tmp_path / "out"
    with pytest.raises(Failure) as info:
        transcode_file(src, out / "x.flac")
    assert leftovers(out) == [] if out.exists() else True
    return info.value


def noise_flac(path: Path, seconds: float, rate: int = 48000) -> Path:
    x = np.random.default_rng(3).uniform(-0.5, 0.5, int(seconds * rate))
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


def damage(src: Path, dst: Path, nbytes: int, at: float = 0.5) -> Path:
    data = bytearray(src.read_bytes())
    i = int(len(data) * at)
    data[i:i + nbytes] = bytes(random.Random(1).randrange(256) for _ in range(nbytes))
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("seconds,nbytes", [(1.0, 200), (10.0, 3000)])
def test_corrupt_flac_is_corrupt_audio_not_a_shorter_clip(tmp_path, seconds, nbytes):
    good = noise_flac(tmp_path / "good.flac", seconds)
    assert transcode_file(good, tmp_path / "ok.flac").duration == seconds
    bad = damage(good, tmp_path / "bad.flac", nbytes)
    assert fails(bad, tmp_path).code == FailureCode.CORRUPT_AUDIO


@pytest.mark.parametrize("seed", range(4))
def test_scattered_damage_never_passes(tmp_path, seed):
    good = noise_flac(tmp_path / "good.flac", 2.0)
    data = bytearray(good.read_bytes())
    rng = random.Random(seed)
    for _ in range(50):
        i = rng.randrange(100, len(data))
        data[i] ^= 1 << rng.randrange(8)
    (tmp_path / "bad.flac").write_bytes(bytes(data))
    assert fails(tmp_path / "bad.flac", tmp_path).code in (FailureCode.CORRUPT_AUDIO,
                                                           FailureCode.TRUNCATED_AUDIO)


def test_flac_md5_mismatch_is_corrupt_audio(tmp_path):
    good = noise_flac(tmp_path / "good.flac", 1.0)
    info = flac_streaminfo(str(good))
    assert info["total"] == 48000 and info["bits"] == 16 and info["md5"].strip("0")
    data = bytearray(good.read_bytes())
    data[26:42] = bytes(16 - i for i in range(16))        # STREAMINFO MD5 (valid frames, wrong sum)
    (tmp_path / "md5.flac").write_bytes(bytes(data))
    failure = fails(tmp_path / "md5.flac", tmp_path)
    assert failure.code == FailureCode.CORRUPT_AUDIO and "MD5" in failure.message


@pytest.mark.parametrize("subtype", ["PCM_S8", "PCM_16", "PCM_24"])
def test_md5_of_good_flacs_matches_and_output_is_unchanged(tmp_path, subtype):
    src = write_sf(tmp_path / "a.flac", sine(44100, 0.7, 2), 44100, subtype)
    res = transcode_file(src, tmp_path / "out.flac")
    data = bytearray(src.read_bytes())
    data[26:42] = bytes(16)                               # "MD5 not computed": float read path
    (tmp_path / "nomd5.flac").write_bytes(bytes(data))
    assert res.sha256 == transcode_file(tmp_path / "nomd5.flac", tmp_path / "out2.flac").sha256


@needs_ffmpeg
def test_flac_written_to_a_pipe_has_no_length_and_is_read_in_full(tmp_path):
    wav = write_sf(tmp_path / "a.wav", sine(48000, 1.5), 48000, "PCM_16")
    piped = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(wav), "-f", "flac",
                            "pipe:1"], check=True, capture_output=True).stdout
    (tmp_path / "pipe.flac").write_bytes(piped)
    assert flac_streaminfo(str(tmp_path / "pipe.flac"))["total"] == 0
    res = transcode_file(tmp_path / "pipe.flac", tmp_path / "out.flac")
    assert res.frames == 72000
    # the same file with damage in the middle: ffmpeg would conceal it, we refuse
    damage(tmp_path / "pipe.flac", tmp_path / "pipe_bad.flac", 300)
    assert fails(tmp_path / "pipe_bad.flac", tmp_path).code == FailureCode.CORRUPT_AUDIO


@needs_ffmpeg
def test_empty_flac_is_too_short_not_too_long(tmp_path):
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "anullsrc=r=48000:cl=mono", "-t", "0", "-c:a", "flac",
                    str(tmp_path / "empty.flac")], check=True)
    assert fails(tmp_path / "empty.flac", tmp_path).code == FailureCode.TOO_SHORT


@needs_ffmpeg
def test_corrupt_flac_in_matroska_is_corrupt_audio(tmp_path):
    good = noise_flac(tmp_path / "good.flac", 10.0)
    mka = tmp_path / "a.mka"
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(good), "-c:a", "flac",
                    str(mka)], check=True)
    assert transcode_file(mka, tmp_path / "ok.flac").frames == 480000
    assert fails(damage(mka, tmp_path / "bad.mka", 3000), tmp_path).code == FailureCode.CORRUPT_AUDIO


def _wav(path: Path, rate: int, samples: np.ndarray) -> Path:
    raw = samples.astype("<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
              + b"data" + struct.pack("<I", len(raw)))
    path.write_bytes(header + raw)
    return path


def test_one_hertz_wav_is_refused_before_decoding(tmp_path):
    """7 KB at 1 Hz claims an hour: it took 3.7 GB of memory to turn it into 48 kHz."""
    src = _wav(tmp_path / "bomb.wav", 1, np.arange(3500) % 2000)
    assert src.stat().st_size < 8000
    assert fails(src, tmp_path).code == FailureCode.IMPLAUSIBLE_HEADER


def test_header_claiming_far_more_audio_than_bytes_is_refused(tmp_path):
    good = noise_flac(tmp_path / "good.flac", 0.5)
    data = bytearray(good.read_bytes())
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | (1 << 34)     # STREAMINFO: 2**34 samples (99 h)
    data[18:26] = packed.to_bytes(8, "big")
    (tmp_path / "claims.flac").write_bytes(bytes(data))
    assert (1 << 34) > MAX_SAMPLES_PER_BYTE * len(data)
    failure = fails(tmp_path / "claims.flac", tmp_path)
    assert failure.code == FailureCode.IMPLAUSIBLE_HEADER


@pytest.mark.slow
def test_long_low_rate_clip_streams_in_bounded_memory(tmp_path):
    """30 min at 8 kHz becomes 86 M samples at 48 kHz (345 MB as float32): peak memory of the
    whole process stays far below that because decode, resample and encode run in blocks."""
    src = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(src), "w", 8000, 1, "PCM_16") as fh:
        for _ in range(30):
            fh.write((rng.standard_normal(8000 * 60) * 0.1).astype(np.float32))
    code = (PEAK + "import sys; from laion_audio.transcode.audio import transcode_file;"
            "r = transcode_file(sys.argv[1], sys.argv[2]);"
            "print(r.frames, peak_kb())")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out.flac")],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    frames, maxrss_kb = int(out[0]), int(out[1])
    assert frames == 30 * 60 * 48000
    assert maxrss_kb < 300 * 1024, f"peak RSS {maxrss_kb / 1024:.0f} MB"
