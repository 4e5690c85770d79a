"""laion-audio: build, refresh and train on LAION-Audio-630K-style audio-caption corpora."""
import os

__version__ = "0.1.0"

# Arrow's default allocator (mimalloc) keeps the pages it freed: a build driver journaling a
# batch every few records grew ~25 MB per 2,000 records; with the system allocator its RSS
# stays flat (benchmarks/driver_memory.py). Arrow reads this once, when it first allocates, so
# it is set before pyarrow is imported; a user's own setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
