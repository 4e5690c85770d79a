"""A published list as a source: LAION's released CSVs, Freesound id lists, our own manifests.

``laion-audio build --source manifest --manifest FILE [--manifest FILE ...]`` reads CSV, TSV,
Parquet or JSON Lines (optionally ``.gz``) a block at a time (millions of rows never sit in
memory as Python objects) and yields one record per row. Which column is what comes from a
preset (``--manifest-format``, guessed from the file name or the columns when not given) or a
column map (``--manifest-columns url=...,id=...,text=caption1+caption2,...``), which overrides
the preset's entries.

Each record's ``source`` is the site the audio came from (``epidemic``, ``freesound``, ...), not
"manifest", so its shards land in the same dataset folders as a crawl of that site would.
Captions are kept as released (``caption_provenance.rule = "released"``, with the file and the
columns; the de-biased T5 column goes to ``text_augment_t5``). A manifest written by
``laion-audio export-manifest`` carries our own provenance and ``original_data`` verbatim, so a
rebuild from it writes byte-identical shards.

Audio: a row's URL is fetched with the original site's own fetch (its headers, file naming);
Freesound rows without a direct audio URL (LAION's id lists) are resolved through APIv2
``sounds/<id>/`` (see ``crawlers/freesound.py``: paced to the key's per-minute and daily quota;
an exhausted day leaves the rest pending). When the manifest has ``audio_sha256`` (the decoded
PCM hash), it travels in ``filter_match.expected_audio_sha256`` and the transcode stage checks
it: a mismatch fails the record with ``audio_changed`` and it is never sharded as if it were
the published audio.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from laion_audio.records import FailureCode, Record, Status

from .base import HttpSource, clean_text

log = logging.getLogger(__name__)

#: rows read per block (pyarrow) before they become records
BLOCK_ROWS = 4096
_SAFE_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_UNSAFE = re.compile(r"[^0-9A-Za-z_.:-]")
_AUDIOSTOCK_ID = re.compile(r"/audio/(\d+)(?:/|$)")
#: fields a column map may set
FIELDS = ("url", "id", "text", "text_augment_t5", "license", "author", "source", "audio_sha256",
          "tags", "duration", "title", "description")


@dataclass(frozen=True)
class Preset:
    name: str
    source: str | None                      # constant source; None: from the "source" column
    columns: dict[str, Any]                 # field -> column name (text: list of columns)
    required: tuple[str, ...]               # columns the file must have
    file_names: tuple[str, ...] = ()        # released file names that select this preset
    doc: str = ""
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("laion-epidemic", "epidemic",
           {"url": "url", "id": "epidemic_id", "text": ["caption1", "caption2"],
            "text_augment_t5": "caption_t5"},
           ("url", "caption1", "caption2", "epidemic_id"),
           ("Epidemic_all_debiased.csv", "Epidemic_all.csv"),
           "Epidemic_all_debiased.csv: url, caption1, caption2, caption_t5, epidemic_id"),
    Preset("laion-audiostock", "audiostock", {"url": "url", "text": ["caption"]},
           ("url", "caption"), ("audiostock_all.csv",),
           "audiostock_all.csv: url, caption (id from the /audio/<id>/ URL)"),
    Preset("laion-freesound", "freesound",
           {"id": "freesound_id", "text": ["caption_1", "caption_2"], "author": "username",
            "license": "license"},
           ("caption_1", "freesound_id"),
           ("freesound_meta.csv", "freesound_no_overlap_meta.csv"),
           "freesound_meta.csv (HF Meranti/CLAP_freesound): audio_filename, caption_1, caption_2, "
           "freesound_id, username, freesound_url (a page, not audio), license; audio by id"),
    Preset("laion-freesound-drive", "freesound",
           {"url": "url", "id": "freesound_id", "text": ["caption1", "caption2"]},
           ("caption1", "freesound_id"), (),
           "the earlier Drive csvs: url, caption1, caption2 (empty if none), freesound_id"),
    Preset("laion-bbc", "bbc", {}, ("location", "description", "secs", "category"),
           ("BBCSoundEffects.csv",),
           "BBCSoundEffects.csv: location, description, secs, category, CDNumber, CDName, "
           "tracknum (no captions released: LAION's caption rule from the description)"),
    Preset("laion-audio", None,
           {"url": "url", "id": "source_id", "source": "source", "text": ["texts"],
            "text_augment_t5": "text_augment_t5", "license": "license", "author": "author",
            "audio_sha256": "audio_sha256", "tags": "tags", "duration": "source_duration",
            "title": "title", "description": "description"},
           ("source", "source_id", "texts"), (),
           "our release manifest (laion-audio export-manifest)"),
)}


def parse_columns(spec: str | None) -> dict[str, Any]:
    """``url=a,id=b,text=c1+c2,...`` -> {field: column (text: list)}; a mistake is a ValueError."""
    out: dict[str, Any] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"--manifest-columns: {part!r} is not FIELD=COLUMN")
        if key not in FIELDS:
            raise ValueError(f"--manifest-columns: unknown field {key!r}; known: {', '.join(FIELDS)}")
        out[key] = [c.strip() for c in value.split("+") if c.strip()] if key == "text" else value
    return out


# --------------------------------------------------------------------------------- reading
def _kind(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, kind in ((".parquet", "parquet"), (".pq", "parquet"), (".tsv", "tsv"),
                      (".tab", "tsv"), (".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                      (".json", "jsonl")):
        if name.endswith(ext):
            return kind
    raise ValueError(f"{path}: unknown manifest type (csv, tsv, parquet, jsonl)")


def _open_text(path: str):
    raw = open(path, "rb")
    stream = gzip.open(raw) if path.lower().endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def columns_of(path: str) -> list[str]:
    """The file's column names, read without loading the rows."""
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with _open_text(path) as fh:
        if kind == "jsonl":
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    return list(obj) if isinstance(obj, dict) else []
            return []
        import csv

        return next(csv.reader(fh, delimiter="\t" if kind == "tsv" else ","), [])


def iter_blocks(path: str, columns: list[str] | None = None,
                block_rows: int = BLOCK_ROWS) -> Iterator[list[dict]]:
    """Rows as lists of dicts, one block at a time (pyarrow's streaming readers)."""
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=block_rows, columns=columns):
            yield batch.to_pylist()
        return
    if kind == "jsonl":
        block: list[dict] = []
        with _open_text(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}: line {n} is not JSON ({e})") from None
                block.append(obj if isinstance(obj, dict) else {})
                if len(block) >= block_rows:
                    yield block
                    block = []
        if block:
            yield block
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = columns_of(path)
    if not names:
        return
    delimiter = "\t" if kind == "tsv" else ","
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=1 << 20),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                             strings_can_be_null=False,
                                             include_columns=columns))
    for batch in reader:
        if batch.num_rows:
            yield batch.to_pylist()


def choose_preset(path: str, fmt: str | None, names: list[str]) -> Preset | None:
    """The preset for a file: the one asked for, else by released file name, else by columns."""
    if fmt and fmt != "auto":
        if fmt == "columns":
            return None
        if fmt not in PRESETS:
            raise ValueError(f"unknown --manifest-format {fmt!r}; known: auto, columns, "
                             + ", ".join(PRESETS))
        return PRESETS[fmt]
    base = os.path.basename(path)
    for ext in (".gz",):
        base = base[: -len(ext)] if base.lower().endswith(ext) else base
    for p in PRESETS.values():
        if base in p.file_names:
            return p
    have = set(names)
    for name in ("laion-audio", "laion-bbc", "laion-epidemic", "laion-freesound",
                 "laion-freesound-drive", "laion-audiostock"):
        if set(PRESETS[name].required) <= have:
            return PRESETS[name]
    return None


# --------------------------------------------------------------------------------- values
def _text_values(value: Any) -> list[str]:
    """A cell -> caption strings: lists (Parquet/JSON), JSON-list strings (our CSV), text."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                parsed = json.loads(s)
                if isinstance(parsed, list):
                    return [str(v) for v in parsed if isinstance(v, str) and v.strip()]
            except ValueError:
                pass
        return [s] if s else []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if isinstance(v, str) and v.strip()]
    return [str(value)]


def _tag_values(value: Any) -> list[str]:
    if isinstance(value, str) and not value.strip().startswith("["):
        return [t for t in (clean_text(x) for x in value.split(",")) if t]
    return [t for t in (clean_text(x) for x in _text_values(value)) if t]


def _json_value(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
            return parsed if isinstance(parsed, dict) else {}
        except ValueError:
            return {}
    return {}


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


# --------------------------------------------------------------------------------- source
class ManifestSource(HttpSource):
    name = "manifest"
    default_ext = ".mp3"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--manifest", dest="manifest_files", action="append", metavar="FILE",
                            help="a published list to build from (csv, tsv, parquet, jsonl; "
                                 "repeatable)")
        parser.add_argument("--manifest-format", dest="manifest_format",
                            help="auto (default: by file name, then columns), columns (only "
                                 "--manifest-columns) or a preset: " + ", ".join(PRESETS))
        parser.add_argument("--manifest-columns", dest="manifest_columns",
                            help="FIELD=COLUMN,... with FIELD in " + ", ".join(FIELDS)
                                 + " (text=col1+col2; source/license/author may be a constant)")
        parser.add_argument("--manifest-freesound-api", dest="manifest_freesound_api",
                            help="Freesound APIv2 base for ids without audio URLs "
                                 "(default https://freesound.org/apiv2)")
        parser.add_argument("--manifest-freesound-download", dest="manifest_freesound_download",
                            choices=("preview", "original"),
                            help="by-id audio: preview (token) or original (OAuth2)")
        parser.add_argument("--manifest-freesound-per-minute", dest="manifest_freesound_per_minute",
                            type=float, help="API requests per minute (default 60)")
        parser.add_argument("--manifest-freesound-per-day", dest="manifest_freesound_per_day",
                            type=int, help="API requests this run may make (a daily budget; "
                                           "default: until Freesound says the day's quota is spent)")
        parser.add_argument("--manifest-rate", dest="manifest_rate", type=float,
                            help="requests/s per host while fetching (default 2; 0 = no limit)")
        parser.add_argument("--manifest-media", dest="manifest_media",
                            help="media base URL for laion-bbc rows (default: BBC's)")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        """Options from the command line, checked: a mistake is one line on stderr, exit 2."""
        import sys

        opts = super().options_from_args(args)
        if opts.get("files"):    # absolute: Ray workers and a resumed run may have another cwd
            opts["files"] = [os.path.abspath(f) for f in opts["files"]]
        try:
            cls.validate(opts)
        except (ValueError, OSError) as e:
            print(f"laion-audio: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return opts

    @classmethod
    def validate(cls, options: dict) -> None:
        """A user mistake (no file, unknown preset, a column the file lacks) is a ValueError
        with one line of explanation, raised before anything runs."""
        files = list(options.get("files") or [])
        if not files:
            raise ValueError("--source manifest needs --manifest FILE")
        columns = parse_columns(options.get("columns"))
        for f in files:
            if not os.path.isfile(f):
                raise ValueError(f"manifest {f} not found")
            names = columns_of(f)
            preset = choose_preset(f, options.get("format"), names)
            if preset is None and not ({"url", "id"} & set(columns)):
                raise ValueError(f"{f}: columns {names[:12]} match no preset; give "
                                 "--manifest-format or --manifest-columns (url= or id=)")
            if preset is not None:
                missing = [c for c in preset.required
                           if c not in names and c not in _flat(columns.values())]
                if missing and not columns:
                    raise ValueError(f"{f}: not a {preset.name} file (missing columns {missing}; "
                                     f"it has {names[:12]})")
            for key, col in columns.items():
                if key in ("source", "license", "author"):
                    continue          # may be a constant
                for c in (col if isinstance(col, list) else [col]):
                    if c not in names:
                        raise ValueError(f"{f}: column {c!r} (for {key}=) is not in the file; "
                                         f"it has {names[:20]}")

    @classmethod
    def dataset_names(cls, options: dict) -> list[str]:
        """The ``source`` values its records carry (shard folders), without loading rows; a
        ``source`` column is scanned once per file version (the stages ask several times)."""
        files = list(options.get("files") or [])
        key = (tuple((f, *_stamp(f)) for f in files), options.get("format"), options.get("columns"))
        if key not in _DATASETS:
            _DATASETS[key] = cls._scan_datasets(options)
        return list(_DATASETS[key])

    @classmethod
    def _scan_datasets(cls, options: dict) -> list[str]:
        out: dict[str, None] = {}
        columns = parse_columns(options.get("columns"))
        for f in options.get("files") or []:
            try:
                names = columns_of(f)
            except (OSError, ValueError):   # moved since the crawl: the preset may still say
                names = []
            preset = choose_preset(f, options.get("format"), names)
            col = columns.get("source") or (preset.columns.get("source") if preset else None)
            if col and col in names:
                for block in iter_blocks(f, [col]):
                    for row in block:
                        s = _str(row.get(col))
                        if _SAFE_SOURCE.match(s):
                            out.setdefault(s, None)
            elif names or (preset and preset.source):
                out.setdefault(col or (preset.source if preset else None) or "manifest", None)
        return list(out)

    # ----- crawl -----
    def crawl(self, state: dict) -> Iterator[Record]:
        """``state``: ``file`` (index) and ``row`` (rows of it already yielded), advanced after
        each block, so an interrupted crawl resumes at the block it was in."""
        files = list(self.option("files") or [])
        columns = parse_columns(self.option("columns"))
        while int(state.get("file", 0)) < len(files):
            fi = int(state.get("file", 0))
            path = files[fi]
            names = columns_of(path)
            preset = choose_preset(path, self.option("format"), names)
            mapping = dict(preset.columns if preset else {})
            mapping.update(columns)
            skip = int(state.get("row", 0))
            seen = 0
            for block in iter_blocks(path):
                start = seen
                seen += len(block)
                if seen <= skip:
                    continue
                for row in block[max(0, skip - start):]:
                    rec = self.record_from_row(row, mapping, preset, os.path.basename(path))
                    if rec is not None:
                        yield rec
                state["row"] = seen
            state["file"], state["row"] = fi + 1, 0
        state["done"] = True

    def _bbc(self):
        bbc = self.__dict__.get("_bbc_source")
        if bbc is None:
            from .bbc import BBCSource

            media = self.option("media")
            bbc = BBCSource(**({"media": media} if media else {}))
            self.__dict__["_bbc_source"] = bbc
        return bbc

    def record_from_row(self, row: dict, mapping: dict, preset: Preset | None,
                        release: str) -> Record | None:
        if preset is not None and preset.name == "laion-bbc":
            rec = self._bbc().record_from_csv({k: _str(v) for k, v in row.items()})
            rec.original_data = {**rec.original_data, "release": release}
            return rec if rec.source_id else None

        def col(key: str) -> Any:
            name = mapping.get(key)
            if name is None:
                return None
            if name in row:
                return row[name]
            if key in ("source", "license", "author"):
                return name           # a constant given in the column map
            return None

        source = _str(col("source")) or (preset.source if preset else "") or ""
        if not _SAFE_SOURCE.match(source):
            log.warning("manifest %s: skipped a row whose source %r is not a dataset name",
                        release, source[:40])
            return None
        url = _str(col("url"))
        if url and not url.startswith(("http://", "https://")):
            url = ""      # a local path or a scheme we do not fetch: never a path on disk
        ident = _ID_UNSAFE.sub("", _str(col("id")))[:128]
        if not ident and source == "audiostock":
            m = _AUDIOSTOCK_ID.search(url)
            ident = m.group(1) if m else ""
        if not ident and url:
            ident = hashlib.sha1(url.encode("utf-8")).hexdigest()[:20]
        if not ident:
            log.warning("manifest %s: skipped a row with neither an id nor a URL", release)
            return None
        text_cols = mapping.get("text") or []
        ours = preset is not None and preset.name == "laion-audio"
        # our own manifests are kept verbatim (that is what makes a rebuild byte-identical);
        # other lists are untrusted site text and get cleaned like a crawl's
        clean = (lambda x: str(x) if x is not None else "") if ours else clean_text
        texts: list[str] = []
        for c in text_cols:
            texts += [t for t in (clean(x) for x in _text_values(row.get(c))) if t]
        raw_t5 = col("text_augment_t5")
        t5 = ((raw_t5 if isinstance(raw_t5, str) else None) if ours
              else " ".join(_text_values(raw_t5)).strip()) or None
        provenance = _json_value(row.get("caption_provenance")) if ours else {}
        if not provenance and texts:
            provenance = {"rule": "released", "release": release,
                          "columns": [c for c in text_cols if row.get(c)]}
            if t5:
                provenance["t5_column"] = mapping.get("text_augment_t5")
        if ours:
            original = _json_value(row.get("original_data"))
        else:
            used = set(_flat(mapping.values()))
            original = {k: v for k, v in row.items() if k not in used and v not in (None, "")}
            original["release"] = release
        rec = Record(
            source=source, source_id=ident, url=url,
            title=clean_text(col("title")), description=clean_text(col("description")),
            tags=_text_values(col("tags")) if ours else _tag_values(col("tags")),
            license=clean(col("license")), author=clean(col("author")),
            duration=_float(col("duration")),
            original_data=original, texts=texts, caption_provenance=provenance,
            text_augment_t5=t5,
        )
        if source == "freesound" and not ours and rec.license.startswith(("http://", "https://")):
            from .freesound import license_name

            rec.license = license_name(rec.license)     # a licence URL -> "CC BY 4.0" etc.
        expected = _str(col("audio_sha256")).lower()
        if re.fullmatch(r"[0-9a-f]{64}", expected):
            rec.filter_match = {"expected_audio_sha256": expected}
        if source == "freesound" and not ident.isdigit():
            rec.fail("crawl", FailureCode.BAD_METADATA, f"{ident!r} is not a Freesound id")
        return rec

    # ----- fetch -----
    def _delegate(self, source: str) -> HttpSource:
        """The original site's source (its fetch headers and file naming), sharing our client;
        a plain HTTP source for sites without a web crawler."""
        cache = self.__dict__.setdefault("_delegates", {})
        if source not in cache:
            from . import all_sources

            cls = all_sources().get(source)
            opts: dict[str, Any] = {"http": self.http}
            if source == "freesound":
                api = self.option("freesound_api", env="LAION_AUDIO_FREESOUND_API")
                if api:
                    opts["api"] = api
                opts["download"] = self.option("freesound_download", "preview")
            if cls is not None and issubclass(cls, HttpSource) and cls is not ManifestSource:
                cache[source] = cls(**opts)
            else:
                cache[source] = HttpSource(http=self.http)
        return cache[source]

    def pacer(self):
        from .freesound import ApiPacer

        pacer = self.__dict__.get("_pacer")
        if pacer is None:
            # the build runs several fetch tasks at once; they share the key's per-minute quota
            share = max(1, int(self.option("fetch_tasks", 1)))
            per_day = self.option("freesound_per_day")
            pacer = ApiPacer(float(self.option("freesound_per_minute", 60.0)) / share,
                             recheck=float(self.option("freesound_recheck", 3600.0)),
                             budget=int(per_day) // share if per_day else None)
            pacer.per_day = int(per_day) if per_day else None
            self.__dict__["_pacer"] = pacer
        return pacer

    def fetch(self, record: Record, dest_dir: Path) -> Path:
        delegate = self._delegate(record.source)
        if record.source == "freesound":
            from .freesound import needs_api, resolve_by_id

            if needs_api(record):
                resolve_by_id(delegate, record, self.pacer())
        return delegate.fetch(record, dest_dir)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for k in ("_delegates", "_pacer", "_bbc_source"):
            state.pop(k, None)
        return state


_DATASETS: dict = {}


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return (None, None)


def _flat(values) -> list[str]:
    out: list[str] = []
    for v in values:
        out += v if isinstance(v, list) else [v]
    return out


SOURCE = ManifestSource
