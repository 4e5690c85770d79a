"""Subcommands of ``laion-audio``: one module each, discovered by ``laion_audio.cli``."""
