"""``laion-audio audioset-captions CSV... --model DIR|template --out FILE.parquet``: caption
AudioSet segments from their labels alone (no audio), as LAION released its T5 captions.

One row per segment: ``ytid``, ``start``, ``end``, ``label_ids``, ``label_names``, ``text``
(the model caption, de-biased, or the template where the model missed a keyword),
``text_template`` ("The sounds of A, B and C"), ``provenance`` (JSON: rule, model and weights
hash, decoding, raw text, de-bias replacements, fallback reason), ``csv`` and ``row``. The CSVs
are streamed in chunks; each chunk is written as a part file beside the output, so a killed run
(even kill -9) resumes where it stopped, and the SQLite cache (default ``FILE.parquet.cache.sqlite``)
means each distinct label set is generated once, across runs. Labels come from
``--audioset-labels DIR`` or, when absent, from the class list shipped in ``manifests/``.
A model must pass the quality gate (its ``caption_quality.json``) unless ``--force-caption-model``.
``build --audioset-captions FILE.parquet`` joins the rows into a build as ``text_augment_t5``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .. import atomic
from . import _checks
from ..captions.keywords import sha256_file

#: schema version of the output; part of the run key
FORMAT = 2        # 2: rows with bad times or open quotes refused, duplicate segments dropped


def register(sub) -> None:
    p = sub.add_parser("audioset-captions", help="caption AudioSet segment CSVs from their labels "
                                                 "(T5 keyword-to-caption or template) into Parquet",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", metavar="CSV", help="AudioSet *_segments.csv files")
    p.add_argument("--model", required=True, metavar="DIR|template",
                   help="captioner folder (train-captioner output or a keytotext-era T5), or "
                        "'template' for the paper's template only")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--audioset-labels", metavar="DIR",
                   help="folder with class_labels_indices.csv (+ ontology.json); default: the copy shipped in manifests/audioset)")
    p.add_argument("--template", default="sounds_of")
    p.add_argument("--input-format", choices=["common_gen", "k2t", "laion-audio"])
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the beam covering most keywords")
    p.add_argument("--keyword-boost", type=float, default=None,
                   help="soft keyword constraint (0 = keytotext's plain beam search)")
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                   help="hard lexical constraints (docs/captions.md). Without --rerank, "
                        "--keyword-boost or --constrained: the decoding the model's quality report "
                        "passed with, else rerank + keyword boost 2")
    p.add_argument("--lm-fusion", type=float, default=None, metavar="W",
                   help="shallow fusion of the model folder's glue LM (fusion_lm.txt) at this "
                        "weight, in the quality report's fused decoding (constrained, rerank + "
                        "boost 2, length penalty 1.0, 8 beams; docs/captions.md)")
    p.add_argument("--max-new-tokens", type=_checks.positive_int, default=48)
    p.add_argument("--no-debias", action="store_true")
    p.add_argument("--no-keyword-fallback", action="store_true",
                   help="keep model captions that miss keywords or put a word where human "
                        "captions never do (default: the template replaces them)")
    p.add_argument("--force-caption-model", action="store_true",
                   help="use a model the quality gate refuses")
    p.add_argument("--cache", help="caption cache file (default: FILE.parquet.cache.sqlite)")
    p.add_argument("--chunk-rows", type=_checks.positive_int, default=8192, help="segments per part file")
    p.add_argument("--gen-batch-size", type=_checks.positive_int, default=64)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="rebuild even when FILE.parquet is up to date")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"audioset-captions: {msg}", file=sys.stderr)
    return 2


def _schema():
    import pyarrow as pa

    return pa.schema([("ytid", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                      ("label_ids", pa.list_(pa.string())), ("label_names", pa.list_(pa.string())),
                      ("text", pa.string()), ("text_template", pa.string()),
                      ("provenance", pa.string()), ("csv", pa.string()), ("row", pa.int64())])


def _segments(paths, counts: dict):
    """(csv name, row number, Segment) over all CSVs, streamed; malformed rows counted."""
    from ..captions.keywords import read_segments

    import csv

    for path in paths:
        def bad(n, row, _p=path):
            counts["malformed_rows"] += 1
        try:
            for n, seg in read_segments(path, on_error=bad, numbered=True):
                yield path.name, n, seg
        except (UnicodeDecodeError, csv.Error) as exc:    # which of the CSVs, said by name
            raise _UnreadableCSV(f"{path.name}: unreadable segments CSV ({type(exc).__name__}: "
                                 f"{exc})") from None


class _UnreadableCSV(Exception):
    pass


def run(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..captions import templates
    from ..captions.gate import GateError, resolve_labels_dir
    from ..captions.keywords import AudioSetLabels, normalise_keywords
    from ..captions.stage import CaptionOptions, CaptionStats, k2c_captions


    paths = [_checks.existing_file(p, "segments CSV") for p in args.csv]
    out = Path(args.out)
    if out.suffix != ".parquet":
        return _fail(f"--out {out}: expected a .parquet file name")
    _checks.writable_file(out, "--out")      # a folder, /proc, a read-only mount: before any work
    if out.resolve() in {p.resolve() for p in paths}:
        return _fail(f"--out {out} is also an input CSV; it would be overwritten")
    if args.cache and Path(args.cache).resolve() in {out.resolve(), *(p.resolve() for p in paths)}:
        return _fail(f"--cache {args.cache} is the --out file or an input CSV; name its own file")
    # each row names its CSV by file name: two CSVs with one name, or one CSV twice (every row
    # written twice), would give rows nobody can tell apart
    csv_sha = [sha256_file(p) for p in paths]
    for i, p in enumerate(paths):
        for q, sha in zip(paths[:i], csv_sha):
            if p.resolve() == q.resolve():
                return _fail(f"{p} is given twice")
            if sha == csv_sha[i]:
                return _fail(f"{p} holds the same rows as {q} (same bytes); give it once")
            if p.name == q.name:
                return _fail(f"{q} and {p} have the same file name, which the rows' csv column "
                             "records; rename one")
    if args.chunk_rows < 1:
        return _fail("--chunk-rows must be at least 1")
    if args.template not in templates.TEMPLATES:
        return _fail(f"unknown template {args.template!r}; one of {sorted(templates.TEMPLATES)}")
    ldir = resolve_labels_dir(args.audioset_labels)
    if ldir is None:
        return _fail("no AudioSet class list: give --audioset-labels DIR (this installation lacks manifests/audioset)")
    if not (ldir / "class_labels_indices.csv").is_file():
        return _fail(f"{ldir}: no class_labels_indices.csv")
    labels = AudioSetLabels.from_dir(ldir)
    label_files = {n: sha256_file(ldir / n) for n in ("class_labels_indices.csv", "ontology.json")
                   if (ldir / n).is_file()}

    captioner = None
    if args.model != "template":
        from ..captions.gate import check_model_dir
        from ..captions.k2c import Captioner

        if not Path(args.model).is_dir():
            return _fail(f"--model {args.model}: not a model folder (or 'template')")
        params = _params(args)
        try:    # before loading the weights: a refused model costs nothing
            check_model_dir(args.model, params, force=args.force_caption_model)
        except GateError as exc:
            return _fail(str(exc))
        try:
            captioner = Captioner.load(args.model, input_format=args.input_format, device=args.device,
                                       batch_size=args.gen_batch_size, params=params)
        except (OSError, ValueError) as exc:
            return _fail(f"--model {args.model}: cannot load: {exc}")
    cache = None
    if captioner is not None:       # opened before any part is written: a damaged one is one line
        from ..captions.cache import CaptionCache

        cache = CaptionCache(args.cache or out.with_name(out.name + ".cache.sqlite"))
    opts = CaptionOptions(template=args.template, debias=not args.no_debias,
                          keyword_fallback=not args.no_keyword_fallback)

    key_blob = {"format": FORMAT, "csv": [[p.name, sha] for p, sha in zip(paths, csv_sha)],
                "labels": label_files, "template": args.template, "debias": opts.debias,
                "keyword_fallback": opts.keyword_fallback, "chunk_rows": args.chunk_rows,
                "captioner": captioner.cache_identity if captioner else None}
    run_key = hashlib.sha256(json.dumps(key_blob, sort_keys=True).encode()).hexdigest()
    parts = out.with_name(f".{out.name}.parts")
    state = parts / "run.json"
    published = _published_key(out)
    if published == run_key and not args.force:
        _remove_leftovers(out, parts, run_key)
        print(f"audioset-captions: {out.name} is up to date ({pq.ParquetFile(out).metadata.num_rows} "
              "rows); --force rebuilds it", file=sys.stderr)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    if lock is None:
        return _fail(f"another audioset-captions run is writing {out.name}; wait for it to end "
                     "or choose another --out")
    if parts.is_dir():
        old = _parts_key(parts)
        if old != run_key:
            if old is None or old != published:     # not the leftovers of the finished run
                print(f"audioset-captions: discarding parts of an earlier run with other inputs "
                      f"({parts.name})", file=sys.stderr)
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, parts)
    if not state.is_file():
        atomic.write_text(state, json.dumps({"run_key": run_key, "inputs": key_blob}, indent=1))

    counts = {"malformed_rows": 0, "unknown_mids": 0, "no_labels": 0, "duplicate_segments": 0}
    seen: set[int] = set()     # 8-byte digests of (ytid, start) given so far: ~70 B a segment
    stats = CaptionStats()
    done = {"rows": 0, "resumed_rows": 0, "parts_reused": 0}
    total = sum(1 for p in paths for line in open(p, encoding="utf-8", errors="replace")
                if line.strip() and not line.startswith("#"))
    from tqdm import tqdm

    bar = tqdm(total=total, unit="seg", disable=args.no_progress, file=sys.stderr,
               dynamic_ncols=True, desc="audioset-captions")
    start = time.monotonic()
    captions_made = 0
    schema = _schema()

    def flush(chunk_no: int, chunk: list) -> None:
        nonlocal captions_made
        part = parts / f"part-{chunk_no:06d}.parquet"
        rows, todo = [], []
        for name, n, seg in chunk:      # also for a reused part: its skipped rows stay counted
            unknown = [m for m in seg.mids if m not in labels.names]
            if not seg.mids:
                counts["no_labels"] += 1
                continue
            if unknown:
                counts["unknown_mids"] += 1
                print(f"audioset-captions: {name} row {n}: unknown MID(s) {', '.join(unknown)}; "
                      "segment skipped", file=sys.stderr)
                continue
            key = int.from_bytes(hashlib.blake2b(f"{seg.ytid}\0{seg.start!r}".encode(),
                                                  digest_size=8).digest(), "big")
            if key in seen:     # the build joins by (ytid, start): one row a segment
                counts["duplicate_segments"] += 1
                if counts["duplicate_segments"] <= 10:
                    print(f"audioset-captions: {name} row {n}: segment {seg.ytid} at {seg.start:g} s "
                          "was given before; the first stands" + (" (further duplicates are only "
                          "counted)" if counts["duplicate_segments"] == 10 else ""), file=sys.stderr)
                continue
            seen.add(key)
            kws = normalise_keywords(labels.label_names(seg.mids))
            rows.append((name, n, seg, kws))
            todo.append(kws)
        if part.is_file():              # written by a run that was stopped
            done["parts_reused"] += 1
            done["resumed_rows"] += len(rows)
            bar.update(len(chunk))
            return
        results = k2c_captions(todo, captioner, opts, cache, stats) if captioner and todo else {}
        cols = {f: [] for f in schema.names}
        for name, n, seg, kws in rows:
            tmpl = templates.render(args.template, kws)
            res = results.get(kws)
            if captioner is None:
                text, prov = tmpl, {"rule": "template", "template": args.template,
                                    "reason": "template requested"}
            elif isinstance(res, str):        # generation error: recorded, template stands in
                text, prov = tmpl, {"rule": "template", "template": args.template,
                                    "reason": f"caption generation failed: {res}"}
            else:
                text, prov = res
                prov = {k: v for k, v in prov.items() if k not in ("keywords", "model")}
            if prov["rule"] == "template":
                stats.template_used(prov.get("reason"))
            else:
                stats.k2c += 1
            for f, v in (("ytid", seg.ytid), ("start", seg.start), ("end", seg.end),
                         ("label_ids", list(seg.mids)), ("label_names", list(kws)), ("text", text),
                         ("text_template", tmpl), ("provenance", json.dumps(prov, sort_keys=True)),
                         ("csv", name), ("row", n)):
                cols[f].append(v)
        table = pa.table(cols, schema=schema)
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        atomic.publish(tmp, part)
        done["rows"] += len(rows)
        captions_made += len(rows)
        bar.update(len(chunk))
        rate = captions_made / max(time.monotonic() - start, 1e-9)
        bar.set_postfix_str(f"{rate:.0f} captions/s")

    chunk, chunk_no = [], 0
    try:
        for item in _segments(paths, counts):
            chunk.append(item)
            if len(chunk) == args.chunk_rows:
                flush(chunk_no, chunk)
                chunk, chunk_no = [], chunk_no + 1
        if chunk:
            flush(chunk_no, chunk)
            chunk_no += 1
    except _UnreadableCSV as exc:    # finished parts are kept for a rerun
        bar.close()
        return _fail(str(exc))
    bar.close()
    if cache is not None:
        cache.close()

    part_files = [parts / f"part-{i:06d}.parquet" for i in range(chunk_no)]
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    n_rows = 0
    meta = {b"laion_audio_run_key": run_key.encode(),
            b"laion_audio_inputs": json.dumps(key_blob, sort_keys=True).encode()}
    with pq.ParquetWriter(tmp_out, schema.with_metadata(meta), compression="zstd") as w:
        for pf in part_files:
            t = pq.read_table(pf, schema=schema)
            n_rows += t.num_rows
            if t.num_rows:
                w.write_table(t)
    if n_rows == 0:         # nothing to resume: no parts folder or lock left behind
        tmp_out.unlink(missing_ok=True)
        shutil.rmtree(parts)
        _unlock(out, lock)
        skipped = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        return _fail("no segments captioned (empty or unreadable CSVs?"
                     + (f" skipped: {skipped}" if skipped else "") + ")")
    atomic.publish(tmp_out, out)
    # a kill from here on leaves parts beside a complete output: the rerun removes them
    # (state first, so parts half removed are never trusted)
    state.unlink()
    shutil.rmtree(parts)
    _unlock(out, lock)
    seconds = time.monotonic() - start
    summary = {**done, "rows": n_rows, "seconds": round(seconds, 2),
               "captions_per_s": round(captions_made / seconds, 1) if seconds else None,
               **counts, "captions": stats.as_dict()}
    print(json.dumps(summary, indent=1))
    return 0


def _published_key(out: Path) -> str | None:
    """The run key in ``out``'s metadata: the run that published it (None: no such file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not out.is_file():
        return None
    try:
        meta = pq.read_schema(out).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    return meta.get(b"laion_audio_run_key", b"").decode() or None


def _parts_key(parts: Path) -> str | None:
    """The run key the parts folder was written for; None when its state is missing or
    damaged (its parts cannot be trusted)."""
    try:
        old = json.loads((parts / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return old.get("run_key") if isinstance(old, dict) else None


def _remove_stale(out: Path, parts: Path) -> None:
    """Temporary files of a run killed while writing (only with the lock held)."""
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *parts.glob(".part-*.tmp")]:
        stale.unlink(missing_ok=True)


def _remove_leftovers(out: Path, parts: Path, run_key: str) -> None:
    """``out`` is complete for ``run_key``: remove what a run killed after publishing it (or
    while rebuilding it with --force) left beside it: its parts folder, temporary files and the
    lock file. Under the lock, so never a running run's; the parts of another run (other
    inputs) are kept for that run to resume."""
    lock = _lock(out)
    if lock is None:
        return
    if parts.is_dir() and _parts_key(parts) in (run_key, None):
        shutil.rmtree(parts)
    _remove_stale(out, parts)
    _unlock(out, lock)


def _lock(out: Path) -> int | None:
    """An exclusive lock beside ``out`` for the whole run, or None when another run holds it: a
    second run on the same file would remove this run's parts and write its own among them."""
    import fcntl

    fd = os.open(out.with_name(f".{out.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(out: Path, fd: int) -> None:
    """Remove the lock file (still holding it) once the run is over; a killed run leaves it for
    the next one to take."""
    out.with_name(f".{out.name}.lock").unlink(missing_ok=True)
    os.close(fd)


def _params(args):
    """The decoding: as asked, else the one the model's report passed with (the gate's choice),
    else re-rank + keyword boost 2."""
    from dataclasses import replace

    from ..captions.gate import recommended_params
    from ..captions.k2c import GenerationParams

    base = GenerationParams(rerank_by_coverage=True, keyword_boost=2.0)
    if (args.rerank is None and args.keyword_boost is None and args.constrained is None
            and args.lm_fusion is None):
        base = recommended_params(args.model) or base
    else:
        from ..captions.gate import fused

        base = GenerationParams(
            rerank_by_coverage=True if args.rerank is None else args.rerank,
            keyword_boost=2.0 if args.keyword_boost is None else args.keyword_boost,
            constrained=bool(args.constrained))
        if args.lm_fusion:        # the gate's fused decoding at this weight
            base = GenerationParams(**fused(args.lm_fusion))
    return replace(base, max_new_tokens=args.max_new_tokens)
