"""The transcode stage: any audio file -> 48 kHz mono FLAC, its PCM hash and facts.

- ``audio.py``: one file, in-process (libsndfile/PyAV decode streamed in blocks, mean down-mix,
  soxr HQ resampling, the bit-depth rule, lossless integrity checks, typed failures, atomic
  write).
- ``stage.py``: the stage over record batches as the stage table runs it (``transcode_batch``),
  Ray-free; fills a record's audio facts or a typed ``transcode`` failure; the raw-file keep
  policy (``release_raw``).
"""
from .audio import TranscodeOptions, pcm_sha256_of_file, transcode_file
from .stage import STAGE, flac_path_for, release_raw, transcode_batch, transcode_record

__all__ = ["TranscodeOptions", "pcm_sha256_of_file", "transcode_file", "STAGE", "flac_path_for",
           "release_raw", "transcode_batch", "transcode_record"]
