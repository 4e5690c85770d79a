"""Duplicates inside the corpus: exact (same decoded PCM) and near (confirmed content matches).

Keep rule (one copy per group survives, the others get ``duplicate_of`` = kept
"source/source_id"):

1. source priority: :data:`DEFAULT_SOURCE_PRIORITY` (earlier wins; sources not listed come
   after, alphabetically). Sources with human-written captions and clear licences first, label-
   derived (AudioSet) last, because a duplicate's kept copy carries the caption into training;
2. longer ``audio_duration`` (a full upload beats its excerpt);
3. ``(source, source_id)`` ascending, so the choice never depends on input order.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

DEFAULT_SOURCE_PRIORITY = ("freesound", "bbc", "soundbible", "epidemic", "audiostock",
                           "free_to_use_sounds", "sonniss", "we_sound_effects", "paramount",
                           "local", "audioset")


def priority_rank(sources: pd.Series, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.Series:
    order = {s: i for i, s in enumerate(priority)}
    return sources.map(lambda s: order.get(s, len(order))).astype("int64")


def keep_order(df: pd.DataFrame, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.DataFrame:
    """``df`` (source, source_id, audio_duration, ...) sorted best-to-keep first."""
    out = df.assign(_rank=priority_rank(df["source"], priority),
                    _dur=-pd.to_numeric(df["audio_duration"], errors="coerce").fillna(0.0))
    out = out.sort_values(["_rank", "_dur", "source", "source_id"], kind="stable")
    return out.drop(columns=["_rank", "_dur"])


def exact_duplicates(df: pd.DataFrame, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY) -> pd.DataFrame:
    """Rows sharing ``audio_sha256`` (decoded PCM), all but the kept one per hash.

    Returns source, source_id, duplicate_of, audio_sha256 for every dropped row (vectorised:
    one sort and one groupby over the whole table)."""
    cols = ["source", "source_id", "duplicate_of", "audio_sha256"]
    have = df[df["audio_sha256"].fillna("") != ""]
    if have.empty:
        return pd.DataFrame(columns=cols)
    ordered = keep_order(have, priority)
    first = ordered.groupby("audio_sha256", sort=False).head(1)
    keeper = (first["source"] + "/" + first["source_id"]).set_axis(first["audio_sha256"])
    dropped = ordered[~ordered.index.isin(first.index)].copy()
    dropped["duplicate_of"] = dropped["audio_sha256"].map(keeper)
    return dropped[cols].reset_index(drop=True)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (size >= 2) of items linked by confirmed match pairs."""
    uf = UnionFind(n)
    for a, b in pairs:
        uf.union(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]
