"""A content-addressed store of landmark fingerprints, keyed by the decoded-PCM sha256.

Why: fingerprinting is the filter stage's main cost (~35 clips/s/core). With a store, the
fingerprints are computed once per distinct audio, in parallel by the build's workers
(:func:`fingerprint_batch` runs on the executor like any other stage), and a refresh only
fingerprints new audio. The store also lets the near-duplicate check compare new records
with clips that are already in shards without decoding them again.

Layout: ``<root>/<VERSION>/<sha[:2]>/<sha>.npz`` holding hashes, anchor times, frame count
and per-hash strength (band features are recomputed on demand; they are 10x larger).
Writes are atomic (temp file + rename), so a killed run leaves no partial entry, only temp
files that the next run removes before it writes.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..records import Record
from .fingerprint import Fingerprint, fingerprint

log = logging.getLogger(__name__)

#: bump when fingerprint.py changes what it computes: old entries are then simply not found
VERSION = "v1"


def read_mono(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def fingerprint_file(path: str, keep_bands: bool = True) -> Fingerprint | None:
    """Fingerprint of an audio file, or None (logged) when it cannot be decoded."""
    try:
        x, sr = read_mono(path)
    except Exception as exc:  # noqa: BLE001 - one unreadable file is counted, not fatal
        log.warning("cannot decode %s: %s", path, exc)
        return None
    return fingerprint(x, sr, keep_bands=keep_bands)


class FingerprintStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / VERSION

    def remove_partial(self) -> int:
        """Delete temp files a killed run left behind; call only while no one writes."""
        n = 0
        if self.root.is_dir():
            for tmp in self.root.glob("*/.tmp-*"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.npz"

    def __contains__(self, sha: str) -> bool:
        return bool(sha) and self.path(sha).is_file()

    def get(self, sha: str) -> Fingerprint | None:
        if not sha:
            return None
        try:
            with np.load(self.path(sha)) as z:
                return Fingerprint(z["hashes"], z["times"], int(z["n_frames"]), None, z["strength"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
            log.warning("fingerprint store entry %s unreadable (%s): recomputing", sha, exc)
            return None

    def put(self, sha: str, fp: Fingerprint) -> None:
        dest = self.path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, hashes=fp.hashes, times=fp.times, n_frames=np.int64(fp.n_frames),
                         strength=fp.strength if fp.strength is not None
                         else np.zeros(len(fp.hashes), np.uint8))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, sha: str, audio_path: str) -> Fingerprint | None:
        """The stored fingerprint, else computed from ``audio_path`` and stored (when the
        record has a PCM hash to key it by)."""
        fp = self.get(sha)
        if fp is not None:
            return fp
        fp = fingerprint_file(audio_path, keep_bands=False)
        if fp is not None and sha:
            self.put(sha, fp)
        return fp


def fingerprint_batch(records: Sequence[Record], *, store_dir: str) -> list[Record]:
    """Executor stage: store a fingerprint for every record's audio (``flac_path``, absolute)
    that the store lacks. Records come back unchanged; an undecodable file is left for the
    filter stage to count."""
    store = FingerprintStore(store_dir)
    for rec in records:
        sha, path = rec.audio_sha256, rec.flac_path
        if sha and path and sha not in store and os.path.isfile(path):
            fp = fingerprint_file(path, keep_bands=False)
            if fp is not None:
                store.put(sha, fp)
    return list(records)
