"""Defaults more than one part of the package agrees on, in one place (and cheap to import: the
CLI reads them to show defaults in ``--help`` without loading audio or Arrow libraries)."""

#: seed of the per-id train/test split and of the order of samples in shards
SEED = 1234
#: share of ids in the test split (LAION's 0.1)
TEST_FRACTION = 0.1
#: samples per tar (LAION's make_tar.py default)
SAMPLES_PER_SHARD = 512
#: postings one content lookup may touch (``filter --lookup-budget``): with popular landmark
#: buckets re-keyed, 12,000 find as many of the 100k benchmark's copies as 25,000 did without
#: (docs/filters.md, Benchmarks)
LOOKUP_BUDGET = 12_000

#: file extensions the transcoder reads (libsndfile, else PyAV/ffmpeg)
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a",
                              ".aac", ".mp4", ".webm", ".aif", ".aiff", ".aifc", ".wma", ".caf",
                              ".w64"})
#: the subset libsndfile reads directly (eval-set audio folders read by the filter)
LIBSNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})
