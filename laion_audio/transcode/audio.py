"""Decode any real-world audio file in-process and write it as 48 kHz mono FLAC.

One function does the job: :func:`transcode_file`. It streams the input in blocks through
decode -> down-mix (mean of channels) -> soxr resample (HQ) -> quantise -> FLAC, so memory
stays bounded (a few MB) whatever the length, channel count or rate of the input.

Decoders (measured on the Debian sound files, see ``benchmarks/transcode.py``):

* libsndfile (``soundfile``) for PCM containers (WAV 8/16/24/32-bit int and 32/64-bit float,
  AIFF, ...), FLAC, Ogg Vorbis and MP3: sample-exact, and its header tells us the true length.
  (ffmpeg's Vorbis decoder is ~2x faster than libvorbis but gets the length wrong by up to
  ~30 ms on short clips: it ignores the final granule position. Correct lengths win.)
* PyAV (ffmpeg's decoders, in-process) for Opus (libsndfile 1.2 rejects ffmpeg-written Opus
  mid-stream), for everything libsndfile cannot open: M4A/AAC, WebM/Matroska (what yt-dlp
  returns), ..., and as a second try when libsndfile fails part-way through a file.

Bit-depth rule (what LAION's ``ffmpeg -i IN -ac 1 -ar 48000 OUT.flac`` did, made explicit):
lossless integer sources of 8 or 16 bits (and mu-law/A-law/ADPCM/GSM, which decode to 16-bit
integers) become 16-bit FLAC (``PCM_16``); everything else
(24/32-bit int, 32/64-bit float, and every lossy codec, whose decoders output float) becomes
24-bit FLAC (``PCM_24``). Quantisation is round-to-nearest with clipping, no dither, so the
output is deterministic.

PCM hash (``audio_sha256``): sha256 over the output samples as little-endian int32, each
sample left-justified to 32 bits, i.e. exactly ``soundfile.read(flac, dtype="int32")[0]``
as ``"<i4"`` bytes (see :func:`pcm_sha256_of_file`). It depends on the samples only, not on
FLAC framing, metadata or compression level, so the same PCM hashes equal in any container.

Truncated input is refused, never salvaged (``truncated_audio``): a file whose header states
more audio than decodes (WAV data chunk larger than the file, FLAC/MP3 cut short) almost always
means an interrupted download, and the fix is to fetch again, not to train on half a clip.

Every failure is a :class:`~laion_audio.records.Failure` with a code from
:class:`~laion_audio.records.FailureCode`. The output is written to a temporary name beside
the target and renamed when complete; on any failure the temporary file is removed.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import soxr

from .. import atomic
from ..records import Failure, FailureCode

try:  # PyAV is a declared dependency; keep the module importable for a clear error if not.
    import av
except ImportError:  # pragma: no cover
    av = None

TARGET_RATE = 48000
#: Frames per decode block: bounds memory (64 Ki frames x 8 ch x 4 B = 2 MB per block); inputs
#: with more channels read proportionally fewer frames per block (a WAV may claim 1,024).
BLOCK_FRAMES = 65536
BLOCK_SAMPLES = BLOCK_FRAMES * 8
#: Resampler output per call is at most about this many samples (1 MB of float32), however
#: large the rate ratio: an input block is fed in slices.
RESAMPLE_OUT_BLOCK = 1 << 18
#: Headers below this sample rate are not audio anyone recorded; they are refused before
#: decoding (``implausible_header``): a 7 KB WAV at 1 Hz would become an hour at 48 kHz.
MIN_PLAUSIBLE_RATE = 1000
#: Output samples (at the target rate) per input byte above which a stated length is refused
#: before decoding (``implausible_header``). Real files stay far below: FLAC of digital silence
#: ~340, 6 kb/s Opus 64, 8-bit 1 kHz WAV upsampled 48; a 1 Hz 16-bit WAV is 24,000.
MAX_SAMPLES_PER_BYTE = 4096
#: libsndfile reports "unknown length" (a FLAC written to a pipe) as 2**63 - 1 frames.
_UNKNOWN_FRAMES = 1 << 62
#: ffmpeg codecs (name prefixes) that are lossless: they decode exactly or fail (``corrupt_audio``).
PYAV_LOSSLESS_PREFIXES = ("pcm_", "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd")
#: libsndfile subtypes that stay 16-bit: integer PCM at <= 16 bits, and the telephony codecs
#: (mu-law, A-law, ADPCM, GSM) whose decoders produce 16-bit integers (as ffmpeg's do).
SIXTEEN_BIT_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16", "DPCM_8", "DPCM_16", "DWVW_12",
                        "DWVW_16", "ALAC_16", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM",
                        "GSM610", "VOX_ADPCM", "G721_32", "G723_24", "G723_40",
                        "NMS_ADPCM_16", "NMS_ADPCM_24", "NMS_ADPCM_32"}
#: libsndfile subtypes we hand to PyAV even though libsndfile opens them (see module doc).
PYAV_PREFERRED_SUBTYPES = {"OPUS"}
#: Subtypes whose length libsndfile can only estimate: allow some slack before "truncated".
LOSSY_SUBTYPES = {"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"}
#: ffmpeg codecs (name prefixes) whose 8/16-bit integer output stays 16-bit: lossless ones and
#: the telephony codecs (pcm_mulaw/alaw, adpcm_*, gsm), as in SIXTEEN_BIT_SUBTYPES.
PYAV_INT16_CODEC_PREFIXES = ("pcm_", "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd",
                             "adpcm_", "gsm")
#: ffmpeg demuxers whose stream length is only an estimate (bitrate x size): not trusted.
ESTIMATED_LENGTH_FORMATS = {"aac", "mp3", "ac3", "eac3", "dts", "mpegts", "mpeg", "adts"}
#: ffmpeg demuxers with an exact length that the decoder overruns (edit lists).
EDIT_LIST_FORMATS = ("mov", "mp4", "m4a", "3gp")
_SUBTYPE_OF_AV_FORMAT = {"u8": "PCM_U8", "s16": "PCM_16", "s32": "PCM_32", "flt": "FLOAT",
                         "dbl": "DOUBLE", "s64": "PCM_64"}
_CODEC_OF_SUBTYPE = {"VORBIS": "vorbis", "OPUS": "opus", "MPEG_LAYER_I": "mp1",
                     "MPEG_LAYER_II": "mp2", "MPEG_LAYER_III": "mp3", "ALAC_16": "alac",
                     "ALAC_20": "alac", "ALAC_24": "alac", "ALAC_32": "alac"}


@dataclass
class TranscodeOptions:
    """Knobs of the transcode stage (defaults follow LAION-Audio-630K where it had a rule).

    ``min_input_rate=16000`` is LAION's source sample-rate floor; ``max_duration=180`` is its
    Freesound rule. ``max_duration`` is checked against the header before decoding when the
    header states a length, and again while decoding (headers lie). ``silence_db``: refuse
    files whose peak is below this many dBFS (e.g. -60); None keeps silent files.
    ``compression_level`` is libsndfile's 0..1 scale (0.5 = libFLAC level 5, ffmpeg's default).
    """

    target_rate: int = TARGET_RATE
    min_duration: float = 0.01
    max_duration: float | None = 4 * 3600.0
    min_input_rate: int | None = None
    silence_db: float | None = None
    compression_level: float = 0.5
    quality: str = "HQ"


@dataclass
class AudioResult:
    """What :func:`transcode_file` wrote and what it learned about the input."""

    flac_path: str
    sha256: str
    duration: float             # seconds of output audio
    frames: int                 # output samples
    input_sample_rate: int
    input_channels: int
    input_codec: str            # e.g. pcm, flac, mp3, vorbis, opus, aac
    input_subtype: str          # libsndfile subtype name (PCM_16, FLOAT, VORBIS, ...)
    output_subtype: str         # PCM_16 or PCM_24
    decoder: str                # "soundfile" or "pyav"
    peak_db: float
    notes: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """An opened input: facts from its header plus a block iterator of float32 (frames, ch)."""

    decoder: str
    sample_rate: int
    channels: int
    codec: str
    subtype: str
    stays_16_bit: bool
    stated_frames: int | None        # what the header says the whole file holds
    blocks: Callable[[int, int | None], Iterator[np.ndarray]]
    close: Callable[[], None]
    #: The stated length is exact and decoding may run past it (MP4 edit lists: AAC encoder
    #: padding after the last real sample). Decoding stops at the stated length.
    stop_at_stated: bool = False
    #: Lossless data: no length slack, a decoder error is ``corrupt_audio`` (no second decoder
    #: that would conceal it).
    lossless: bool = False
    #: After a complete decode from the start: an error message when the data fails its own
    #: check (FLAC STREAMINFO MD5), else None.
    verify: Callable[[], str | None] | None = None


class _DecoderRefused(Exception):
    """libsndfile could not open/decode this file: try PyAV before giving up."""


# --------------------------------------------------------------------------- public helpers
def output_subtype_for(source_subtype: str, stays_16_bit: bool | None = None) -> str:
    """The bit-depth rule: 8/16-bit lossless int stays ``PCM_16``, all else ``PCM_24``."""
    if stays_16_bit is None:
        stays_16_bit = source_subtype in SIXTEEN_BIT_SUBTYPES
    return "PCM_16" if stays_16_bit else "PCM_24"


def pcm_sha256(samples_int32: np.ndarray) -> str:
    """sha256 of left-justified int32 samples as little-endian bytes (the module's definition)."""
    return hashlib.sha256(np.ascontiguousarray(samples_int32, dtype="<i4").tobytes()).hexdigest()


def pcm_sha256_of_file(source) -> str:
    """The PCM hash of any file libsndfile reads (a path or a file object; mono or interleaved),
    for verification; read in blocks, so a long clip costs one block of memory."""
    h = hashlib.sha256()
    with sf.SoundFile(str(source) if isinstance(source, os.PathLike) else source) as handle:
        while True:
            block = handle.read(BLOCK_FRAMES, dtype="int32", always_2d=False)
            if not len(block):
                return h.hexdigest()
            h.update(np.ascontiguousarray(block, dtype="<i4").tobytes())


def read_mono(source, rate: int | None = None,
              max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """A whole file (path or file object) as mono float32 (mean of the channels), resampled
    to ``rate`` with soxr HQ when given, and the file's own rate. The one in-memory read of
    short clips (eval clips, tests, the CLAP loader); long inputs go through the streamed
    readers (:func:`transcode_file`, the fingerprint store's blocks)."""
    if isinstance(source, os.PathLike):
        source = str(source)
    with sf.SoundFile(source) as handle:
        own = handle.samplerate
        frames = -1 if max_seconds is None else int(max_seconds * own)
        x = handle.read(frames, dtype="float32", always_2d=True).mean(axis=1)
    if rate and rate != own and len(x):
        x = soxr.resample(x, own, rate, quality="HQ").astype(np.float32)
    return x, own


def mono_blocks(handle, frames_per_block: int, rate: int | None = None):
    """Mono float32 blocks of an open ``sf.SoundFile`` (the mean of its channels, as
    :func:`read_mono`), resampled to ``rate`` by a soxr HQ stream when given: the one streamed
    decode of a whole clip (fingerprints, ``verify``), so memory stays one block however long
    the clip. A corrupt frame raises from the read."""
    resampler = (soxr.ResampleStream(handle.samplerate, rate, 1, dtype="float32", quality="HQ")
                 if rate and rate != handle.samplerate else None)
    while True:
        block = handle.read(frames_per_block, dtype="float32", always_2d=True)
        if not len(block):
            break
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0].copy()
        yield resampler.resample_chunk(mono) if resampler is not None else mono
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def temp_path_for(final: Path) -> Path:
    """Deterministic temporary name beside ``final``: a rerun overwrites a stale one."""
    return final.with_name(f".{final.name}.partial")


# --------------------------------------------------------------------------- opening inputs
def block_frames(channels: int) -> int:
    """Frames per decode block for ``channels``: about BLOCK_SAMPLES samples, at least 1024."""
    return max(1024, min(BLOCK_FRAMES, BLOCK_SAMPLES // max(1, channels)))


def flac_streaminfo(path: str) -> dict | None:
    """STREAMINFO of a native FLAC file (after an optional ID3v2 tag): ``rate``, ``channels``,
    ``bits``, ``total`` (0 = not stated: written to a pipe) and ``md5`` (hex; all zeros = not
    computed). None when the file does not start like a FLAC."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
            offset = 0
            if head[:3] == b"ID3" and len(head) == 10:
                offset = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14
                               | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
            fh.seek(offset)
            data = fh.read(42)
    except OSError:
        return None
    if len(data) < 42 or data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        return None
    info = data[8:42]
    packed = int.from_bytes(info[10:18], "big")
    return {"rate": packed >> 44, "channels": ((packed >> 41) & 0x7) + 1,
            "bits": ((packed >> 36) & 0x1F) + 1, "total": packed & ((1 << 36) - 1),
            "md5": info[18:34].hex()}


def _open_soundfile(path: str) -> _Source:
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise _DecoderRefused(str(exc)) from exc
    subtype = handle.subtype
    # libsndfile's "unknown length" (2**63 - 1: FLAC written to a pipe) is no length at all
    frames = handle.frames if 0 < handle.frames < _UNKNOWN_FRAMES else None
    fmt = handle.format
    if subtype.startswith("PCM") or subtype in ("FLOAT", "DOUBLE"):
        codec = "flac" if fmt == "FLAC" else "pcm"
    else:
        codec = _CODEC_OF_SUBTYPE.get(subtype, subtype.lower())
    lossless = codec in ("flac", "pcm") or subtype.startswith("ALAC")
    streaminfo = flac_streaminfo(path) if fmt == "FLAC" else None
    if streaminfo is not None and streaminfo["total"] == 0:
        frames = None
    # the FLAC MD5 is over the samples as integers of the stated width: read them as int32
    # (left-justified) and derive the same float32 values libsndfile gives (exact: x / 2**31)
    md5 = None
    if (streaminfo is not None and streaminfo["md5"].strip("0")
            and streaminfo["bits"] in (8, 16, 24, 32) and streaminfo["channels"] == handle.channels):
        md5 = {"want": streaminfo["md5"], "bits": streaminfo["bits"], "hash": hashlib.md5(),
               "whole": False}
    _check_wav_data_chunk(handle)
    per_block = block_frames(handle.channels)

    def blocks(start: int, stop: int | None) -> Iterator[np.ndarray]:
        if start:
            handle.seek(start)
        if md5 is not None:
            md5["whole"] = start == 0 and stop is None
        remaining = None if stop is None else max(0, stop - start)
        while remaining is None or remaining > 0:
            want = per_block if remaining is None else min(per_block, remaining)
            if md5 is not None and md5["whole"]:
                ints = handle.read(want, dtype="int32", always_2d=True)
                if len(ints) == 0:
                    return
                _md5_update(md5, ints)
                block = ints.astype(np.float32)
                block *= np.float32(1 / 2147483648)
            else:
                block = handle.read(want, dtype="float32", always_2d=True)
                if len(block) == 0:
                    return
            if remaining is not None:
                remaining -= len(block)
            yield block

    def verify() -> str | None:
        if md5 is None or not md5["whole"]:
            return None
        got = md5["hash"].hexdigest()
        if got != md5["want"]:
            return f"decoded samples do not match the FLAC's MD5 ({got} != {md5['want']})"
        return None

    return _Source("soundfile", handle.samplerate, handle.channels, codec, subtype,
                   subtype in SIXTEEN_BIT_SUBTYPES, frames, blocks, handle.close,
                   lossless=lossless, verify=verify)


def _md5_update(md5: dict, ints: np.ndarray) -> None:
    """FLAC's MD5 input: interleaved little-endian signed samples of ``bits`` / 8 bytes."""
    bits = md5["bits"]
    if bits == 32:
        md5["hash"].update(np.ascontiguousarray(ints, dtype="<i4").tobytes())
        return
    shifted = ints >> (32 - bits)
    if bits == 16:
        md5["hash"].update(shifted.astype("<i2").tobytes())
    elif bits == 8:
        md5["hash"].update(shifted.astype("i1").tobytes())
    else:   # 24-bit: the low three bytes of each little-endian int32
        md5["hash"].update(np.ascontiguousarray(shifted, dtype="<i4").view(np.uint8)
                           .reshape(-1, 4)[:, :3].tobytes())


_WAV_DATA_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_wav_data_chunk(handle: sf.SoundFile) -> None:
    """A WAV whose data chunk claims more bytes than the file holds was cut short.

    libsndfile silently clamps the length (and logs "should be N"); we refuse instead.
    Streamed WAVs write 0 or 0xFFFFFFFF as the size on purpose: those are fine."""
    if handle.format not in ("WAV", "WAVEX", "RF64", "W64"):
        return
    match = _WAV_DATA_RE.search(handle.extra_info)
    if not match:
        return
    claimed, present = int(match.group(1)), int(match.group(2))
    block_align = max(1, handle.channels) * 8  # generous: one frame of up to 64-bit samples
    if claimed in (0, 0xFFFFFFFF, 0x7FFFFFFF) or claimed - present <= block_align:
        return
    handle.close()
    raise Failure(FailureCode.TRUNCATED_AUDIO,
                  f"WAV header claims {claimed} bytes of audio but only {present} are present")


def _av_block_to_float(raw: np.ndarray, fmt_name: str, planar: bool,
                       channels: int) -> np.ndarray:
    """Concatenated PyAV ``to_ndarray`` output as float32 (frames, channels)."""
    arr = raw.T if planar else raw.reshape(-1, channels)   # (ch, n) or (1, n*ch) -> (n, ch)
    name = fmt_name.rstrip("p")
    if name == "flt":
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)
    if name == "dbl":
        return arr.astype(np.float32)
    if name == "s16":
        return arr.astype(np.float32) * np.float32(1 / 32768)
    if name == "s32":
        return (arr.astype(np.float64) * (1 / 2147483648)).astype(np.float32)
    if name == "u8":
        return (arr.astype(np.float32) - 128) * np.float32(1 / 128)
    if name == "s64":
        return (arr.astype(np.float64) * (1 / 9223372036854775808)).astype(np.float32)
    raise Failure(FailureCode.UNDECODABLE, f"unsupported decoded sample format {fmt_name}")


def _open_pyav(path: str, stated: tuple[int, int] | None) -> _Source:
    """Open with PyAV; ``stated`` is libsndfile's (frames, rate) when it read the header."""
    if av is None:  # pragma: no cover
        raise Failure(FailureCode.UNDECODABLE, "libsndfile cannot read it and PyAV is missing")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise Failure(FailureCode.UNDECODABLE, f"not a readable audio file ({exc})") from exc
    if not container.streams.audio:
        container.close()
        raise Failure(FailureCode.UNDECODABLE, "no audio stream in the file")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    rate = int(ctx.sample_rate or stream.rate or 0)
    channels = int(ctx.channels or 0)
    if rate <= 0 or channels <= 0:
        container.close()
        raise Failure(FailureCode.UNDECODABLE, "audio stream without sample rate or channels")
    codec = ctx.name
    fmt_name = ctx.format.name.rstrip("p") if ctx.format is not None else ""
    subtype = ("VORBIS" if codec == "vorbis" else "OPUS" if codec == "opus"
               else _SUBTYPE_OF_AV_FORMAT.get(fmt_name, fmt_name.upper()))
    stays_16_bit = codec.startswith(PYAV_INT16_CODEC_PREFIXES) and fmt_name in ("u8", "s16")
    lossless = codec.startswith(PYAV_LOSSLESS_PREFIXES)
    if lossless:   # check frame CRCs and stop at the first bad one instead of concealing it
        ctx.options = {"err_detect": "crccheck+explode"}
    stated_frames = None if stated is None else int(round(stated[0] * rate / stated[1]))
    demuxers = set(container.format.name.split(","))
    exact_length = not demuxers & ESTIMATED_LENGTH_FORMATS
    if stated_frames is None and exact_length and stream.duration and stream.time_base:
        stated_frames = int(round(float(stream.duration * stream.time_base) * rate))
    stop_at_stated = stated_frames is not None and bool(demuxers & set(EDIT_LIST_FORMATS))

    def blocks(start: int, stop: int | None) -> Iterator[np.ndarray]:
        if start:
            # Seek to (before) the start; frames carry pts, so we cut sample-exactly.
            container.seek(int(start / rate / stream.time_base), stream=stream, backward=True)
            frames = container.decode(stream)
            first = next(frames, None)
            if first is None or first.pts is None or _pts_frames(first, rate) > start:
                # Landed after the start (or no timestamps): decode from the top instead.
                fresh = av.open(path, metadata_errors="ignore")
                if lossless:
                    fresh.streams.audio[0].codec_context.options = {"err_detect": "crccheck+explode"}
                try:
                    yield from _cut(fresh.decode(fresh.streams.audio[0]), None, 0, start, stop,
                                    rate, lossless)
                finally:
                    fresh.close()
                return
            yield from _cut(frames, first, _pts_frames(first, rate), start, stop, rate, lossless)
        else:
            yield from _cut(container.decode(stream), None, 0, start, stop, rate, lossless)

    return _Source("pyav", rate, channels, codec, subtype, stays_16_bit, stated_frames,
                   blocks, container.close, stop_at_stated, lossless=lossless)


def _pts_frames(frame, rate: int) -> int:
    return int(round(float(frame.pts * frame.time_base) * rate))


def _cut(frames, first_frame, position: int, start: int, stop: int | None,
         rate: int, lossless: bool = False) -> Iterator[np.ndarray]:
    """Gather decoded PyAV frames into ~BLOCK_FRAMES blocks, keeping input frames [start, stop).

    Raw frame arrays are converted and down-mixed per block, not per frame (a frame is only
    ~1024 samples: per-frame numpy calls cost as much as the decoding). A change of sample
    format or channel layout mid-stream (AAC, broadcast captures) just starts a new block; a
    sample-rate change is refused. Blocks come out down-mixed, shape (n, 1). For a lossless
    codec, a jump in the timestamps (ffmpeg dropped a corrupt frame and went on) is
    ``corrupt_audio``."""
    pending: list[np.ndarray] = []
    pending_key = None
    pending_frames = 0
    next_pts: int | None = None

    def flush() -> np.ndarray:
        fmt_name, planar, channels = pending_key
        raw = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        return _downmix(_av_block_to_float(raw, fmt_name, planar, channels))[:, None]

    def all_frames():
        if first_frame is not None:
            yield first_frame
        yield from frames

    for frame in all_frames():
        if frame.sample_rate and frame.sample_rate != rate:
            raise Failure(FailureCode.UNDECODABLE, f"sample rate changes mid-stream "
                          f"({rate} -> {frame.sample_rate} Hz)")
        count = frame.samples
        if lossless:
            if frame.pts is None:
                if next_pts is not None:
                    raise Failure(FailureCode.CORRUPT_AUDIO, "lossless stream loses its "
                                  f"timestamps at {next_pts / rate:.3f} s (corrupt frames)")
            else:
                at = _pts_frames(frame, rate)
                tol = 1 + int(rate * float(frame.time_base))   # ms timestamps (Matroska)
                if next_pts is not None and abs(at - next_pts) > tol:
                    raise Failure(FailureCode.CORRUPT_AUDIO, f"lossless stream jumps from "
                                  f"{next_pts / rate:.3f} s to {at / rate:.3f} s (corrupt frames)")
                next_pts = at + count
        lo = max(0, start - position)
        hi = count if stop is None else min(count, stop - position)
        position += count
        if hi > lo:
            fmt = frame.format
            key = (fmt.name, fmt.is_planar, len(frame.layout.channels) or 1)
            if pending and key != pending_key:
                yield flush()
                pending, pending_frames = [], 0
            raw = frame.to_ndarray()
            if lo or hi < count:
                raw = raw[:, lo:hi] if key[1] else raw[:, lo * key[2]:hi * key[2]]
            pending.append(raw)
            pending_key = key
            pending_frames += hi - lo
        if pending_frames >= BLOCK_FRAMES:
            yield flush()
            pending, pending_frames = [], 0
        if stop is not None and position >= stop:
            break
    if pending:
        yield flush()


class _DecodeError(Exception):
    """The decoder failed part-way: the data is damaged (or this decoder dislikes it)."""


# --------------------------------------------------------------------------- the pipeline
def _downmix(block: np.ndarray) -> np.ndarray:
    """Mean of the channels, float32 (column adds: much faster than ``mean(axis=1)``)."""
    channels = block.shape[1]
    if channels == 1:
        return np.ascontiguousarray(block[:, 0])
    mono = block[:, 0] + block[:, 1]
    for c in range(2, channels):
        mono += block[:, c]
    mono *= np.float32(1.0 / channels)
    return mono


class _UnsyncedSoundFile(sf.SoundFile):
    """``SoundFile.close`` calls ``sf_write_sync``, an fsync per file: 2 ms a clip, half the
    cost of a short clip. ffmpeg does not fsync either; the file is renamed into place only
    after ``sf_close`` finished it, so a killed process never leaves a half file under the
    final name (power loss is what ``laion-audio verify`` is for)."""

    def flush(self) -> None:
        pass


class _FlacSink:
    """Quantises float blocks, hashes them and writes them to the temporary FLAC."""

    def __init__(self, path: Path, rate: int, subtype: str, compression_level: float):
        self.bits = 16 if subtype == "PCM_16" else 24
        self.scale = np.float32(2 ** (self.bits - 1))
        self.shift = 32 - self.bits
        self.hasher = hashlib.sha256()
        self.frames = 0
        self.peak = 0.0
        self.file = _UnsyncedSoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC",
                                 subtype=subtype, compression_level=compression_level)

    def write(self, mono: np.ndarray) -> None:
        if len(mono) == 0:
            return
        self.peak = max(self.peak, float(np.max(np.abs(mono))))
        scaled = np.rint(mono * self.scale)
        np.clip(scaled, -self.scale, self.scale - 1, out=scaled)
        ints = scaled.astype(np.int32)
        ints <<= self.shift
        self.hasher.update(ints.astype("<i4", copy=False).tobytes())
        self.file.write(ints)
        self.frames += len(ints)

    def close(self) -> None:
        self.file.close()


def _window(start: float | None, end: float | None, rate: int,
            stated_frames: int | None) -> tuple[int, int | None]:
    """Trim window in input frames; refuses windows that cannot hold audio."""
    if start is None and end is None:
        return 0, None
    s = 0.0 if start is None else float(start)
    if not math.isfinite(s) or s < 0 or (end is not None and not math.isfinite(float(end))):
        raise Failure(FailureCode.BAD_TRIM, f"trim window start={start} end={end} is invalid")
    if end is not None and float(end) <= s:
        raise Failure(FailureCode.BAD_TRIM, f"trim window end {end} is not after start {s}")
    first = int(round(s * rate))
    stop = None if end is None else int(round(float(end) * rate))
    if stated_frames is not None:
        if first >= stated_frames:
            raise Failure(FailureCode.BAD_TRIM, f"trim start {s:.3f} s is past the end of the "
                          f"audio ({stated_frames / rate:.3f} s)")
        if stop is not None:
            stop = min(stop, stated_frames)   # an end past the file end clamps, like ffmpeg -to
    return first, stop


def _check_header(src: _Source, first: int, stop: int | None, options: TranscodeOptions,
                  input_bytes: int | None = None) -> None:
    if src.sample_rate < MIN_PLAUSIBLE_RATE:
        raise Failure(FailureCode.IMPLAUSIBLE_HEADER, f"header states {src.sample_rate} Hz, "
                      f"below {MIN_PLAUSIBLE_RATE} Hz: not a real recording")
    if src.stated_frames is not None and input_bytes:
        end = src.stated_frames if stop is None else min(stop, src.stated_frames)
        out_samples = (end - first) * options.target_rate / src.sample_rate
        if out_samples > MAX_SAMPLES_PER_BYTE * input_bytes:
            raise Failure(FailureCode.IMPLAUSIBLE_HEADER, f"header states {end - first} frames "
                          f"at {src.sample_rate} Hz: {out_samples / input_bytes:.0f} output "
                          f"samples per input byte (limit {MAX_SAMPLES_PER_BYTE})")
    if options.min_input_rate and src.sample_rate < options.min_input_rate:
        raise Failure(FailureCode.LOW_SAMPLE_RATE, f"input sample rate {src.sample_rate} Hz is "
                      f"below the {options.min_input_rate} Hz floor")
    if options.max_duration is not None and src.stated_frames is not None:
        end = src.stated_frames if stop is None else min(stop, src.stated_frames)
        seconds = (end - first) / src.sample_rate
        if seconds > options.max_duration:
            raise Failure(FailureCode.TOO_LONG, f"{seconds:.1f} s of audio (header) exceeds "
                          f"max_duration {options.max_duration:.0f} s")


def _run(src: _Source, tmp: Path, first: int, stop: int | None,
         options: TranscodeOptions) -> tuple[_FlacSink, int]:
    """Decode -> down-mix -> resample -> write. Returns the sink and input frames consumed."""
    out_subtype = output_subtype_for(src.subtype, src.stays_16_bit)
    rate_in, rate_out = src.sample_rate, options.target_rate
    resampler = (soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32",
                                     quality=options.quality) if rate_in != rate_out else None)
    max_in = (None if options.max_duration is None
              else int(options.max_duration * rate_in) + 1)
    sink = _FlacSink(tmp, rate_out, out_subtype, options.compression_level)
    step = max(1, RESAMPLE_OUT_BLOCK * rate_in // rate_out)
    consumed = 0
    try:
        blocks = src.blocks(first, stop)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except Failure:
                raise
            except Exception as exc:  # noqa: BLE001 - any decoder error means damaged data
                raise _DecodeError(f"{type(exc).__name__}: {exc}") from exc
            mono = _downmix(block)
            if not np.isfinite(mono).all():
                bad = consumed + int(np.argmin(np.isfinite(mono)))
                raise Failure(FailureCode.NONFINITE, f"NaN or infinite sample at "
                              f"{(first + bad) / rate_in:.3f} s")
            consumed += len(mono)
            if max_in is not None and consumed > max_in:
                raise Failure(FailureCode.TOO_LONG, f"decoded more than max_duration "
                              f"{options.max_duration:.0f} s of audio")
            if resampler is None:
                sink.write(mono)
            else:   # slices: the output of one call stays ~1 MB whatever the rate ratio
                for i in range(0, len(mono), step):
                    sink.write(resampler.resample_chunk(mono[i:i + step]))
        if resampler is not None:
            sink.write(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    finally:
        sink.close()
    return sink, consumed


def _is_truncated(src: _Source, first: int, stop: int | None, consumed: int) -> str | None:
    if src.stated_frames is None:
        return None
    expected = (src.stated_frames if stop is None else min(stop, src.stated_frames)) - first
    slack = 0
    if src.lossless:
        if src.decoder == "pyav":
            # container lengths are rounded (Matroska: 1 ms; CAF: whole 4096-frame packets);
            # dropped frames are caught by the timestamp check in _cut instead
            slack = 4608 + src.sample_rate // 1000
    elif src.subtype in LOSSY_SUBTYPES or src.decoder == "pyav":
        slack = 4608 + expected // 50   # lossy lengths are estimates (priming, padding)
    if consumed + slack < expected:
        return (f"decoded {consumed / src.sample_rate:.3f} s but the header states "
                f"{expected / src.sample_rate:.3f} s")
    return None


def transcode_file(src_path: str | os.PathLike, dst_path: str | os.PathLike,
                   options: TranscodeOptions | None = None, *, start: float | None = None,
                   end: float | None = None) -> AudioResult:
    """Transcode one file to mono FLAC at ``options.target_rate``; raise :class:`Failure`.

    ``start``/``end`` (seconds) trim the input; the decoder seeks where it can. ``dst_path``
    appears only when complete (written as ``.NAME.partial`` beside it, then renamed)."""
    options = options or TranscodeOptions()
    src_path, dst = os.fspath(src_path), Path(dst_path)
    try:
        size = os.stat(src_path).st_size
    except FileNotFoundError:
        raise Failure(FailureCode.MISSING_FILE, f"input file does not exist: {src_path}")
    except OSError as exc:
        raise Failure(FailureCode.MISSING_FILE, f"cannot stat input file: {exc}")
    if size == 0:
        raise Failure(FailureCode.EMPTY_FILE, "input file has zero bytes")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dst)
    notes: list[str] = []
    try:
        try:
            src = _open_soundfile(src_path)
            unstated_flac = src.codec == "flac" and src.stated_frames is None
            if (src.subtype in PYAV_PREFERRED_SUBTYPES or unstated_flac) and av is not None:
                # a FLAC without a length (written to a pipe): libsndfile cannot read it
                # ("psf_fseek() failed"); ffmpeg's decoder can, with timestamp checks
                src.close()
                src = _open_pyav(src_path, _stated(src))
        except _DecoderRefused as refused:
            notes.append(f"libsndfile: {refused}")
            src = _open_pyav(src_path, None)
        try:
            result = _transcode_source(src, tmp, start, end, options, notes, size)
        except _DecodeError as exc:
            if src.lossless:
                # libFLAC found a bad CRC or lost sync: ffmpeg would conceal it, we refuse.
                # A file cut short fails the same way at its end: its last frames are missing.
                if src.stated_frames is not None and not _tail_decodes(src_path, src.stated_frames):
                    raise _damaged(src, str(exc)) from exc
                raise Failure(FailureCode.CORRUPT_AUDIO, f"lossless data does not decode "
                              f"({exc})") from exc
            if src.decoder != "soundfile" or av is None:
                raise _damaged(src, str(exc)) from exc
            # libsndfile failed mid-stream: ffmpeg's decoders get one try on the same file.
            notes.append(f"libsndfile failed mid-stream ({exc}); decoded with PyAV")
            src.close()
            src = _open_pyav(src_path, _stated(src))
            try:
                result = _transcode_source(src, tmp, start, end, options, notes, size)
            except _DecodeError as exc2:
                raise _damaged(src, str(exc2)) from exc2
        finally:
            src.close()
        atomic.publish(tmp, dst)
        result.flac_path = str(dst)
        return result
    finally:
        if tmp.exists():
            tmp.unlink()


def _tail_decodes(path: str, stated_frames: int, tail: int = 1024) -> bool:
    """True when the last ``tail`` frames the header states decode: damage lies before them
    (corrupt data), not at the end (a file cut short)."""
    try:
        with sf.SoundFile(path) as handle:
            start = max(0, stated_frames - tail)
            handle.seek(start)
            got = 0
            while True:
                block = handle.read(tail, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                got += len(block)
            return got == stated_frames - start
    except Exception:  # noqa: BLE001 - any decoder error here means the tail is damaged
        return False


def _stated(src: _Source) -> tuple[int, int] | None:
    return None if src.stated_frames is None else (src.stated_frames, src.sample_rate)


def _damaged(src: _Source, message: str) -> Failure:
    if src.stated_frames is not None:
        return Failure(FailureCode.TRUNCATED_AUDIO, f"decoding stopped early ({message})")
    return Failure(FailureCode.UNDECODABLE, f"corrupt audio data ({message})")


def _transcode_source(src: _Source, tmp: Path, start, end, options: TranscodeOptions,
                      notes: list[str], input_bytes: int | None = None) -> AudioResult:
    if src.sample_rate < MIN_PLAUSIBLE_RATE:   # before _window divides by it
        _check_header(src, 0, None, options, input_bytes)
    first, stop = _window(start, end, src.sample_rate, src.stated_frames)
    if src.stop_at_stated:
        stop = src.stated_frames if stop is None else min(stop, src.stated_frames)
    _check_header(src, first, stop, options, input_bytes)
    sink, consumed = _run(src, tmp, first, stop, options)
    if first > 0 and consumed == 0:
        raise Failure(FailureCode.BAD_TRIM, f"trim start {start} s is past the end of the audio")
    truncated = _is_truncated(src, first, stop, consumed)
    if truncated:
        raise Failure(FailureCode.TRUNCATED_AUDIO, truncated)
    if src.verify is not None:
        bad = src.verify()
        if bad:
            raise Failure(FailureCode.CORRUPT_AUDIO, bad)
    duration = sink.frames / options.target_rate
    if duration < options.min_duration:
        raise Failure(FailureCode.TOO_SHORT, f"{duration:.4f} s of audio is shorter than "
                      f"min_duration {options.min_duration} s")
    peak_db = 20 * math.log10(sink.peak) if sink.peak > 0 else -math.inf
    if options.silence_db is not None and peak_db < options.silence_db:
        raise Failure(FailureCode.SILENT, f"peak level {peak_db:.1f} dBFS is below the "
                      f"silence threshold {options.silence_db} dBFS")
    return AudioResult(
        flac_path="", sha256=sink.hasher.hexdigest(), duration=duration, frames=sink.frames,
        input_sample_rate=src.sample_rate, input_channels=src.channels, input_codec=src.codec,
        input_subtype=src.subtype, output_subtype=f"PCM_{sink.bits}", decoder=src.decoder,
        peak_db=peak_db, notes=notes)
