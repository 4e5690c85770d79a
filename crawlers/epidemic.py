"""Epidemic Sound (sound effects): the site's JSON search, one category at a time.

``GET {base}/json/search/sfx/?genres=<Category>&order=desc&page=<n>`` for each of the 43
categories (reference/sources.md §2.2); ``meta.totalPages`` says how many pages, tracks are a
dict under ``entities.tracks``; audio is the public low-quality preview
``stems.full.lqMp3Url``. A track listed in several categories is one record: the first
category (in the fixed order below) wins, like LAION's de-duplication by id.

Captions (LAION's rule, two fixes):
1. the title without trailing digits/spaces ("Wrestling Crowd 5" -> "Wrestling Crowd");
2. "the sounds of A, B, and C." from ``metadataTags``. LAION wrote "the sounds of , and X." for
   one tag and crashed on zero; we write "the sounds of X." and leave the sentence out.
``tags`` = [category, genre] + metadataTags; ``original_data`` = the track + ``Class_name``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from laion_audio.records import Failure, FailureCode, Record

from .base import HttpSource, clean_text

BASE = "https://www.epidemicsound.com"
CATEGORIES = (
    "Aircraft", "Ambience", "Animals", "Birds", "Boats", "Body", "Chairs", "Crashes", "Crowds",
    "Debris", "Doors", "Electric", "Fight", "Fire", "Foley", "Glass", "Gore", "Guns", "Household",
    "Industrial", "Insects", "Lasers", "Machines", "Materials", "Mechanical", "Metal", "Musical",
    "Noise", "Robots", "Rocks", "Storytelling", "Technology", "Telephone", "Tools", "Trains",
    "Vehicles", "Voices", "Water", "Weapons", "Weather", "Whistles", "Whoosh", "Wood",
)
LICENSE = "Epidemic Sound licence (preview audio; subscription terms)"
_TRAILING_NUMBER = re.compile(r"[\d\s]+$")


def title_caption(title: str) -> str:
    return _TRAILING_NUMBER.sub("", clean_text(title)).strip()


def tags_sentence(tags: list[str]) -> str:
    """"the sounds of A, B, and C." (LAION's template); one tag: "the sounds of A."; none: ""."""
    tags = [t for t in tags if t]
    if not tags:
        return ""
    if len(tags) == 1:
        return f"the sounds of {tags[0]}."
    return f"the sounds of {', '.join(tags[:-1])}, and {tags[-1]}."


def _search_answer(data) -> None:
    """A search answer without ``entities.tracks`` is a failed page (retried), not the end."""
    if not isinstance(data, dict) or not isinstance((data.get("entities") or {}).get("tracks", {}), dict) \
            or "meta" not in data:
        raise Failure(FailureCode.BAD_METADATA, "answer is not a search result page")


class EpidemicSource(HttpSource):
    name = "epidemic"
    paper_samples = 75645
    default_ext = ".mp3"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--epidemic-base", dest="epidemic_base", help=f"site URL (default {BASE})")
        parser.add_argument("--epidemic-categories", dest="epidemic_categories",
                            type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                            help="comma-separated subset of the 43 categories")

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"base": base}

    @property
    def base(self) -> str:
        return self.url_option("base", BASE, "LAION_AUDIO_EPIDEMIC_BASE")

    def crawl(self, state: dict) -> Iterator[Record]:
        """``state``: ``cat`` (index into the categories), ``page`` (next page, from 1) and
        ``seen`` (ids already yielded); all three change only after a whole page is yielded."""
        categories = list(self.option("categories", CATEGORIES))
        seen = set(state.get("seen", []))
        while int(state.get("cat", 0)) < len(categories):
            ci = int(state.get("cat", 0))
            category, page = categories[ci], int(state.get("page", 1))
            query = urlencode({"genres": category, "order": "desc", "page": page})
            url = f"{self.base}/json/search/sfx/?{query}"
            data = self.http.get_json(url, validate=_search_answer)
            if not isinstance(data, dict):
                raise Failure(FailureCode.BAD_METADATA, f"{url}: answer is not an object")
            tracks = (data.get("entities") or {}).get("tracks") or {}
            total_pages = int((data.get("meta") or {}).get("totalPages") or 0)
            if not isinstance(tracks, dict):
                raise Failure(FailureCode.BAD_METADATA, f"{url}: entities.tracks is not a dict")
            new_ids = []
            for key in sorted(tracks, key=_id_order):
                track = tracks[key]
                if not isinstance(track, dict):
                    continue
                rec = self.record_from_track({"id": key, **track}, category)
                if rec.source_id in seen or rec.source_id in new_ids or not self.keyed(rec):
                    continue
                new_ids.append(rec.source_id)
                yield rec
            seen.update(new_ids)
            state["seen"] = sorted(seen, key=_id_order)
            if page >= total_pages:
                state["cat"], state["page"] = ci + 1, 1
            else:
                state["page"] = page + 1

    def record_from_track(self, track: dict, category: str) -> Record:
        ident = re.sub(r"[^0-9A-Za-z_-]", "", str(track.get("id")))[:64]
        raw_title = clean_text(track.get("title"))
        genres = track.get("genres") or []
        genre = ""
        if isinstance(genres, list) and genres:
            first = genres[0]
            genre = clean_text(first.get("slug") if isinstance(first, dict) else first)
        elif isinstance(genres, str):
            genre = clean_text(genres)
        meta_tags = [clean_text(t) for t in track.get("metadataTags") or [] if isinstance(t, str)]
        meta_tags = [t for t in meta_tags if t]
        url = ((track.get("stems") or {}).get("full") or {}).get("lqMp3Url") or ""
        if not str(url).startswith(("http://", "https://")):
            url = ""
        texts = [t for t in (title_caption(raw_title), tags_sentence(meta_tags)) if t]
        length = track.get("length")
        original = {k: v for k, v in track.items() if k != "stems"}
        original.update({"Class_name": category, "url": url, "genres": genre,
                         "metadataTags": meta_tags})
        return Record(
            source=self.name, source_id=ident, url=url, title=raw_title,
            tags=list(dict.fromkeys(t for t in [category, genre, *meta_tags] if t)),
            license=LICENSE, author="Epidemic Sound",
            duration=float(length) if isinstance(length, (int, float)) else None,
            original_data=original, texts=texts,
            caption_provenance={"rule": "epidemic-title+tags-template",
                                "template": "the sounds of A, B, and C.",
                                "laion_difference": "one tag -> 'the sounds of X.'; no tags -> "
                                                    "title caption only"} if texts else {},
        )


def _id_order(value) -> tuple:
    s = str(value)
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


SOURCE = EpidemicSource
