"""Eval-set overlap by source id: one vectorised join of ledger keys against eval-set ids.

Which ledger column carries which id (the convention with the sources engineer, also in
docs/filters.md):

* Freesound ids: records with ``source == "freesound"`` (``source_id`` is the Freesound sound
  id), plus any record whose ``original_data`` has ``"freesound_id"`` (a mirror of a Freesound
  sound on another site that kept its id).
* YouTube ids: ``original_data["youtube_id"]`` of any record; for ``source == "audioset"``
  without it, ``source_id`` parsed as ``<ytid>_<start>``. The record's segment window is
  ``trim_start``/``trim_end`` (seconds into the video).

By default any record of a listed video or Freesound sound matches (a clip cut elsewhere from
the same upload is still the same recording). ``youtube_window=True`` matches YouTube records
only when their window overlaps the eval segment (records without a window still match).

Everything is pyarrow/pandas column work: ``original_data`` is read with a regex over the
JSON strings that ``Record.to_row`` writes (``json.dumps(sort_keys=True)``), never per row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

MATCH_COLUMNS = ["source", "source_id", "eval_set", "split", "item_id", "matched_id", "method"]

_YT_JSON = r'"youtube_id": "(?P<v>[^"]+)"'
_FS_JSON = r'"freesound_id": "?(?P<v>[0-9]+)"?'
_AUDIOSET_KEY = r"^(?P<v>.+)_(?P<start>-?[0-9]+(?:\.[0-9]+)?)$"


def _extract(arr: pa.ChunkedArray, pattern: str, literal: str | None = None,
             where: pa.Array | None = None) -> pa.Array:
    """Named group ``v`` of ``pattern`` per row (null where it does not match).

    The regex runs only on rows that contain ``literal`` (a fast substring scan) and satisfy
    ``where``; everything else is null without paying for the regex."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    mask = pc.match_substring(arr, literal) if literal else pc.is_valid(arr)
    if where is not None:
        mask = pc.and_(mask, where)
    mask = pc.fill_null(mask, False)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    vals = pc.struct_field(pc.extract_regex(arr.filter(mask), pattern), "v")
    return pc.replace_with_mask(pa.nulls(len(arr), pa.string()), mask, vals)


def record_keys(table: pa.Table, fs_keys: pa.Array | None = None,
                yt_keys: pa.Array | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Freesound and YouTube keys of ledger rows: (source, source_id, key[, start, end]).

    With ``fs_keys``/``yt_keys`` (the eval ids) only rows whose key is among them are returned:
    a hash-set filter in Arrow, so the pandas join afterwards sees only the few hits."""
    source = table.column("source")
    sid = table.column("source_id")
    od = table.column("original_data")

    is_fs = pc.equal(source, "freesound")
    fs_from_json = _extract(od, _FS_JSON, literal='"freesound_id"')
    fs_id = pc.if_else(is_fs, pc.utf8_trim_whitespace(sid), fs_from_json)
    fs_id = pc.utf8_ltrim(fs_id, "0")   # "0123" and "123" are the same sound
    fs_mask = pc.is_valid(fs_id) if fs_keys is None else pc.fill_null(pc.is_in(fs_id, value_set=fs_keys), False)
    fs = pa.table({"source": source, "source_id": sid, "key": fs_id}).filter(fs_mask)

    yt_json = _extract(od, _YT_JSON, literal='"youtube_id"')
    is_as = pc.equal(source, "audioset")
    yt_key = _extract(sid, _AUDIOSET_KEY, where=pc.and_(is_as, pc.is_null(yt_json)))
    yt = pc.if_else(pc.is_valid(yt_json), yt_json, pc.if_else(is_as, yt_key, pa.scalar(None, pa.string())))
    yt_tab = pa.table({"source": source, "source_id": sid, "key": yt,
                       "start": table.column("trim_start"), "end": table.column("trim_end")})
    yt_mask = pc.is_valid(yt) if yt_keys is None else pc.fill_null(pc.is_in(yt, value_set=yt_keys), False)
    yt_tab = yt_tab.filter(yt_mask)
    return fs.to_pandas(), yt_tab.to_pandas()


def find_id_overlaps(table: pa.Table, evalset_items: pd.DataFrame, *,
                     youtube_window: bool = False) -> pd.DataFrame:
    """Every (record, eval item) pair that shares a Freesound or YouTube id.

    Returns :data:`MATCH_COLUMNS`, sorted by record key then eval set/split/item, so the first
    row per record is a deterministic "primary" match.
    """
    if len(table) == 0 or len(evalset_items) == 0:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in MATCH_COLUMNS})
    items = evalset_items.copy()
    items["key"] = items["match_id"].astype("string").str.strip()
    fs_items = items[items["id_kind"] == "freesound"].copy()
    fs_items["key"] = fs_items["key"].str.lstrip("0")
    yt_items = items[items["id_kind"] == "youtube"]
    fs_df, yt_df = record_keys(table, pa.array(fs_items["key"].unique().astype(str), pa.string()),
                               pa.array(yt_items["key"].unique().astype(str), pa.string()))

    parts = []
    if len(fs_df) and len(fs_items):
        m = fs_df.astype({"key": "string"}).merge(
            fs_items[["key", "eval_set", "split", "item_id", "match_id"]], on="key", how="inner")
        m["method"] = "freesound_id"
        parts.append(m)
    if len(yt_df) and len(yt_items):
        m = yt_df.astype({"key": "string"}).merge(
            yt_items[["key", "eval_set", "split", "item_id", "match_id", "start", "end"]],
            on="key", how="inner", suffixes=("", "_eval"))
        if youtube_window and len(m):
            rs = m["start"].astype("float64").to_numpy(na_value=np.nan)
            re_ = m["end"].astype("float64").to_numpy(na_value=np.nan)
            es = m["start_eval"].to_numpy(dtype="float64", na_value=np.nan)
            ee = m["end_eval"].to_numpy(dtype="float64", na_value=np.nan)
            unknown = np.isnan(rs) | np.isnan(re_) | np.isnan(es) | np.isnan(ee)
            overlaps = (rs < ee) & (es < re_)
            m = m[unknown | overlaps].copy()
            m["method"] = np.where(unknown[unknown | overlaps], "youtube_id", "youtube_id+window")
        else:
            m["method"] = "youtube_id"
        parts.append(m)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in MATCH_COLUMNS})
    out = pd.concat([p.rename(columns={"match_id": "matched_id"}) for p in parts], ignore_index=True)
    out = out[MATCH_COLUMNS].astype("string")
    return out.sort_values(["source", "source_id", "eval_set", "split", "item_id"],
                           kind="stable").reset_index(drop=True)


def primary_matches(matches: pd.DataFrame) -> pd.DataFrame:
    """One row per record: its first match plus how many eval items it matched in all."""
    if matches.empty:
        return matches.assign(n_matches=pd.Series(dtype="int64"))
    counts = matches.groupby(["source", "source_id"], sort=False).size().rename("n_matches")
    first = matches.drop_duplicates(["source", "source_id"], keep="first")
    return first.merge(counts.reset_index(), on=["source", "source_id"])
