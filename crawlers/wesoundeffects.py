"""We Sound Effects (wesoundeffects.com, purchased): a pack source. Real folder: "WeSoundEffects"."""
from .packs import PackSource


class WeSoundEffects(PackSource):
    name = "wesoundeffects"
    paper_samples = 488
    site = "https://www.wesoundeffects.com/"
    license = "We Sound Effects licence (purchased; no redistribution)"


SOURCE = WeSoundEffects
