"""A corpus report from the ledger alone: an HTML page, PNG plots and ``figures.json``.

Every figure is recomputed from ledger rows (nothing is cached elsewhere), so a report is as
reproducible as the ledger: samples and hours per source beside the paper's counts
(``Source.paper_samples``), clip-duration and caption-length histograms, licence mix, failures by
stage and code, records dropped by filter reason. Plots use matplotlib's Agg backend (no display).
"""
from __future__ import annotations

import html
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from . import atomic
from .ledger import Ledger
from .records import Status

#: statuses that mean "this record has usable audio in the corpus (or is on its way)"
KEPT = (Status.TRANSCODED, Status.CAPTIONED, Status.SHARDED)
DURATION_BINS = [0, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1800]
CAPTION_WORD_BINS = [0, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 60, 100]


def _paper_samples(source: str) -> int | None:
    try:
        from crawlers import get_source
        return get_source(source).paper_samples
    except Exception:   # a local dataset name or a source that is not installed
        return None


def _histogram(values, edges: list[float], counts: list[int] | None = None) -> dict:
    """Counts of ``values`` per bin ``[edges[i], edges[i+1])``, the last bin open; values below
    ``edges[0]`` are not counted. ``counts`` accumulates over chunks."""
    import numpy as np

    counts = list(counts) if counts is not None else [0] * len(edges)
    idx = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float),
                          side="right") - 1
    for i, n in enumerate(np.bincount(idx[idx >= 0], minlength=len(edges))):
        counts[i] += int(n)
    labels = [f"{edges[i]}-{edges[i + 1]}" for i in range(len(edges) - 1)] + [f">={edges[-1]}"]
    return {"edges": edges, "labels": labels, "counts": counts}


def compute_figures(ledger: Ledger) -> dict:
    """All numbers the report shows, as plain JSON-able data: Arrow group-bys over the ledger
    read in chunks, so memory stays bounded whatever the corpus size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = ["source", "status", "duration", "audio_duration", "texts", "license", "failure_stage",
            "failure_code", "filter_reason"]
    statuses: Counter = Counter()                # (source, status) -> records
    kept: Counter = Counter()                    # source -> kept records
    seconds: dict[str, float] = defaultdict(float)
    licences: Counter = Counter()
    failures: Counter = Counter()
    failures_by_source: dict[str, Counter] = defaultdict(Counter)
    dropped: Counter = Counter()
    durations = _histogram([], DURATION_BINS)
    words = _histogram([], CAPTION_WORD_BINS)
    n_rows = 0

    def groups(t: pa.Table, keys: list[str]):
        return t.group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist()

    for t in ledger.scan(columns=cols, chunk_rows=65536):
        n_rows += t.num_rows
        for g in groups(t, ["source", "status"]):
            statuses[(g["source"], g["status"])] += g["count_all"]
        failed = t.filter(pc.equal(t.column("status"), Status.FAILED))
        if failed.num_rows:
            failed = failed.append_column("key", pc.binary_join_element_wise(
                pc.fill_null(failed.column("failure_stage"), "?"),
                pc.fill_null(failed.column("failure_code"), "?"), ":"))
            for g in groups(failed, ["source", "key"]):
                failures[g["key"]] += g["count_all"]
                failures_by_source[g["source"]][g["key"]] += g["count_all"]
        drop = t.filter(pc.equal(t.column("status"), Status.DROPPED))
        for g in groups(drop.set_column(drop.schema.get_field_index("filter_reason"),
                                        "filter_reason", pc.fill_null(drop.column("filter_reason"), "?")),
                        ["filter_reason"]) if drop.num_rows else []:
            dropped[g["filter_reason"]] += g["count_all"]
        live = t.filter(pc.invert(pc.is_in(t.column("status"), value_set=pa.array(
            [Status.FAILED, Status.DROPPED, Status.VANISHED], pa.string()))))
        if live.num_rows:
            lic = pc.if_else(pc.or_kleene(pc.is_null(live.column("license")),
                                          pc.equal(live.column("license"), "")),
                             "(unknown)", live.column("license"))
            for g in groups(pa.table({"license": lic}), ["license"]):
                licences[g["license"]] += g["count_all"]
        k = t.filter(pc.is_in(t.column("status"), value_set=pa.array(list(KEPT), pa.string())))
        if k.num_rows:
            secs = pc.coalesce(k.column("audio_duration"), k.column("duration"))
            for g in groups(pa.table({"source": k.column("source")}), ["source"]):
                kept[g["source"]] += g["count_all"]
            has = pc.and_kleene(pc.is_valid(secs), pc.not_equal(secs, 0.0))
            pos = k.filter(pc.fill_null(has, False))
            if pos.num_rows:
                psecs = pc.cast(pc.coalesce(pos.column("audio_duration"), pos.column("duration")),
                                pa.float64())
                for g in pa.table({"source": pos.column("source"), "s": psecs}).group_by(
                        "source", use_threads=False).aggregate([("s", "sum")]).to_pylist():
                    seconds[g["source"]] += g["s_sum"]
                durations = _histogram(psecs.to_numpy(), DURATION_BINS, durations["counts"])
            texts = pc.list_flatten(k.column("texts"))
            if len(texts):
                n_words = pc.count_substring_regex(pc.cast(texts, pa.string()), r"\S+")
                words = _histogram(n_words.to_numpy(zero_copy_only=False), CAPTION_WORD_BINS,
                                   words["counts"])
    sources = {}
    for name in sorted({src for src, _ in statuses}):
        sources[name] = {"records": sum(n for (src, _), n in statuses.items() if src == name),
                         "kept": kept[name], "hours": round(seconds[name] / 3600, 4),
                         "paper_samples": _paper_samples(name),
                         "statuses": {st: n for (src, st), n in statuses.items() if src == name},
                         "failures": dict(failures_by_source.get(name, {}))}
    return {
        "total": {"records": n_rows, "kept": sum(s["kept"] for s in sources.values()),
                  "hours": round(sum(s["hours"] for s in sources.values()), 4),
                  "failed": sum(failures.values()), "dropped": sum(dropped.values())},
        "sources": sources,
        "duration_histogram": durations,
        "caption_words_histogram": words,
        "licences": dict(licences.most_common()),
        "failures": dict(failures.most_common()),
        "dropped": dict(dropped.most_common()),
    }


# ---------------------------------------------------------------------------- plots
def _plots(fig_data: dict, out: Path) -> dict[str, str]:
    """Every label here can be text from a site (licences, source names, failure codes): it is
    drawn as plain text, never parsed as math (``$\\macro$``) or TeX."""
    import matplotlib
    matplotlib.use("Agg")

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _draw(fig_data, out)


def _label(text) -> str:
    """Plot label from untrusted text: printable, bounded."""
    text = "".join(c if c.isprintable() else " " for c in str(text))
    return text[:60]


def _draw(fig_data: dict, out: Path) -> dict[str, str]:
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}

    def save(fig, name: str, title: str) -> None:
        fig.axes[0].set_title(title)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
        made[name] = title

    sources = fig_data["sources"]
    names = list(sources)
    if names:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        xs = range(len(names))
        ours = ax.bar([x - 0.2 for x in xs], [sources[n]["kept"] for n in names], 0.4, label="this corpus")
        paper = ax.bar([x + 0.2 for x in xs], [sources[n]["paper_samples"] or 0 for n in names], 0.4,
                       label="LAION-Audio-630K (paper)")
        ax.bar_label(ours, fontsize=8)
        ax.bar_label(paper, labels=[f"{sources[n]['paper_samples']:,}" if sources[n]["paper_samples"] else ""
                                    for n in names], fontsize=8)
        ax.set_xticks(list(xs), [_label(n) for n in names], rotation=30, ha="right")
        ax.set_ylabel("samples")
        top = max([sources[n]["kept"] for n in names] + [sources[n]["paper_samples"] or 0 for n in names] + [1])
        if any(sources[n]["paper_samples"] for n in names):
            ax.set_yscale("symlog")
            ax.set_ylim(0, top * 5)         # room for the value labels on a log axis
        else:
            ax.set_ylim(0, top * 1.15)
        ax.legend()
        save(fig, "samples_per_source", "Samples per source (paper's counts beside them)")

        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        bars = ax.bar(range(len(names)), [sources[n]["hours"] for n in names])
        ax.set_xticks(range(len(names)), [_label(n) for n in names])
        ax.bar_label(bars, labels=[f"{sources[n]['hours']:.2f}" for n in names], fontsize=8)
        ax.set_ylabel("hours")
        ax.tick_params(axis="x", rotation=30)
        save(fig, "hours_per_source", "Hours per source")

    for key, name, title, xlabel in (
            ("duration_histogram", "durations", "Clip durations", "seconds"),
            ("caption_words_histogram", "caption_lengths", "Caption lengths", "words")):
        h = fig_data[key]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(range(len(h["counts"])), h["counts"])
        ax.set_xticks(range(len(h["labels"])), h["labels"], rotation=45, ha="right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        save(fig, name, title)

    for key, name, title in (("licences", "licences", "Licence mix"),
                             ("failures", "failures", "Failures by stage:code"),
                             ("dropped", "dropped", "Dropped by filter reason")):
        items = list(fig_data[key].items())[:25]
        fig, ax = plt.subplots(figsize=(8, max(2.0, 0.35 * len(items) + 1)))
        if items:
            ys = range(len(items))
            ax.barh(list(ys), [v for _, v in items][::-1])
            ax.set_yticks(list(ys), [_label(k) for k, _ in items][::-1])
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_xlabel("records")
        save(fig, name, title)
    return made


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _last_build(ledger_dir) -> dict:
    """The last build's summary beside the ledger (``WORK/stats/summary.json``), if any."""
    path = Path(ledger_dir).resolve().parent / "stats" / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _shown_path(path: str | os.PathLike, page_dir: Path) -> str:
    """A path as a published page may show it: relative to the page, never an absolute path
    of the machine that made it (only the folder name when it lies elsewhere)."""
    target, base = Path(path).resolve(), page_dir.resolve()
    try:
        return os.path.relpath(target, base) if target.anchor == base.anchor else target.name
    except ValueError:
        return target.name


def write_report(ledger_dir: str | os.PathLike, out_dir: str | os.PathLike, title: str = "laion-audio corpus") -> Path:
    """Write ``index.html``, one PNG per figure and ``figures.json`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_dir, lock=False)
    fig_data = compute_figures(ledger)
    if "matplotlib" not in sys.modules and "MPLCONFIGDIR" not in os.environ:
        # matplotlib's font cache goes to the work folder, not the user's ~/.cache
        os.environ["MPLCONFIGDIR"] = str(Path(ledger_dir).resolve().parent / ".cache" / "matplotlib")
    from .workdir import WorkDir

    fig_data["disk_bytes"] = WorkDir.of_ledger(ledger_dir).disk_usage()   # the ledger's work folder
    fig_data["rot"] = rot_figures(ledger)
    made = _plots(fig_data, out)
    atomic.write_text(out / "figures.json", json.dumps(fig_data, indent=2, sort_keys=True))

    t = fig_data["total"]
    src_rows = [[n, s["records"], s["kept"], f"{s['hours']:.2f}", s["paper_samples"],
                 ", ".join(f"{k}={v}" for k, v in sorted(s["statuses"].items()))]
                for n, s in fig_data["sources"].items()]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        f"<p>{t['records']} records; {t['kept']} with audio ({t['hours']:.2f} h); {t['failed']} failed; "
        f"{t['dropped']} dropped. Ledger: <code>{html.escape(_shown_path(ledger_dir, out))}</code>. "
        "Every number here is recomputed from the ledger (<a href='figures.json'>figures.json</a>).</p>",
        "<h2>Sources</h2>",
        _table(["source", "records", "with audio", "hours", "paper samples", "statuses"], src_rows),
    ]
    eval_filter = _last_build(ledger_dir).get("eval_filter")
    if eval_filter:     # the one fact not in the ledger: was the eval-overlap filter on?
        parts.insert(-2, f"<p><b>Eval-set filter:</b> {html.escape(eval_filter)}</p>")
    for name, caption in made.items():
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{name}.png' alt='{html.escape(caption)}'>")
    for key, caption in (("failures", "Failures"), ("dropped", "Dropped"), ("licences", "Licences")):
        if fig_data[key]:
            parts.append(f"<h3>{caption}</h3>" + _table(["what", "records"], list(map(list, fig_data[key].items()))))
    if fig_data["disk_bytes"]:
        parts.append("<h3>Disk per folder of the work folder</h3>" + _table(
            ["folder", "bytes"], [[f"{k}/", f"{v} ({human_bytes(v)})"]
                                  for k, v in fig_data["disk_bytes"].items()]))
    parts.append(rot_html(fig_data["rot"]))
    parts.append("</body></html>")
    page = out / "index.html"
    atomic.write_text(page, "\n".join(parts))
    return page


# ---------------------------------------------------------------------------- build summary
def summarize(ledger: Ledger, stats: list, cfg, work=None) -> dict:
    """The build's summary: per-source counts (Arrow group-by, no Python row per record), stage
    accounting and disk use per work folder (``cfg``: a BuildConfig)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    groups: dict[tuple, list] = {}       # (source, status, split) -> [records, seconds of audio]
    n_rows = 0
    for t in ledger.scan(columns=["source", "status", "split", "audio_duration"], chunk_rows=65536):
        n_rows += t.num_rows
        has_audio = pc.is_in(t.column("status"), value_set=pa.array(list(KEPT), pa.string()))
        t = t.append_column("hours", pc.if_else(has_audio, pc.fill_null(t.column("audio_duration"),
                                                                         0.0), 0.0))
        for r in t.group_by(["source", "status", "split"], use_threads=False).aggregate(
                [("hours", "sum"), ("hours", "count")]).to_pylist():
            g = groups.setdefault((r["source"], r["status"], r["split"]), [0, 0.0])
            g[0] += r["hours_count"]
            g[1] += r["hours_sum"] or 0.0
    per_source: dict[str, dict] = {}
    for (source, status, split), (count, seconds) in sorted(
            groups.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
        row = {"source": source, "status": status, "split": split, "hours_count": count,
               "hours_sum": seconds}
        s = per_source.setdefault(row["source"], {"records": 0, "audio_ok": 0, "sharded": 0,
                                                  "failed": 0, "dropped": 0, "vanished": 0,
                                                  "hours": 0.0, "train": 0, "test": 0})
        n, status = row["hours_count"], row["status"]
        s["records"] += n
        if status in KEPT:
            s["audio_ok"] += n
            s["hours"] += row["hours_sum"] / 3600
        if status == Status.VANISHED:
            s["vanished"] += n
        elif status == Status.SHARDED:
            s["sharded"] += n
            if row["split"] in ("train", "test"):
                s[row["split"]] += n
        elif status == Status.FAILED:
            s["failed"] += n
        elif status == Status.DROPPED:
            s["dropped"] += n
    for s in per_source.values():
        s["hours"] = round(s["hours"], 4)
    disk = work.disk_usage(cfg.shard_root) if work is not None else {}
    summary = {"out": str(cfg.out), "shards": cfg.shard_root, "records": n_rows,
               "by_status": ledger.status_counts(), "failures": ledger.failure_counts(),
               "sources": dict(sorted(per_source.items())), "stages": [s.as_dict() for s in stats],
               "disk_bytes": disk, "eval_filter": getattr(cfg, "eval_filter", ""),
               "warnings": caption_warnings(ledger), "rot": rot_figures(ledger),
               "accounting_closes": all(s.closes for s in stats)}
    summary["problems"] = run_problems(summary)
    return summary


def caption_warnings(ledger: Ledger) -> dict[str, int]:
    """Counted caption warnings the sources flagged (``caption_provenance["warning"]``), e.g.
    captions that are only a file name ("sound000"); only flagged rows become Python objects."""
    import pyarrow.compute as pc

    counts: Counter = Counter()
    for t in ledger.scan(columns=["caption_provenance"], chunk_rows=65536):
        col = t.column("caption_provenance")
        flagged = t.filter(pc.fill_null(pc.match_substring(col, '"warning"'), False))
        for value in flagged.column("caption_provenance").to_pylist():
            counts[json.loads(value).get("warning", "")] += 1
    return dict(counts)


#: stages whose "0 successes" is not a problem by itself (a filter may drop everything)
_NO_SUCCESS_OK = ("filter",)


def run_problems(summary: dict) -> list[str]:
    """One line per reason this run did not do all it was asked to: an unreachable host
    (records left pending), a crawl that stopped early or listed suspiciously little, a daily
    API quota that ran out (records left pending), a full disk, a stage with inputs and no
    success. Empty when the run is complete; the command
    exits non-zero otherwise (``commands.build.exit_code``)."""
    from .records import FailureCode

    out: list[str] = []
    for st in summary["stages"]:
        name = st["stage"]
        for host, n in sorted((st.get("unreachable_hosts") or {}).items()):
            out.append(f"{name}: host {host} unreachable; {n} records left pending (rerun the "
                       "same command when it is reachable)")
        if st.get("incomplete"):
            out.append(f"{name}: crawl stopped early ({st['incomplete']}); rerun to resume")
        if st.get("no_space"):
            out.append(f"{name}: {st['no_space']}; free space and rerun")
        if st.get("shard_error"):
            out.append(f"{name}: {st['shard_error']}")
        if st.get("clips_lost_requeued"):
            out.append(f"{name}: {st['clips_lost_requeued']} clips were lost with a damaged tar and "
                       "are queued to be fetched again; rerun the same command")
        if st.get("suspect"):
            out.append(f"{name}: crawl looks incomplete: {st['suspect']}")
        if (st["inputs"] > 0 and st["succeeded"] == 0 and not st.get("pending")
                and not name.startswith(_NO_SUCCESS_OK)):
            top = sorted((st.get("failures") or {}).items(), key=lambda kv: -kv[1])[:3]
            why = f" ({', '.join(f'{k}={v}' for k, v in top)})" if top else ""
            out.append(f"{name}: finished none of its {st['inputs']} records{why}; see "
                       "stats/build.json")
    for entry in (summary.get("rot") or {}).values():
        if "quota" in entry:              # records left pending until the quota renews
            out.append(entry["quota"]["line"])
    full = sum(n for k, n in (summary.get("failures") or {}).items()
               if k.endswith(":" + FailureCode.NO_SPACE))
    if full:
        out.append(f"disk full: {full} records failed with no_space; free space and rerun "
                   "(they are retried without --retry-failed)")
    return out


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def print_summary(summary: dict, stats_lines: bool = True, command: str = "build") -> None:
    from .ledger import StageStats

    print(f"\nlaion-audio {command}: {summary['records']} records in {summary['out']}")
    for st in summary["stages"]:
        s = StageStats(st["stage"], st["inputs"], st["succeeded"], st["failed"],
                       st["skipped_already_done"], seconds=st["seconds"],
                       dropped=st.get("dropped", 0))
        s.failures.update(st["failures"])
        s.pending = st.get("pending", 0)
        print("  " + s.line())
        if st.get("table") and (st["failed"] or st.get("dropped")):
            print("    " + st["table"].replace("\n", "\n    "))
    print(f"  {'dataset':<24}{'records':>9}{'audio ok':>9}{'sharded':>9}{'train':>7}{'test':>6}"
          f"{'failed':>8}{'dropped':>9}{'vanished':>9}{'hours':>9}")
    for name, s in sorted(summary["sources"].items()):
        print(f"  {name:<24}{s['records']:>9}{s['audio_ok']:>9}{s['sharded']:>9}{s['train']:>7}"
              f"{s['test']:>6}{s['failed']:>8}{s['dropped']:>9}{s['vanished']:>9}{s['hours']:>9.3f}")
    if summary.get("rot"):
        print("\n".join(rot_lines(summary["rot"])))
    if summary.get("eval_filter"):
        print(f"  eval filter: {summary['eval_filter']}")
    if summary.get("warnings"):
        print("  WARNING: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["warnings"].items()))
              + " (captions that are only a file name; add a captions file or sidecars)")
    if summary["failures"]:
        print("  failures: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["failures"].items())))
    if summary.get("disk_bytes"):
        disk = summary["disk_bytes"]
        ratio = (f" (all {sum(disk.values()) / disk['shards']:.2f}x the shards)"
                 if disk.get("shards") else "")
        print("  disk: " + ", ".join(f"{k}/ {human_bytes(v)}" for k, v in disk.items()) + ratio)
    if any(st["stage"] == "shard" for st in summary["stages"]):
        print(f"  shards: {summary['shards']}")
    print("  accounting closes at every stage" if summary["accounting_closes"]
          else "  WARNING: accounting does not close; see stats/build.json")
    for line in summary.get("problems") or []:
        print(f"  INCOMPLETE: {line}")


# ---------------------------------------------------------------------------- link rot
#: rot classes in report order. available: the link served audio (and, when the manifest had
#: a hash, the same audio); gone: 404/410/removed/vanished; changed: audio differs from the
#: manifest's decoded-PCM sha256; blocked: persistent 401/403/429; not_tried: still pending
#: (e.g. a daily API quota ran out); error: other fetch/decode failures; excluded: dropped by a
#: rule before any fetch (e.g. LAION's 3-minute cap)
ROT_CLASSES = ("available", "gone", "changed", "blocked", "not_tried", "error", "excluded")
_DAILY = __import__("re").compile(r"\((\d+)/day\)")


def rot_class(row: dict) -> str:
    """One ledger row's rot class (see :data:`ROT_CLASSES`)."""
    from .records import FailureCode

    status, code = row.get("status"), row.get("failure_code") or ""
    if status == Status.NEW:
        return "not_tried"
    if status == Status.VANISHED:
        return "gone"
    if status == Status.DROPPED:
        return "available" if row.get("audio_sha256") else "excluded"
    if status != Status.FAILED:
        return "available"
    if code == FailureCode.AUDIO_CHANGED:
        return "changed"
    stage, message = row.get("failure_stage") or "", row.get("failure_message") or ""
    if stage in ("fetch", "crawl"):
        if code in (FailureCode.NOT_FOUND, FailureCode.UNAVAILABLE):
            return "gone"
        if code == FailureCode.FORBIDDEN or "HTTP 429" in message or "HTTP 403" in message:
            return "blocked"
        return "error"
    if stage == "transcode":
        return "error"
    return "available"          # audio was there; a later stage (caption, shard) failed


def rot_figures(ledger: Ledger) -> dict:
    """Per source: count and percentage of each rot class, how many available records were
    checked against a published hash, and a quota line for sources paused by a daily quota."""
    per: dict[str, Counter] = defaultdict(Counter)
    verified: Counter = Counter()
    quota: dict[str, int | None] = {}
    import pyarrow as pa
    import pyarrow.compute as pc

    # rows whose status alone says "available" (the bulk of a corpus) are counted in Arrow;
    # only new, vanished, dropped and failed rows are classified one by one
    one_by_one = pa.array([Status.NEW, Status.VANISHED, Status.DROPPED, Status.FAILED], pa.string())
    for batch in ledger.scan(columns=["source", "status", "failure_stage", "failure_code",
                                      "failure_message", "audio_sha256", "filter_match"],
                             chunk_rows=65536):
        special = pc.is_in(batch.column("status"), value_set=one_by_one)
        plain = batch.filter(pc.invert(special)).select(["source", "filter_match"])
        checked = pc.fill_null(pc.match_substring(plain.column("filter_match"),
                                                  "expected_audio_sha256"), False)
        plain = plain.append_column("checked", pc.cast(checked, pa.int64()))
        for g in plain.group_by("source", use_threads=False).aggregate(
                [("checked", "sum"), ("checked", "count")]).to_pylist():
            per[g["source"]]["available"] += g["checked_count"]
            verified[g["source"]] += g["checked_sum"] or 0
        for row in batch.filter(special).to_pylist():
            cls = rot_class(row)
            src = row["source"]
            per[src][cls] += 1
            if cls == "available" and row["filter_match"] and "expected_audio_sha256" in row["filter_match"]:
                verified[src] += 1
            if row["status"] == Status.NEW and row["failure_code"] == "quota_deferred":
                m = _DAILY.search(row["failure_message"] or "")
                quota[src] = int(m.group(1)) if m else quota.get(src)
    out = {}
    for src in sorted(per):
        total = sum(per[src].values())
        entry = {"records": total, "verified": verified[src]}
        for cls in ROT_CLASSES:
            n = per[src][cls]
            entry[cls] = {"count": n, "percent": round(100.0 * n / total, 2) if total else 0.0}
        if src in quota:
            left = per[src]["not_tried"]
            per_day = quota[src]
            entry["quota"] = {"left": left, "per_day": per_day,
                              "days": -(-left // per_day) if per_day else None,
                              "line": quota_line(src, left, per_day)}
        out[src] = entry
    return out


def quota_line(source: str, left: int, per_day: int | None) -> str:
    """The one line a run paused by a daily quota ends with (one API request per record)."""
    if per_day:
        days = -(-left // per_day)
        return (f"{source}: daily API quota reached; {left} left, ~{days} day"
                f"{'s' if days != 1 else ''} at this quota ({per_day} requests/day); rerun the "
                "same command to resume")
    return f"{source}: daily API quota reached; {left} left; rerun the same command to resume"


def rot_lines(rot: dict) -> list[str]:
    """Plain-text table of :func:`rot_figures` (for the build summary)."""
    width = max([18] + [len(src) + 2 for src in rot])
    lines = [f"  {'link rot':<{width}}" + "".join(f"{c:>17}" for c in ROT_CLASSES[:5])]
    for src, e in rot.items():
        cells = "".join(f"{e[c]['count']:>8} {e[c]['percent']:>6.1f}%" for c in ROT_CLASSES[:5])
        extra = [f"{c}={e[c]['count']}" for c in ROT_CLASSES[5:] if e[c]["count"]]
        if e["verified"]:
            extra.append(f"hash-verified={e['verified']}")
        lines.append(f"  {src:<{width}}{cells}" + (f"  ({', '.join(extra)})" if extra else ""))
    lines += [f"  {e['quota']['line']}" for e in rot.values() if "quota" in e]
    return lines


def rot_html(rot: dict) -> str:
    """The report's link-rot section."""
    if not rot:
        return ""
    rows = [[src] + [f"{e[c]['count']} ({e[c]['percent']:.1f}%)" for c in ROT_CLASSES]
            + [e["verified"]] for src, e in rot.items()]
    notes = "".join(f"<p>{html.escape(e['quota']['line'])}</p>" for e in rot.values() if "quota" in e)
    return ("<h2>Link rot</h2><p>Per source: the link still serves audio (available; "
            "hash-verified when the manifest carried the decoded-PCM sha256), is gone "
            "(404/410/removed), serves changed audio, is blocked (persistent 401/403/429), or was "
            "not tried yet.</p>"
            + _table(["source", *ROT_CLASSES, "hash-verified"], rows) + notes)
