"""Sonniss #GameAudioGDC bundles (2015-2020, handed out free but not redistributable): a pack source.

Real folders: "Sonniss.com - GDC - Game Audio Bundle" (2015), "Sonniss.com - GDC 2016 - Game
Audio Bundle" ... 2020; inside, one folder per contributor pack ("Audionym - The Fly",
"Soundmorph - Rupture"). Pass each bundle as one input. UCS-named files
(CatID_FXName_CreatorID_SourceID) are captioned with their FXName.
"""
from .packs import PackSource


class SonnissGameEffects(PackSource):
    name = "sonniss_game_effects"
    paper_samples = 5049
    site = "https://sonniss.com/gameaudiogdc/"
    license = "Sonniss #GameAudioGDC Bundle licence (royalty-free; no redistribution)"


SOURCE = SonnissGameEffects
