"""``laion-audio export-manifest --out WORK FILE``: the corpus as a release manifest + data card.

One row per sharded record: source, source_id, url (credentials redacted), texts,
text_augment_t5, tags, license, author, duration (decoded seconds), source_duration,
audio_sha256 (of the decoded PCM), split, shard, plus caption_provenance and original_data as
JSON (so ``build --source manifest`` from this file alone writes byte-identical shards).
Parquet, or CSV when FILE ends in ``.csv`` (lists as JSON). Nothing of the user's machine goes
out: URLs that are not http(s) (local and pack sources) are left empty, strings in
``original_data`` that are paths on this machine become their base name, and known secrets and
``token=``-style parameters are redacted. ``FILE`` minus its extension + ``.md`` is the data
card: counts, hours, licence mix, caption provenance per source, and how it was built.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .. import atomic

COLUMNS = ("source", "source_id", "url", "title", "description", "texts", "text_augment_t5",
           "tags", "license", "author", "duration", "source_duration", "audio_sha256", "split",
           "shard", "caption_provenance", "original_data")

#: environment variables that hold credentials the sources use
SECRET_ENV = ("FREESOUND_API_KEY", "FREESOUND_OAUTH_TOKEN")


def register(sub) -> None:
    p = sub.add_parser("export-manifest", help="the corpus as a release manifest + data card",
                       description="Write every sharded record of a build as a release manifest "
                                   "(Parquet, or CSV by extension) and a Markdown data card beside "
                                   "it. No local paths, no secrets.")
    p.add_argument("--out", default="laion-audio-out", help="the build's work folder")
    p.add_argument("--shards", default=None, help="shard root, if not WORK/shards (for the card)")
    p.add_argument("file", help="manifest to write (.parquet or .csv)")
    p.set_defaults(func=run)


class _Scrubber:
    """Redacts secrets and replaces paths of this machine with their base names."""

    def __init__(self, work: Path):
        roots = {str(work.resolve()), str(Path.home()), tempfile.gettempdir(), os.getcwd()}
        self.roots = sorted({r.rstrip("/") for r in roots if r and r != "/"}, key=len, reverse=True)

    def path_like(self, s: str) -> bool:
        if not (s.startswith("/") or s.startswith("~") or (len(s) > 2 and s[1] == ":" and s[2] in "\\/")):
            return False
        return (s.startswith("~") or any(s == r or s.startswith(r + "/") for r in self.roots)
                or (len(s) < 4096 and "\n" not in s and os.path.exists(s)))

    def text(self, s: str) -> str:
        from laion_audio.http import redact

        if self.path_like(s):
            s = os.path.basename(s.rstrip("/\\"))
        if not s.startswith(("http://", "https://")):
            for r in self.roots:      # a path inside a longer string (a message)
                s = s.replace(r + "/", "").replace(r, "")
        return redact(s)

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        return v

    def url(self, url: str) -> str:
        from laion_audio.http import redact

        return redact(url) if url.startswith(("http://", "https://")) else ""


def _rows(ledger, scrub: _Scrubber):
    """Export rows, a ledger batch at a time."""
    from laion_audio.records import Status

    table = ledger.select(status=Status.SHARDED)
    for batch in table.to_batches(max_chunksize=8192):
        out = []
        for r in batch.to_pylist():
            out.append({
                "source": r["source"], "source_id": r["source_id"], "url": scrub.url(r["url"] or ""),
                "title": scrub.text(r["title"] or ""), "description": scrub.text(r["description"] or ""),
                "texts": [scrub.text(t) for t in r["texts"] or []],
                "text_augment_t5": scrub.text(r["text_augment_t5"]) if r["text_augment_t5"] else None,
                "tags": [scrub.text(t) for t in r["tags"] or []],
                "license": scrub.text(r["license"] or ""), "author": scrub.text(r["author"] or ""),
                "duration": r["audio_duration"], "source_duration": r["duration"],
                "audio_sha256": r["audio_sha256"] or "", "split": r["split"] or "",
                "shard": r["shard"] or "",
                "caption_provenance": json.dumps(scrub.value(json.loads(r["caption_provenance"] or "{}")),
                                                 sort_keys=True, ensure_ascii=False),
                "original_data": json.dumps(scrub.value(json.loads(r["original_data"] or "{}")),
                                            sort_keys=True, ensure_ascii=False),
            })
        yield out


def _schema(meta: dict):
    import pyarrow as pa

    types = {"texts": pa.list_(pa.string()), "tags": pa.list_(pa.string()),
             "duration": pa.float64(), "source_duration": pa.float64()}
    return pa.schema([pa.field(c, types.get(c, pa.string())) for c in COLUMNS],
                     metadata={k.encode(): str(v).encode() for k, v in meta.items()})


def _build_info(work: Path, shards: Path) -> dict:
    """Seed, test fraction and shard size from the shards' index files."""
    info: dict[str, Any] = {}
    per_shard = 0
    for index in sorted(shards.glob("*/*/index.json")):
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        info.setdefault("seed", doc.get("seed"))
        info.setdefault("test_fraction", doc.get("test_fraction"))
        for entry in doc.get("shards", []) if isinstance(doc.get("shards"), list) else []:
            per_shard = max(per_shard, int(entry.get("samples", 0)))
    if per_shard:
        info["samples_per_shard_max"] = per_shard
    return info


def export(work: Path, target: Path, shards: Path | None = None) -> dict:
    """Write the manifest and the data card; returns the card's figures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from laion_audio import __version__
    from laion_audio.ledger import Ledger

    from laion_audio.http import secret_from_env

    for name in SECRET_ENV:     # registered for redaction wherever they appear verbatim
        secret_from_env(name)
    shards = shards or work / "shards"
    info = {"laion_audio_version": __version__, **_build_info(work, shards)}
    scrub = _Scrubber(work)
    csv_out = target.suffix.lower() == ".csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    stats: dict[str, dict] = defaultdict(lambda: {"records": 0, "seconds": 0.0, "train": 0, "test": 0,
                                                   "licences": Counter(), "provenance": Counter(),
                                                   "t5": 0})
    schema = _schema(info)
    with Ledger(work / "ledger", lock=False) as ledger:
        if csv_out:
            import csv

            fh = open(tmp, "w", encoding="utf-8", newline="")
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), lineterminator="\n")
            writer.writeheader()
        else:
            pw = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            for rows in _rows(ledger, scrub):
                for r in rows:
                    s = stats[r["source"]]
                    s["records"] += 1
                    s["seconds"] += r["duration"] or 0.0
                    s[r["split"]] = s.get(r["split"], 0) + 1
                    s["licences"][r["license"] or "(unknown)"] += 1
                    s["provenance"][json.loads(r["caption_provenance"]).get("rule", "(none)")] += 1
                    s["t5"] += 1 if r["text_augment_t5"] else 0
                if csv_out:
                    for r in rows:
                        writer.writerow({**r, "texts": json.dumps(r["texts"], ensure_ascii=False),
                                         "tags": json.dumps(r["tags"], ensure_ascii=False)})
                elif rows:
                    pw.write_table(pa.Table.from_pylist(rows, schema=schema))
        finally:
            if csv_out:
                fh.close()
            else:
                pw.close()
    atomic.publish(tmp, target)
    card = target.with_suffix(".md")
    card_tmp = card.with_name(f".{card.name}.tmp")
    card_tmp.write_text(data_card(target.name, stats, info), encoding="utf-8")
    atomic.publish(card_tmp, card)
    return {"records": sum(s["records"] for s in stats.values()), "card": str(card)}


def data_card(name: str, stats: dict, info: dict) -> str:
    total = sum(s["records"] for s in stats.values())
    hours = sum(s["seconds"] for s in stats.values()) / 3600
    lines = [f"# Data card: {name}", "",
             f"{total} audio-caption pairs, {hours:.2f} hours, {len(stats)} sources. Built with "
             f"laion-audio {info['laion_audio_version']}"
             + (f", seed {info['seed']}, test fraction {info['test_fraction']}" if "seed" in info else "")
             + ".", "",
             "## Per source", "",
             "| source | pairs | hours | train | test | with T5 caption |",
             "|---|---:|---:|---:|---:|---:|"]
    for src in sorted(stats):
        s = stats[src]
        lines.append(f"| {src} | {s['records']} | {s['seconds'] / 3600:.3f} | {s.get('train', 0)} | "
                     f"{s.get('test', 0)} | {s['t5']} |")
    lines += ["", "## Licence mix", "", "| source | licence | pairs |", "|---|---|---:|"]
    for src in sorted(stats):
        for lic, n in stats[src]["licences"].most_common():
            lines.append(f"| {src} | {lic} | {n} |")
    lines += ["", "## Caption provenance", "",
              "How each pair's `texts` were made (`caption_provenance.rule` in the manifest and "
              "in each sample's JSON).", "", "| source | rule | pairs |", "|---|---|---:|"]
    for src in sorted(stats):
        for rule, n in stats[src]["provenance"].most_common():
            lines.append(f"| {src} | {rule} | {n} |")
    rebuild = f"laion-audio build --source manifest --manifest {name} --out REBUILD"
    if "seed" in info:
        rebuild += f" --seed {info['seed']} --test-fraction {info['test_fraction']}"
    if info.get("samples_per_shard_max"):
        rebuild += f" --samples-per-shard {info['samples_per_shard_max']}"
    lines += ["", "## How it was built", "",
              "Each source was crawled (or read from its pack), fetched, decoded and resampled to "
              "48 kHz mono FLAC in-process, captioned by the source's rule (or the template/T5 "
              "for tag-only records), filtered (eval-set overlaps, duplicates) and written as "
              "WebDataset shards (`<dataset>/<split>/N.tar`). `audio_sha256` is the SHA-256 of "
              "the decoded PCM, so a rebuild can tell whether a URL still serves the same audio.",
              "", "Rebuild from this file alone (a changed or vanished link is reported, never "
              "sharded as the published audio):", "", f"    {rebuild}", "",
              "Local and purchased-pack sources have no public URL (empty `url`); they cannot "
              "be rebuilt from the manifest.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    work = Path(args.out)
    if not (work / "ledger").is_dir():
        print(f"laion-audio: no ledger in {work}; run `laion-audio build --out {work}` first",
              file=sys.stderr)
        return 2
    target = Path(args.file)
    if target.suffix.lower() not in (".parquet", ".csv"):
        print("laion-audio: the manifest file must end in .parquet or .csv", file=sys.stderr)
        return 2
    from ._checks import writable_file

    writable_file(target, "FILE")                      # a folder or an unwritable place: before
    writable_file(target.with_suffix(".md"), "the data card")   # the work, not a traceback after
    result = export(work, target, Path(args.shards) if args.shards else None)
    if not result["records"]:
        print(f"laion-audio: {work} has no sharded records; wrote an empty manifest", file=sys.stderr)
        return 1
    print(f"{result['records']} records -> {target}; data card {result['card']}")
    return 0
