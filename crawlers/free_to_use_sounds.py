"""Free To Use Sounds (freetousesounds.com "All In One" bundle, purchased): a pack source.

Real folders: "All Sounds Edited By Soundly", "Sounds Of Brazil", ..., "VR Sound Library". Its file
names are keyword lists ending with the recorder ("Traffic, Busy, ..., Hanoi, Vietnam, Zoom F8n");
the recorder is dropped from the caption and kept in ``caption_provenance.removed``.
"""
from .packs import PackSource


class FreeToUseSounds(PackSource):
    name = "free_to_use_sounds"
    paper_samples = 6370
    site = "https://www.freetousesounds.com/product/all-in-one-sound-library-bundle/"
    license = "Free To Use Sounds licence (purchased; no redistribution)"


SOURCE = FreeToUseSounds
