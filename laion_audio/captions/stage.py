"""The caption stage: a batch of Records with tags in, the same Records with captions out.

Ray-free: ``pipelines/`` wraps :func:`caption_batch` in an actor that loads the Captioner and
opens the cache once per worker. Per record:

- keywords = the record's tags (AudioSet MIDs are turned into label names when ``labels`` is
  given), normalised (never split on ".");
- clips shorter than ``min_duration`` (LAION: 2 s) get no model caption; records without text
  get the template instead;
- with a captioner: the raw caption comes from the cache or from one batched generation over
  the batch's distinct keyword sets, is de-biased, and goes to ``text_augment_t5``; it becomes
  the text as well when the record has none, or when its source is in ``replace_text_sources``
  (AudioSet: LAION trained on the T5 captions instead of the template ones);
- without a captioner: the template caption becomes the text of records that have none;
- ``caption_provenance`` says how each caption was made (rule, model and weights hash,
  generation parameters, keywords, raw text before de-biasing, de-bias list version);
- ``transcoded`` records become ``captioned``; records at other stages keep their status;
  ``failed``/``dropped``/``vanished`` records pass through untouched. A record with neither
  keywords nor text fails with ``no_caption``; a generation error fails its records with
  ``internal_error`` and the rest of the batch goes on.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..records import FailureCode, Record, Status
from . import templates
from .cache import CaptionCache, cache_key
from .debias import DEBIAS_VERSION, debias
from .k2c import Captioner
from .keywords import AudioSetLabels, normalise_keywords

log = logging.getLogger(__name__)

STAGE = "caption"
_MID = re.compile(r"^/[mgt]/[0-9a-z_]+$")
_PASS_THROUGH = {Status.FAILED, Status.DROPPED, Status.VANISHED}


#: provenance ``reason`` of a model caption replaced by the template
MISSED_KEYWORDS = "k2c caption missed keywords"
MISPLACED_WORDS = "k2c caption put a word where human captions never do"


@dataclass
class CaptionOptions:
    min_duration: float | None = 2.0   # LAION: no K2C caption for clips shorter than 2 s
    template: str = "sounds_of"
    debias: bool = True
    replace_text_sources: tuple[str, ...] = ("audioset",)
    labels: AudioSetLabels | None = None
    #: a model caption missing any keyword (LAION's keyword check) or putting a word where human
    #: captions never do (``grammar``: "Waterfall is being waterfall") is replaced by the template
    keyword_fallback: bool = True
    #: captions made by ``laion-audio audioset-captions``, joined into AudioSet records
    audioset_captions: "AudioSetCaptionTable | None" = None


@dataclass
class CaptionStats:
    """Counts over one or more batches (the distinct/total ratio is what the cache saves)."""

    records: int = 0
    k2c: int = 0
    template: int = 0
    kept_text: int = 0
    short_skipped: int = 0
    failed: int = 0
    keyword_sets: int = 0
    distinct_keyword_sets: set = field(default_factory=set)
    cache_hits: int = 0
    generated: int = 0
    keyword_fallback: int = 0       # model captions replaced by the template (missed keywords)
    grammar_fallback: int = 0       # ... (a word where human captions never put one)
    joined: int = 0                 # AudioSet records captioned from an audioset-captions file
    join_missing: int = 0           # AudioSet records the file has no row for
    debias_replacements: int = 0

    def template_used(self, reason: str | None) -> None:
        """Count a template caption, and the fallback that chose it (``reason``)."""
        self.template += 1
        self.keyword_fallback += reason == MISSED_KEYWORDS
        self.grammar_fallback += reason == MISPLACED_WORDS

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "distinct_keyword_sets"}
        d["distinct_keyword_sets"] = len(self.distinct_keyword_sets)
        d["distinct_total_ratio"] = (round(len(self.distinct_keyword_sets) / self.keyword_sets, 4)
                                     if self.keyword_sets else None)
        return d


def record_duration(rec: Record) -> float | None:
    """Seconds of audio: the transcoded length, else the segment window, else the source's."""
    if rec.audio_duration:
        return rec.audio_duration
    if rec.trim_start is not None and rec.trim_end is not None:
        return rec.trim_end - rec.trim_start
    return rec.duration


def record_keywords(rec: Record, labels: AudioSetLabels | None = None) -> tuple[str, ...]:
    tags = list(rec.tags)
    if labels is not None:
        tags = [labels.names.get(t, t) if _MID.match(t) else t for t in tags]
    return normalise_keywords(tags)


def has_source_text(rec: Record) -> bool:
    """True when ``texts`` came from the source, not from an earlier run of this stage."""
    prov = rec.caption_provenance
    return bool(rec.texts) and (prov.get("rule") not in ("template", "k2c")
                                or bool(prov.get("source_text_kept")))


def caption_batch(records: Sequence[Record], captioner: Captioner | None = None,
                  options: CaptionOptions | None = None, cache: CaptionCache | None = None,
                  stats: CaptionStats | None = None) -> list[Record]:
    """Caption a batch in place (see the module docstring) and return it."""
    opts = options or CaptionOptions()
    stats = stats if stats is not None else CaptionStats()
    todo: list[tuple[Record, tuple[str, ...]]] = []
    for rec in records:
        if rec.status in _PASS_THROUGH:
            continue
        stats.records += 1
        if opts.audioset_captions is not None and rec.source == "audioset":
            if opts.audioset_captions.apply(rec):
                stats.joined += 1
                _advance(rec)
                continue
            stats.join_missing += 1
        kws = record_keywords(rec, opts.labels)
        if any(_MID.match(k) for k in kws):
            rec.fail(STAGE, FailureCode.BAD_METADATA, "tags hold AudioSet MIDs with no known name "
                 "(give the AudioSet class list: CaptionOptions.labels / --audioset-labels)")
            stats.failed += 1
            continue
        dur = record_duration(rec)
        short = opts.min_duration is not None and dur is not None and dur < opts.min_duration
        if not kws:
            if has_source_text(rec):
                stats.kept_text += 1
                _advance(rec)
            else:
                rec.fail(STAGE, FailureCode.NO_CAPTION, "no tags to caption and no text")
                stats.failed += 1
            continue
        if captioner is None or short:
            if short:
                stats.short_skipped += 1
            if has_source_text(rec):
                stats.kept_text += 1
            else:
                _template(rec, kws, opts, reason="shorter than min_duration" if short else "no model")
                stats.template += 1
            _advance(rec)
            continue
        todo.append((rec, kws))
    if todo:
        _k2c(todo, captioner, opts, cache, stats)
    return list(records)


class AudioSetCaptionTable:
    """The rows of an ``audioset-captions`` Parquet file, looked up by (YouTube id, start).

    A joined record gets the row's ``text`` as its text and ``text_augment_t5`` (as in LAION's
    AudioSet shards) and the row's provenance plus ``joined_from`` (the file's name). Only an
    index (key -> row) is kept in memory; texts are read from the Arrow table on demand."""

    COLUMNS = ("ytid", "start", "text", "provenance", "label_names")

    def __init__(self, path) -> None:
        import pyarrow.parquet as pq
        from pathlib import Path

        self.name = Path(path).name
        schema = pq.read_schema(path)
        missing = [c for c in self.COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"{self.name}: not an audioset-captions file (no {', '.join(missing)} column)")
        self.table = pq.read_table(path, columns=list(self.COLUMNS))
        ytids = self.table.column("ytid").to_pylist()
        starts = self.table.column("start").to_pylist()
        self.index = {(y, float(st)): i for i, (y, st) in enumerate(zip(ytids, starts))}

    def __len__(self) -> int:
        return len(self.index)

    def apply(self, rec: Record) -> bool:
        od = rec.original_data or {}
        ytid = od.get("youtube_id")
        start = od.get("start_seconds", rec.trim_start)
        if ytid is None or start is None:
            return False
        i = self.index.get((ytid, float(start)))
        if i is None:
            return False
        import json

        text = self.table.column("text")[i].as_py()
        prov = json.loads(self.table.column("provenance")[i].as_py())
        prov.update({"keywords": self.table.column("label_names")[i].as_py(), "joined_from": self.name})
        rec.texts = [text]
        rec.text_augment_t5 = text
        rec.caption_provenance = prov
        return True


def _advance(rec: Record) -> None:
    if rec.status == Status.TRANSCODED:
        rec.status = Status.CAPTIONED


def _template(rec: Record, kws: Sequence[str], opts: CaptionOptions, reason: str) -> None:
    rec.texts = [templates.render(opts.template, kws)]
    rec.caption_provenance = {"rule": "template", "template": opts.template,
                              "keywords": list(kws), "reason": reason}


def k2c_captions(keyword_sets, captioner: Captioner, opts: CaptionOptions,
                 cache: CaptionCache | None, stats: CaptionStats) -> dict:
    """Model captions for keyword sets: ``{kws: (text, provenance)}`` or ``{kws: error}``.

    Each distinct set is looked up in the cache, the rest generated in one batched call and
    cached; the text is de-biased. With ``opts.keyword_fallback`` a caption that misses any
    keyword (LAION's keyword check) or misplaces a word (``grammar``) is replaced by the
    template, recorded in provenance (``rule: template``, ``reason``, the rejected
    ``k2c_raw_text``) and counted."""
    from .grammar import misplaced_words
    from .quality import keyword_coverage

    identity = captioner.identity
    keys = {kws: cache_key(captioner.cache_identity, kws) for kws in keyword_sets}
    stats.keyword_sets += len(keyword_sets)
    stats.distinct_keyword_sets.update(keys.values())
    raw: dict[tuple[str, ...], str] = {}
    if cache is not None:
        found = cache.get_many(keys.values())
        for kws, key in keys.items():
            if key in found:
                raw[kws] = found[key]
    missing = [kws for kws in keys if kws not in raw]
    stats.cache_hits += sum(1 for kws in keyword_sets if kws in raw)
    out: dict = {}
    if missing:
        try:
            generated = captioner.generate(missing)
        except Exception as exc:  # a model/tokenizer error must not end the run
            log.exception("caption generation failed for %d keyword sets", len(missing))
            out = {kws: f"{type(exc).__name__}: {exc}" for kws in missing}
        else:
            stats.generated += len(missing)
            raw.update(zip(missing, generated))
            if cache is not None:
                cache.put_many((keys[k], k, raw[k]) for k in missing)
    for kws, text in raw.items():
        text = text.strip()
        if not text:
            out[kws] = (templates.render(opts.template, kws),
                        {"rule": "template", "template": opts.template, "keywords": list(kws),
                         "reason": "model returned an empty caption"})
            continue
        reason = None
        if opts.keyword_fallback:
            if keyword_coverage(kws, text) < 1.0:
                reason = MISSED_KEYWORDS
            elif misplaced_words(text):
                reason = MISPLACED_WORDS
        if reason:
            out[kws] = (templates.render(opts.template, kws),
                        {"rule": "template", "template": opts.template, "keywords": list(kws),
                         "reason": reason, "k2c_raw_text": text,
                         **{k: v for k, v in identity.items() if k != "model"}})
            continue
        prov = {"rule": "k2c", **identity, "keywords": list(kws), "raw_text": text}
        if opts.debias:
            result = debias(text)
            text = result.text
            prov["debias_version"] = DEBIAS_VERSION
            prov["debias_replacements"] = [list(r) for r in result.replacements]
        out[kws] = (text, prov)
    return out


def _k2c(todo, captioner: Captioner, opts: CaptionOptions, cache: CaptionCache | None,
         stats: CaptionStats) -> None:
    results = k2c_captions([kws for _, kws in todo], captioner, opts, cache, stats)
    for rec, kws in todo:
        res = results[kws]
        if isinstance(res, str):
            rec.fail(STAGE, FailureCode.INTERNAL, f"caption generation failed: {res}")
            stats.failed += 1
            continue
        text, prov = res
        keep = has_source_text(rec) and rec.source not in opts.replace_text_sources
        if prov["rule"] == "template":
            # the model's caption was empty or missed keywords: the template stands in
            if keep:
                rec.text_augment_t5 = text
                prov = {**prov, "source_text_kept": True}
            else:
                rec.texts = [text]
            rec.caption_provenance = prov
            stats.template_used(prov["reason"])
            _advance(rec)
            continue
        stats.debias_replacements += len(prov.get("debias_replacements", []))
        rec.text_augment_t5 = text
        if keep:
            prov = {**prov, "source_text_kept": True}
        else:
            rec.texts = [text]
        rec.caption_provenance = prov
        stats.k2c += 1
        _advance(rec)
