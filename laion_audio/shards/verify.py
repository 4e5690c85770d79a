"""Checking: decode every sample of every split (ours or LAION's own tars) and compare with
``sizes.json`` and ``index.json``. Problems are collected and reported, never raised."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import soundfile as sf

from ..storage import Root
from .layout import (_SHARD_NAME, INDEX_NAME, RECEIPTS_DIR, SAMPLE_RATE, SIZES_NAME,
                     is_temp_name)


class _HashingReader:
    """A read-only stream that hashes and counts every byte read from it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _check_text(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "'text' is an empty string"
    if isinstance(value, list):
        if not value:
            return "'text' is an empty list"
        if not all(isinstance(t, str) and t.strip() for t in value):
            return "'text' holds a non-string or empty caption"
        return None
    return "'text' is missing" if value is None else f"'text' is a {type(value).__name__}"


#: frames decoded at a time: an hour-long sample is checked in ~4 MB of floats, not 700 MB
DECODE_BLOCK = 1 << 20


def _decode_all(flac: bytes) -> tuple[int, int, int]:
    """Decode every frame of a FLAC (a corrupt frame raises) in blocks; (frames, rate, channels)."""
    from ..transcode.audio import mono_blocks

    with sf.SoundFile(io.BytesIO(flac)) as f:
        frames = sum(len(block) for block in mono_blocks(f, DECODE_BLOCK))
        return frames, f.samplerate, f.channels


_OBJECT_AT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _check_sample(key: str, members: dict[str, bytes]) -> tuple[float, list[str]]:
    problems = []
    seconds = 0.0
    for ext in ("flac", "json"):
        if ext not in members:
            problems.append(f"sample {key}: no .{ext} member next to the others")
    if "flac" in members:
        try:
            frames, sr, channels = _decode_all(members["flac"])
            if sr != SAMPLE_RATE or channels != 1:
                problems.append(f"sample {key}: FLAC is {sr} Hz {channels} ch, "
                                f"not {SAMPLE_RATE} Hz mono")
            if frames == 0:
                problems.append(f"sample {key}: FLAC holds no samples")
            seconds = frames / sr
        except Exception as exc:
            # libsndfile names the in-memory stream by its address: the same tar reported twice
            # would read differently
            problems.append(f"sample {key}: FLAC does not decode: {_OBJECT_AT.sub('FLAC', str(exc))}")
    if "json" in members:
        try:
            doc = json.loads(members["json"].decode("utf-8"))
        except Exception as exc:
            problems.append(f"sample {key}: JSON does not parse: {exc}")
        else:
            if not isinstance(doc, dict):
                problems.append(f"sample {key}: JSON is not an object")
            else:
                bad = _check_text(doc.get("text"))
                if bad:
                    problems.append(f"sample {key}: {bad}")
                if "tag" in doc and not isinstance(doc["tag"], list):
                    problems.append(f"sample {key}: 'tag' is not a list")
                if "flac" in members and seconds > 0:
                    problems.extend(_check_promised_length(key, doc, seconds))
    return seconds, problems


#: a sample may end this much before the window its record promised (codec granularity)
WINDOW_SLACK_SECONDS = 0.5


def _check_promised_length(key: str, doc: dict, seconds: float) -> list[str]:
    """What a shard can know about length: its own JSON ``duration`` (written from the FLAC)
    and, for windowed sources (AudioSet), ``original_data`` start/end seconds. A sample cut
    off in transit decodes fine but is shorter than both promised."""
    out = []
    stated = doc.get("duration")
    if isinstance(stated, (int, float)) and abs(float(stated) - seconds) > 0.01:
        out.append(f"sample {key}: JSON duration {float(stated):.3f} s, FLAC holds {seconds:.3f} s")
    od = doc.get("original_data")
    if isinstance(od, dict):
        start, end = od.get("start_seconds"), od.get("end_seconds")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start:
            window = float(end) - float(start)
            if seconds < window - WINDOW_SLACK_SECONDS:
                out.append(f"sample {key}: holds {seconds:.3f} s of the {window:.3f} s window "
                           "its record promised (cut off?)")
    return out


def _verify_tar(root: Root, path: str) -> dict:
    """Stream one tar once: hash its bytes, group members into samples, decode every sample."""
    problems: list[str] = []
    keys: list[str] = []
    seconds = 0.0
    seen: set[str] = set()
    current_key, members = None, {}

    def close_sample():
        nonlocal seconds
        if current_key is None:
            return
        s, p = _check_sample(current_key, members)
        seconds += s
        problems.extend(p)
        keys.append(current_key)

    with root.open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = _member_key(info.name)
                    if key != current_key:
                        close_sample()
                        if key in seen:
                            problems.append(f"sample {key}: members are not adjacent "
                                            "(key appears twice)")
                        seen.add(key)
                        current_key, members = key, {}
                    if ext in members:
                        problems.append(f"sample {key}: duplicate member {info.name}")
                    members[ext] = tar.extractfile(info).read()
                close_sample()
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"tar is damaged: {exc}")
        reader.drain()
    return {"samples": len(keys), "bytes": reader.count, "sha256": reader.sha.hexdigest(),
            "seconds": seconds, "keys": keys, "problems": problems}


@dataclass
class VerifyReport:
    out: str
    splits: dict[str, dict] = field(default_factory=dict)   # "ds/split" -> counts
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def totals(self) -> dict:
        keys = ("shards", "samples", "bytes", "seconds")
        return {k: sum(s[k] for s in self.splits.values()) for k in keys}

    def as_dict(self) -> dict:
        return {"out": self.out, "ok": self.ok, "splits": self.splits, "totals": self.totals,
                "problems": self.problems, "notes": self.notes}

    def lines(self) -> list[str]:
        out = [f"verify {self.out}"]
        for name, s in sorted(self.splits.items()):
            out.append(f"  {name}: {s['samples']} samples in {s['shards']} shards, "
                       f"{s['bytes'] / 1e6:.1f} MB, {s['seconds'] / 3600:.3f} h"
                       + ("" if s["indexed"] else "  (no index.json: checksums not checked)"))
        t = self.totals
        out.append(f"  total: {t['samples']} samples, {t['shards']} shards, "
                   f"{t['bytes'] / 1e6:.1f} MB, {t['seconds'] / 3600:.3f} h")
        out += [f"  note: {n}" for n in self.notes]
        if self.ok:
            out.append("  OK: every sample decodes; sizes.json and index agree with the tars")
        else:
            out.append(f"  {len(self.problems)} PROBLEMS:")
            out += [f"    {p}" for p in self.problems]
        return out


def verify(out: str | os.PathLike, *, workers: int = 2,
           storage_options: dict | None = None) -> VerifyReport:
    """Check every split under ``out`` (ours or LAION's layout): sizes.json lists exactly the tars
    present with the right counts; the index (when present) matches bytes, sha256 and seconds;
    every FLAC decodes as 48 kHz mono and every JSON has a non-empty ``text``; a sample's members
    are adjacent and keys are unique within a split. Problems are collected, never raised."""
    root = Root(out, storage_options)
    report = VerifyReport(root.url)
    if not root.exists(root.path):
        report.problems.append(f"{root.url} does not exist")
        return report
    split_dirs = sorted(p.rsplit("/", 1)[0] for p in root.find(SIZES_NAME))
    if not split_dirs:
        report.problems.append(f"no {SIZES_NAME} under {root.url}: not a shard folder")
    if not root.is_local:
        root.fs.invalidate_cache()
    all_files = root.fs.find(root.path)
    for path in all_files:
        folder, _, name = path.rpartition("/")
        if is_temp_name(name):
            report.problems.append(f"{root.display(path)}: temporary file left by an unfinished run")
        elif name.endswith(".tar") and folder not in split_dirs \
                and not folder.endswith("/" + RECEIPTS_DIR):
            report.problems.append(f"{root.display(path)}: tar in a folder without {SIZES_NAME} "
                                   "(CLAP never reads it)")

    jobs: list[tuple[str, str]] = []      # (split dir, tar name)
    sizes_of: dict[str, dict] = {}
    index_of: dict[str, dict | None] = {}
    for d in split_dirs:
        shown = root.display(d)
        try:
            sizes = json.loads(root.read_bytes(f"{d}/{SIZES_NAME}"))
            if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
                raise ValueError("not an object of shard name -> integer")
        except Exception as exc:
            report.problems.append(f"{shown}/{SIZES_NAME}: unreadable: {exc}")
            continue
        sizes_of[d] = sizes
        raw_index = root.read_bytes(f"{d}/{INDEX_NAME}")
        index = None
        if raw_index is not None:
            try:
                index = json.loads(raw_index)
                index["by_name"] = {e["name"]: e for e in index["shards"]}
            except Exception as exc:
                report.problems.append(f"{shown}/{INDEX_NAME}: unreadable: {exc}")
                index = None
        index_of[d] = index
        present = {n for n in root.listdir(d) if n.endswith(".tar")}
        for name in sorted(set(sizes) - present):
            report.problems.append(f"{shown}/{name}: listed in {SIZES_NAME} but missing")
        for name in sorted(present - set(sizes)):
            report.problems.append(f"{shown}/{name}: not listed in {SIZES_NAME} (CLAP never reads it)")
        if index is not None:
            if set(index["by_name"]) != set(sizes):
                report.problems.append(f"{shown}: {INDEX_NAME} and {SIZES_NAME} list different shards")
            total = sum(e.get("samples", 0) for e in index["shards"])
            if index.get("samples") != total:
                report.problems.append(f"{shown}/{INDEX_NAME}: total samples {index.get('samples')} "
                                       f"!= sum over shards {total}")
        jobs += [(d, name) for name in sorted(set(sizes) & present, key=_shard_sort_key)]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda job: _verify_tar(root, f"{job[0]}/{job[1]}"), jobs))

    keys_of: dict[str, Counter] = defaultdict(Counter)
    for d in sizes_of:
        report.splits[_split_name(root, d)] = {"shards": 0, "samples": 0, "bytes": 0,
                                               "seconds": 0.0, "indexed": index_of[d] is not None}
    for (d, name), res in zip(jobs, results):
        shown = f"{root.display(d)}/{name}"
        split = report.splits[_split_name(root, d)]
        split["shards"] += 1
        split["samples"] += res["samples"]
        split["bytes"] += res["bytes"]
        split["seconds"] = round(split["seconds"] + res["seconds"], 6)
        keys_of[d].update(k.rsplit("/", 1)[-1] for k in res["keys"])
        report.problems += [f"{shown}: {p}" for p in res["problems"]]
        if res["samples"] != sizes_of[d][name]:
            report.problems.append(f"{shown}: holds {res['samples']} samples, "
                                   f"{SIZES_NAME} says {sizes_of[d][name]}")
        entry = (index_of[d] or {}).get("by_name", {}).get(name)
        if entry is not None:
            for k in ("samples", "bytes", "sha256"):
                if entry.get(k) != res[k]:
                    report.problems.append(f"{shown}: {k} is {res[k]}, {INDEX_NAME} says {entry.get(k)}")
            if abs(float(entry.get("seconds", -1)) - res["seconds"]) > 1e-3:
                report.problems.append(f"{shown}: holds {res['seconds']:.3f} s of audio, "
                                       f"{INDEX_NAME} says {entry.get('seconds')}")
    for d, counts in keys_of.items():
        dups = [k for k, n in counts.items() if n > 1]
        if dups:
            report.problems.append(f"{root.display(d)}: {len(dups)} sample names occur more than "
                                   f"once in the split, e.g. {dups[:3]}")
    _check_across_splits(root, keys_of, index_of, report)
    for name, s in sorted(report.splits.items()):
        if s["samples"] == 0:
            report.problems.append(f"{name}: the split holds no sample ({s['shards']} shards): CLAP "
                                   f"reads nothing from it; remove it or rebuild it")
    if any(not s["indexed"] for s in report.splits.values()):
        report.notes.append(f"splits without {INDEX_NAME} (LAION's own layout) were checked "
                            "against sizes.json only")
    return report


def _check_across_splits(root: Root, keys_of: dict, index_of: dict, report: VerifyReport) -> None:
    """Our sample names come from (source, source_id): one name in two splits of a dataset is
    one record trained on and tested on. Only splits with our index.json are compared (LAION
    numbers each split's samples from 0)."""
    by_dataset: dict[str, list[str]] = defaultdict(list)
    for d in keys_of:
        if index_of.get(d) is not None:
            by_dataset[d.rsplit("/", 1)[0]].append(d)
    for dataset, dirs in sorted(by_dataset.items()):
        seen: dict[str, str] = {}
        shared = defaultdict(list)
        for d in sorted(dirs):
            for key in keys_of[d]:
                if key in seen and seen[key] != d:
                    shared[(seen[key], d)].append(key)
                seen.setdefault(key, d)
        for (a, b), keys in sorted(shared.items()):
            report.problems.append(f"{root.display(a)} and {root.display(b)}: {len(keys)} samples are in "
                                   f"both splits (one record trained on and tested on), e.g. {sorted(keys)[:3]}")


def _shard_sort_key(name: str) -> tuple[int, str]:
    m = _SHARD_NAME.match(name)
    return (int(m.group(1)) if m else 1 << 62, name)


def _split_name(root: Root, d: str) -> str:
    rel = d[len(root.path):].strip("/")
    return rel or "."
