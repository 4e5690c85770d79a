"""Keywords: where they come from (AudioSet labels, a record's tags, a caption's content words),
how they are normalised, and the word-level helpers the trainer and the quality report share.

AudioSet metadata (``class_labels_indices.csv``, ``ontology.json``, ``*_segments.csv``) is read
from a local folder; :func:`ensure_audioset_metadata` downloads it from the official URLs and
refuses a file whose sha256 differs from the one pinned here.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import snowballstemmer

from .. import atomic

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- AudioSet metadata

_AUDIOSET_CSV = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/"
#: Official URLs and the sha256 of the bytes we verified (../shared/data/PROVENANCE.md).
AUDIOSET_FILES: dict[str, tuple[str, str]] = {
    "class_labels_indices.csv": (
        _AUDIOSET_CSV + "class_labels_indices.csv",
        "cdd1049833c4b86127c2773ac0d14a2754b6a6d0d1798002ed5c66e699708429"),
    "balanced_train_segments.csv": (
        _AUDIOSET_CSV + "balanced_train_segments.csv",
        "3b83e5ff9ed72cfda37d4e36ce08250e107c1ea70f109f6ab6668ac200db5e94"),
    "eval_segments.csv": (
        _AUDIOSET_CSV + "eval_segments.csv",
        "f7055f53935f70e74e39494a5c8c4c78f1700fce275028bd36e31186f33d45db"),
    "ontology.json": (
        "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json",
        "9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d"),
}


#: the largest AudioSet metadata file (unbalanced_train_segments.csv) is ~100 MB
METADATA_MAX_BYTES = 512 << 20


class ChecksumError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_audioset_metadata(dest: str | os.PathLike, names: Iterable[str] = ("class_labels_indices.csv",),
                             *, base_urls: dict[str, str] | None = None, session=None) -> Path:
    """Make ``dest`` hold the named AudioSet metadata files with their pinned sha256.

    A file already present with the right hash is kept; a download is written to a temporary
    name, checked, then renamed, so a bad or truncated download never replaces a good file.
    ``base_urls`` overrides the URL per file (tests point it at 127.0.0.1). Downloads go
    through ``laion_audio.http`` (retries, User-Agent, a size cap); ``session`` is an optional
    ``requests.Session`` for it."""
    from laion_audio.http import HttpClient

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    http = HttpClient(retries=2, respect_robots=False, session=session)
    for name in names:
        url, digest = AUDIOSET_FILES[name]
        url = (base_urls or {}).get(name, url)
        target = dest / name
        if target.exists() and sha256_file(target) == digest:
            continue
        tmp = target.with_name(f".{name}.part")
        http.download(url, tmp, expect=None, max_bytes=METADATA_MAX_BYTES)
        got = sha256_file(tmp)
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: sha256 {got} != pinned {digest}")
        atomic.publish(tmp, target)
    return dest


@contextmanager
def _damaged(path: Path):
    """A label file that is not what AudioSet publishes (bytes, columns, JSON shape): one line
    naming it (UserError), not a traceback from inside a run."""
    from ..errors import UserError

    try:
        yield
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, csv.Error) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"AudioSet labels: {path.parent.name}/{path.name} is damaged or not "
                        f"AudioSet's ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Segment:
    ytid: str
    start: float
    end: float
    mids: tuple[str, ...]


class AudioSetLabels:
    """MID -> display name, from ``class_labels_indices.csv`` (the 527 classes) plus
    ``ontology.json`` when present (names for MIDs outside the class list)."""

    def __init__(self, names: dict[str, str], *, class_mids: Sequence[str] = (),
                 restricted: Iterable[str] = (), children: dict[str, Sequence[str]] | None = None):
        self.names = names
        #: ontology MID -> its child MIDs (empty without ``ontology.json``)
        self.children = {k: tuple(v) for k, v in (children or {}).items()}
        #: the class list's MIDs in index order (what segment CSVs, hence the stage, use)
        self.class_mids = tuple(class_mids)
        #: ontology MIDs marked "abstract" or "blacklist" (category nodes, not sounds to tag)
        self.restricted = frozenset(restricted)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> "AudioSetLabels":
        """The folder's class list (+ ontology); a damaged file is a UserError naming it."""
        folder = Path(folder)
        names: dict[str, str] = {}
        restricted = []
        children: dict[str, list[str]] = {}
        onto = folder / "ontology.json"
        if onto.exists():
            with _damaged(onto):
                for entry in json.loads(onto.read_text(encoding="utf-8")):
                    names[entry["id"]] = entry["name"]
                    children[entry["id"]] = list(entry.get("child_ids") or ())
                    if entry.get("restrictions"):
                        restricted.append(entry["id"])
        class_mids = []
        with _damaged(folder / "class_labels_indices.csv"):
            with open(folder / "class_labels_indices.csv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    names[row["mid"]] = row["display_name"]
                    class_mids.append(row["mid"])
        return cls(names, class_mids=class_mids, restricted=restricted, children=children)

    def label_names(self, mids: Sequence[str]) -> list[str]:
        """Display names in the given order; an unknown MID raises KeyError naming it."""
        out = []
        for mid in mids:
            if mid not in self.names:
                raise KeyError(f"unknown AudioSet MID {mid!r}")
            out.append(self.names[mid])
        return out


#: a segments row as AudioSet publishes it (``YTID, start, end, "mid,mid"``): the fields the
#: csv module gives for it, without building a reader per line (1M rows: 3.3 vs 4.2 s)
_SEGMENT_ROW = re.compile(r'([^,"\s]+), *([^,"\s][^,"\r\n]*?), *([^,"\s][^,"\r\n]*?), *"([^"\r\n]*)"\r?\n?\Z')


def read_segments(path: str | os.PathLike, *, on_error=None, numbered: bool = False) -> Iterator:
    """Rows of an AudioSet ``*_segments.csv`` (3 "#" comment lines, ", " separators,
    quoted comma-joined MIDs), streamed. Malformed rows are logged and skipped (and passed to
    ``on_error(row_number, row)`` when given): not exactly 4 fields, a time that is not a
    finite number >= 0, an end not after the start, a quote left open. Each line is parsed on
    its own, so an open quote never swallows the rows after it. ``numbered``: yield
    ``(row_number, Segment)``."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                m = _SEGMENT_ROW.match(line)      # the published form; anything else: csv
                row = m.groups() if m else next(csv.reader((line,), skipinitialspace=True,
                                                           strict=True), [])
                ytid, start, end, labels = row
                start, end = float(start), float(end)
                if not (0.0 <= start < end < math.inf):      # also false for NaN
                    raise ValueError("times")
            except (csv.Error, ValueError):
                row = line.rstrip("\r\n")
                log.warning("%s: skipping malformed row %d: %r", path, n, row)
                if on_error is not None:
                    on_error(n, row)
                continue
            seg = Segment(ytid, start, end, tuple(m.strip() for m in labels.split(",") if m.strip()))
            yield (n, seg) if numbered else seg


# --------------------------------------------------------------------------- normalisation

_SPACE = re.compile(r"\s+")


def normalise_keywords(keywords: Iterable[str]) -> tuple[str, ...]:
    """Trim and collapse whitespace, drop empties and case-insensitive repeats; keep order.

    Never splits on "." (keytotext did, so "p.a." and ".45 cartridge" became fragments)."""
    out, seen = [], set()
    for kw in keywords:
        kw = _SPACE.sub(" ", str(kw)).strip()
        if kw and kw.casefold() not in seen:
            seen.add(kw.casefold())
            out.append(kw)
    return tuple(out)


# --------------------------------------------------------------------------- words and lemmas

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

#: Irregular forms a suffix stemmer gets wrong, mapped to one shared key.
_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "mice": "mouse", "oxen": "ox", "lice": "louse",
    "ran": "run", "flew": "fly", "flown": "fly", "sang": "sing", "sung": "sing", "rang": "ring",
    "rung": "ring", "blew": "blow", "blown": "blow", "spoke": "speak", "spoken": "speak",
    "drove": "drive", "driven": "drive", "threw": "throw", "thrown": "throw", "fell": "fall",
    "fallen": "fall", "struck": "strike", "hit": "hit", "shot": "shoot", "went": "go",
    "gone": "go", "came": "come", "made": "make", "took": "take", "taken": "take",
    "broke": "break", "broken": "break", "froze": "freeze", "frozen": "freeze", "dug": "dig",
    "revving": "rev", "revs": "rev", "revved": "rev",
}

#: Function words, auxiliaries and caption scaffolding ("followed by", "in the background"):
#: never keywords, never counted as invented content.
STOPWORDS = frozenset("""
a an the and or but nor so yet as at by for from in into of off on onto out over to up down with
without within through throughout during before after above below under between among around
about against along across behind beside besides near nearby than then there here while when
whilst where until till upon via per this that these those it its it's itself they them their
theirs themselves he she him her his hers himself herself we us our i me my you your one ones
is are was were be been being am has have had having do does did doing can could will would
shall should may might must not no also very too just only again once twice all any both each
few more most other some such own same several many multiple much lot lots other another
followed follows following then briefly repeatedly continuously intermittently quickly slowly
softly loudly faintly distant distance background foreground sound sounds noise noises
occurs occur occurring something someone somebody what which who whom whose how why
together simultaneously consecutively rapidly constantly periodically occasionally twice
""".split())


@lru_cache(maxsize=1)
def _stemmer():
    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """A matching key for a word: irregular forms mapped, then the Snowball English stem.

    Not a dictionary lemma, but both sides of every comparison (keywords vs caption words) go
    through the same function, which is what "lemma-aware" coverage needs."""
    w = word.lower().replace("'s", "")
    w = _IRREGULAR.get(w, w)
    return _stemmer().stemWord(w)


def words(text: str) -> list[str]:
    return [m.group(0).lower() for m in _WORD.finditer(text)]


def content_words(text: str) -> list[str]:
    """Lower-cased words that carry content (stopwords and one-letter words removed)."""
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 1]


def keyword_lemmas(keyword: str) -> list[str]:
    """The content lemmas of one keyword ("Male speech, man speaking" -> male, speech, man, speak)."""
    return [lemma(w) for w in content_words(keyword)]


def caption_keywords(caption: str, max_keywords: int = 6) -> list[str]:
    """Keywords for a training pair: the caption's distinct content words, in caption order,
    as their base form (irregular plural/verb forms mapped, a regular plural "s" dropped), so
    the model learns to inflect label-like input ("dog", "bark" -> "a dog barks")."""
    out, seen = [], set()
    for w in content_words(caption):
        key = lemma(w)
        if key in seen:
            continue
        seen.add(key)
        out.append(base_form(w))
        if len(out) >= max_keywords:
            break
    return out


def base_form(word: str) -> str:
    """A readable base form: irregulars from the table (women -> woman), a plain plural "s"
    dropped (dogs -> dog, sirens -> siren); verbs in -ing/-ed are kept as written, since AudioSet
    labels use them too ("Barking", "Speaking")."""
    w = word.lower()
    if w in _IRREGULAR and not w.startswith("rev"):
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "ous")):
        return w[:-1]
    return w
