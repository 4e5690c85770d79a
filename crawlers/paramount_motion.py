"""Paramount Motion - Odeon Cinematic Sound Effects Pack (purchased): a pack source.

Real folder: "Paramount Motion - Odeon Cinematic Sound Effects Pack". Caption = cleaned file name.
"""
from .packs import PackSource


class ParamountMotion(PackSource):
    name = "paramount_motion"
    paper_samples = 4420
    site = "https://www.paramountmotion.com/odeon-sound-effects"
    license = "Paramount Motion licence (purchased; no redistribution)"


SOURCE = ParamountMotion
