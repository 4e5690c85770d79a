"""Names and limits every part of the shard writer agrees on: the layout of a split folder."""
from __future__ import annotations

import json
import re
import tarfile
from typing import Any

from .. import defaults
from ..records import Status

DEFAULT_SEED = defaults.SEED
DEFAULT_TEST_FRACTION = defaults.TEST_FRACTION
DEFAULT_SAMPLES_PER_SHARD = defaults.SAMPLES_PER_SHARD
SAMPLE_RATE = 48000                # what CLAP expects; it never resamples

SIZES_NAME = "sizes.json"
INDEX_NAME = "index.json"
RECEIPTS_DIR = ".receipts"
INDEX_FORMAT = "laion-audio-shard-index"
#: Bump when the bytes a given plan produces change (tar layout, JSON keys); old receipts then
#: no longer match and every tar is rewritten.
WRITER_VERSION = 1

READY_STATUSES = (Status.TRANSCODED, Status.CAPTIONED, Status.SHARDED)
STAGE = "shard"

_TAR_FORMAT = tarfile.USTAR_FORMAT
_BLOCK = tarfile.BLOCKSIZE            # 512
_RECORD = tarfile.RECORDSIZE          # 10240: tarfile pads the archive to a multiple of this
_MEMBER_MODE = 0o644
_SAFE_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHARD_NAME = re.compile(r"^(\d+)\.tar$")


class ShardError(RuntimeError):
    """The run cannot go on (bad arguments, an input changed under us, storage failure)."""



def dumps(doc: Any) -> bytes:
    """Index/receipt JSON: sorted keys, so the bytes are stable."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def is_temp_name(name: str) -> bool:
    """A tar or receipt being written (``.<name>.tmp-<pid>``); left behind only by a killed run."""
    return name.startswith(".") and ".tmp-" in name
