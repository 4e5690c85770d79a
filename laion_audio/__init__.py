"""laion-audio: build, refresh and train on LAION-Audio-630K-style audio-caption corpora."""

__version__ = "0.1.0"
