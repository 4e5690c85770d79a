"""BBC Sound Effects: the site's JSON search API, or the legacy ``BBCSoundEffects.csv`` listing.

Two ways in (reference/sources.md §2.1):

* **API** (default): ``POST {api}/api/sfx/search`` with ``{"criteria": {"from", "size",
  "query"}}``, paged by ``from``; each result has ``id``, ``description``, ``duration`` (ms),
  ``categories[].className``, ``additionalMetadata`` (``originalCategory``, ``cdName``) and
  ``tags``. Audio: ``{media}/wav/<id>.wav`` (or ``/mp3/<id>.mp3`` with ``audio_format=mp3``).
* **CSV** (``csv=PATH``): the 16,011-row listing of the 2018 "BBCSoundEffectsComplete" dump
  that LAION used (columns location, description, secs, category, CDNumber, CDName, tracknum).
  Audio: ``{media}/wav/<location>`` (the URL the FThompson downloader uses).

Caption rule ``laion`` (default for the CSV): LAION's, minus its off-by-one. LAION captioned from file names
that the downloader wrote as ``sanitise(description)[:143 - len(".<location>")] + ".<location>"``
(every character other than word characters, space and ``- & , ( ) .`` became ``_``) and then
cut one character too many. We build the same string from the description and keep that last
character. Rule ``description`` (default for the API, which LAION never used) is the description
itself, cleaned of markup but not sanitised or truncated.
Licence: BBC RemArc (personal, educational and research use only).
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Iterator

from laion_audio.errors import UserError
from laion_audio.records import Failure, FailureCode, Record

from .base import HttpSource, clean_text

API_BASE = "https://sound-effects-api.bbcrewind.co.uk"
MEDIA_BASE = "https://sound-effects-media.bbcrewind.co.uk"
LICENSE = "BBC RemArc licence (personal, educational and research use)"
MAX_FILENAME_LENGTH = 143   # the downloader's limit (ecryptfs)
CSV_COLUMNS = frozenset({"location", "description", "secs", "category"})
_UNSAFE = re.compile(r"[^\w\-&,()\. ]")


def laion_filename_caption(description: str, location: str) -> str:
    """The description as LAION's file name carried it (sanitised, truncated), without the
    off-by-one: LAION also dropped the last character (a final "." or a closing bracket)."""
    suffix = "." + location
    sanitised = _UNSAFE.sub("_", description).strip()
    return sanitised[: MAX_FILENAME_LENGTH - len(suffix)].strip()


def laion_original_caption(description: str, location: str) -> str:
    """LAION's exact caption, bug included; for comparisons and docs only."""
    filename = laion_filename_caption(description, location) + "." + location
    ident = filename.split(".")[-2]
    return filename[: -len(f".{ident}.wav") - 1]


def _results_list(data) -> None:
    """A search answer without a results list is a failed page (retried), not the end."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise Failure(FailureCode.BAD_METADATA, "answer has no results list")


class BBCSource(HttpSource):
    name = "bbc"
    paper_samples = 15973
    default_ext = ".wav"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bbc-api", dest="bbc_api", help=f"API base URL (default {API_BASE})")
        parser.add_argument("--bbc-media", dest="bbc_media", help=f"media base URL (default {MEDIA_BASE})")
        parser.add_argument("--bbc-csv", dest="bbc_csv", help="import BBCSoundEffects.csv instead of the API")
        parser.add_argument("--bbc-query", dest="bbc_query", help="search query (API)")
        parser.add_argument("--bbc-audio-format", dest="bbc_audio_format", choices=("wav", "mp3"),
                            help="API audio: original WAV (default) or the MP3 preview")
        parser.add_argument("--bbc-caption-rule", dest="bbc_caption_rule",
                            choices=("laion", "description"),
                            help="default: laion for the CSV, description for the API")

    @classmethod
    def demo_options(cls, base: str, work: Path, items: int) -> dict:
        return {"api": base, "media": base}

    @property
    def api_base(self) -> str:
        return self.url_option("api", API_BASE, "LAION_AUDIO_BBC_API")

    @property
    def media_base(self) -> str:
        return self.url_option("media", MEDIA_BASE, "LAION_AUDIO_BBC_MEDIA")

    def check(self) -> None:
        """A ``--bbc-csv`` must exist, be UTF-8 and have the listing's columns."""
        csv_path = self.option("csv", env="LAION_AUDIO_BBC_CSV")
        if not csv_path:
            return
        path = Path(csv_path)
        if not path.is_file():
            raise UserError(f"--bbc-csv {csv_path} does not exist")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise UserError(f"--bbc-csv {csv_path} is not UTF-8 (line {line}); save it as UTF-8")
        header = next(csv.reader(text.splitlines()[:1]), [])
        missing = sorted(CSV_COLUMNS - set(header))
        if missing:
            raise UserError(f"--bbc-csv {csv_path} lacks the column(s) {', '.join(missing)} "
                            f"(BBCSoundEffects.csv has {', '.join(sorted(CSV_COLUMNS))}, ...)")

    def crawl(self, state: dict) -> Iterator[Record]:
        csv_path = self.option("csv", env="LAION_AUDIO_BBC_CSV")
        if csv_path:
            yield from self.crawl_csv(Path(csv_path), state)
        else:
            yield from self.crawl_api(state)

    # ----- the JSON search API -----
    def crawl_api(self, state: dict) -> Iterator[Record]:
        """Page through the search; ``state["from"]`` advances after each page is yielded."""
        size = int(self.option("page_size", 100))
        query = str(self.option("query", ""))
        fmt = str(self.option("audio_format", "wav"))
        limit = self.option("limit")
        url = f"{self.api_base}/api/sfx/search"
        while not state.get("done"):
            start = int(state.get("from", 0))
            body = {"criteria": {"from": start, "size": size, "query": query}}
            data = self.http.get_json(url, method="POST", json=body, validate=_results_list)
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list):
                raise Failure(FailureCode.BAD_METADATA, f"{url}: answer has no results list")
            for item in results:
                if isinstance(item, dict) and item.get("id"):
                    rec = self.record_from_api(item, fmt)
                    if self.keyed(rec):
                        yield rec
            state["from"] = start + len(results)
            total = data.get("total")
            if (len(results) < size or (isinstance(total, int) and state["from"] >= total)
                    or (limit is not None and state["from"] >= int(limit))):
                state["done"] = True

    def record_from_api(self, item: dict, fmt: str = "wav") -> Record:
        ident = re.sub(r"[^0-9A-Za-z_-]", "", str(item["id"]))[:64]
        description = clean_text(item.get("description"))
        meta = item.get("additionalMetadata") or {}
        tags = [clean_text(c.get("className")) for c in item.get("categories") or []
                if isinstance(c, dict)]
        tags += [clean_text(meta.get("originalCategory"))] + [clean_text(t) for t in item.get("tags") or []]
        duration_ms = item.get("duration")
        rule = self.option("caption_rule", "description")
        caption = (laion_filename_caption(description, f"{ident}.wav") if rule == "laion"
                   else description)
        return Record(
            source=self.name, source_id=ident,
            url=f"{self.media_base}/{fmt}/{ident}.{fmt}",
            title=description, description=description,
            tags=_unique(t for t in tags if t), license=LICENSE, author="BBC",
            duration=float(duration_ms) / 1000.0 if isinstance(duration_ms, (int, float)) else None,
            original_data={"api": item, "cdName": meta.get("cdName", "")},
            texts=[caption] if caption else [],
            caption_provenance={"rule": f"bbc-{rule}", "from": "api description",
                                "laion_difference": "keeps the last character LAION dropped"}
            if caption else {},
        )

    # ----- the legacy CSV -----
    def crawl_csv(self, path: Path, state: dict) -> Iterator[Record]:
        """Every row of the listing is a record; ``state["row"]`` is the next row to read."""
        if not path.is_file():
            raise Failure(FailureCode.MISSING_FILE, f"BBC listing {path} not found")
        start = int(state.get("row", 0))
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = CSV_COLUMNS - set(reader.fieldnames or [])
            if missing:
                raise Failure(FailureCode.BAD_METADATA, f"{path}: missing columns {sorted(missing)}")
            for i, row in enumerate(reader):
                if i < start:
                    continue
                rec = self.record_from_csv(row)
                if self.keyed(rec):
                    yield rec
                state["row"] = i + 1
        state["done"] = True

    def record_from_csv(self, row: dict) -> Record:
        location = (row.get("location") or "").strip()
        ident = location.rsplit(".", 1)[0]
        description = row.get("description") or ""
        rule = self.option("caption_rule", "laion")
        caption = (laion_filename_caption(description, location) if rule == "laion"
                   else clean_text(description))
        try:
            secs = float(row.get("secs") or "")
        except ValueError:
            secs = None
        safe_location = location if re.fullmatch(r"[0-9A-Za-z_-]+\.wav", location) else ""
        return Record(
            source=self.name, source_id=ident,
            url=f"{self.media_base}/wav/{safe_location}" if safe_location else "",
            title=clean_text(description), description=clean_text(description),
            tags=_unique(t for t in [clean_text(row.get("category"))] if t),
            license=LICENSE, author="BBC", duration=secs,
            original_data={k: row.get(k, "") for k in
                           ("location", "description", "secs", "category", "CDNumber", "CDName",
                            "tracknum")},
            texts=[caption] if caption else [],
            caption_provenance={"rule": f"bbc-{rule}", "from": "BBCSoundEffects.csv description",
                                "laion_difference": "keeps the last character LAION dropped"}
            if caption else {},
        )


def _unique(items) -> list[str]:
    seen: dict[str, None] = {}
    for x in items:
        seen.setdefault(x, None)
    return list(seen)


SOURCE = BBCSource
