"""WebDataset shards in LAION's layout, written deterministically and atomically; and their check.

Layout (see docs/shard-format.md)::

    <out>/<dataset>/<split>/0.tar, 1.tar, ...   KEY.flac immediately followed by KEY.json
    <out>/<dataset>/<split>/sizes.json          {"0.tar": 512, ...}  (what CLAP reads)
    <out>/<dataset>/<split>/index.json          per shard: samples, bytes, sha256, seconds
    <out>/<dataset>/<split>/.receipts/N.tar.json  what each finished tar holds (for resume)

Why it is built this way:

* **Split per id.** ``assign_split`` hashes ``(seed, source, source_id)``, so adding or removing
  other records never moves a sample between train and test (LAION's shuffle-then-cut did).
* **Order by a seeded hash of the key**, never by input order, so the same records give the same
  tars whatever order the ledger hands them in; another seed gives another order.
* **Byte-identical tars.** One tar format (USTAR), mtime 0, uid/gid 0, empty user/group names,
  fixed modes, sorted-key JSON.
* **Atomic.** A tar is built in a temporary file and published in one step (rename locally, one
  PUT on object storage). ``sizes.json`` is the commit marker of a split: it is removed before any
  tar of that split changes and written after all of them are complete, so a reader never sees a
  split whose tars disagree with it.
* **Resume.** After each tar a small receipt records the plan fingerprint of the tar (keys, JSON
  bytes, FLAC size and content hash). A rerun skips a tar whose receipt matches the new plan and whose
  size matches the receipt, and rewrites the rest; the result equals an uninterrupted run.

The package names its jobs: ``layout`` (the names every part agrees on), ``plan`` (which
record goes where), ``write`` (tars, receipts, index, sizes.json) and ``verify`` (decode and
compare).
"""
from .layout import (DEFAULT_SAMPLES_PER_SHARD, DEFAULT_SEED, DEFAULT_TEST_FRACTION, INDEX_FORMAT,
                     INDEX_NAME, READY_STATUSES, RECEIPTS_DIR, SAMPLE_RATE, SIZES_NAME, STAGE,
                     WRITER_VERSION, ShardError)
from .plan import PlannedSample, PlannedShard, assign_split, plan_shards, sample_json
from .verify import VerifyReport, verify
from .write import ShardRun, write_shards

__all__ = ["DEFAULT_SAMPLES_PER_SHARD", "DEFAULT_SEED", "DEFAULT_TEST_FRACTION", "INDEX_FORMAT",
           "INDEX_NAME", "READY_STATUSES", "RECEIPTS_DIR", "SAMPLE_RATE", "SIZES_NAME", "STAGE",
           "WRITER_VERSION", "ShardError", "PlannedSample", "PlannedShard", "assign_split",
           "plan_shards", "sample_json", "VerifyReport", "verify", "ShardRun", "write_shards"]
