"""Eval-set registry: fetch the official id lists (with checksum) and parse them into one table.

The registry (``manifests/evalsets.json``) names every file with its official URL and pinned
checksum. ``fetch`` downloads each file into a cache through ``laion_audio.http`` and refuses bytes whose
checksum differs, so a silently edited copy (PROVENANCE.md lists several) never becomes the
blacklist. A mirror (``--mirror DIR|URL`` or ``$LAION_AUDIO_EVALSETS_MIRROR``) is a copy laid out
like the registry's ``path`` fields (the layout of ../shared/data); the checksum rule is the same.
Where only a substitute file exists (Clotho via WavCaps, VGGSound's test list), the registry
says so and the cache's ``fetched.json`` records which one was used.

``load`` turns the cached files into one pandas table, one row per eval item:
``eval_set, split, role, id_kind, item_id, match_id, start, end, substitute``.
``match_id`` is a Freesound id or a YouTube id, the key the id-overlap join uses.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import pandas as pd
import requests

from .. import atomic
from laion_audio.records import Failure

log = logging.getLogger(__name__)

# laion_audio/manifests is a symlink to the top-level manifests/ folder, so a checkout and an
# installed wheel (which copies the files) find the registry the same way
REGISTRY_PATH = Path(__file__).resolve().parents[1] / "manifests" / "evalsets.json"
MIRROR_ENV = "LAION_AUDIO_EVALSETS_MIRROR"
CACHE_ENV = "LAION_AUDIO_EVALSETS_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "laion-audio" / "evalsets"
MAX_BYTES = 2 * 1024**3          # the largest official file is FSD50K's ground-truth zip (~330 kB);
                                 # UrbanSound8K's metadata only comes inside its 6 GB archive
COLUMNS = ["eval_set", "split", "role", "id_kind", "item_id", "match_id", "start", "end",
           "substitute"]


class EvalSetError(RuntimeError):
    """A registry, download or parse problem for one file (reported, never a crash of the run)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code   # the HTTP layer's failure code, when the network failed


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FileSpec:
    """One downloadable file of an eval set (official, or the substitute used in its place)."""

    eval_set: str
    split: str
    role: str
    id_kind: str
    parser: str
    path: str                       # cache/mirror-relative path
    url: str
    sha256: str | None = None
    md5: str | None = None
    member: str | None = None       # file inside the official archive at ``url``
    archive_md5: str | None = None
    substitute: bool = False
    note: str = ""

    @property
    def verified(self) -> bool:
        return bool(self.sha256 or self.md5)


@dataclass(frozen=True)
class EvalSetSpec:
    name: str
    title: str
    id_kind: str
    files: tuple[tuple[FileSpec, ...], ...]   # per split: (official, substitute?)


def _safe_rel(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise EvalSetError(f"registry path {path!r} must be relative and stay inside the cache")
    return str(p)


def load_registry(path: str | os.PathLike | None = None) -> list[EvalSetSpec]:
    data = json.loads(Path(path or REGISTRY_PATH).read_text())
    out = []
    for es in data["evalsets"]:
        splits = []
        for f in es["files"]:
            common = dict(eval_set=es["name"], split=f["split"], role=f.get("role", "eval"),
                          id_kind=es["id_kind"])
            chain = [FileSpec(**common, parser=f["parser"], path=_safe_rel(f["path"]), url=f["url"],
                              sha256=f.get("sha256"), md5=f.get("md5"), member=f.get("member"),
                              archive_md5=f.get("archive_md5"), note=f.get("note", ""))]
            if "substitute" in f:
                s = f["substitute"]
                chain.append(FileSpec(**common, parser=s["parser"], path=_safe_rel(s["path"]),
                                      url=s["url"], sha256=s.get("sha256"), md5=s.get("md5"),
                                      substitute=True, note=s.get("note", "")))
            for spec in chain:
                if spec.parser not in PARSERS:
                    raise EvalSetError(f"{spec.eval_set}/{spec.split}: unknown parser {spec.parser!r}")
            splits.append(tuple(chain))
        out.append(EvalSetSpec(es["name"], es.get("title", es["name"]), es["id_kind"], tuple(splits)))
    return out


# --------------------------------------------------------------------------- download + verify
def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, *, http, max_bytes: int = MAX_BYTES) -> None:
    """``url`` (http(s) through the one HTTP layer: retries, Retry-After, size cap, temp file
    renamed when complete; or a local mirror path) into ``dest``. The caller checks the sum."""
    if "://" not in url or url.startswith("file://"):
        src = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not src.is_file():
            raise FileNotFoundError(f"{src} not in mirror")
        shutil.copyfile(src, dest)
        return
    try:
        http.download(url, dest, expect=None, max_bytes=max_bytes)
    except Failure as exc:
        if exc.code == "not_found":
            raise FileNotFoundError(f"{url}: 404 Not Found") from None
        raise EvalSetError(exc.message, code=exc.code) from None


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one named member out of a zip/tar; the member name is ours, never the archive's."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        return
    with tarfile.open(archive) as tf:
        info = tf.getmember(member)
        if not info.isfile():
            raise EvalSetError(f"{member} in {archive.name} is not a regular file")
        with tf.extractfile(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


@dataclass
class FetchResult:
    eval_set: str
    split: str
    ok: bool
    path: str = ""
    substitute: bool = False
    url: str = ""
    sha256: str = ""
    message: str = ""
    tried: list[str] = field(default_factory=list)


def _verify(path: Path, spec: FileSpec, allow_unverified: bool, archive_checked: bool = False) -> str:
    sha = _digest(path, "sha256")
    if spec.sha256 and sha != spec.sha256:
        raise EvalSetError(f"sha256 mismatch: got {sha}, registry pins {spec.sha256}")
    if spec.md5 and _digest(path, "md5") != spec.md5:
        raise EvalSetError(f"md5 mismatch: registry pins {spec.md5}")
    if not spec.verified and not archive_checked and not allow_unverified:
        raise EvalSetError("no pinned checksum for this file; rerun with --allow-unverified to trust it")
    return sha


def _fetch_one(spec: FileSpec, cache: Path, mirror: str | None, http,
               allow_unverified: bool) -> tuple[Path, str, str]:
    target = cache / spec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    archive_checked = False
    with tempfile.TemporaryDirectory(dir=cache) as tmpdir:
        tmp = Path(tmpdir)
        if mirror:
            url = (mirror.rstrip("/") + "/" + spec.path) if "://" in mirror else str(Path(mirror) / spec.path)
            _download(url, tmp / "file", http=http)
        else:
            url = spec.url
            _download(url, tmp / "download", http=http)
            if spec.member:
                if spec.archive_md5 and _digest(tmp / "download", "md5") != spec.archive_md5:
                    raise EvalSetError(f"archive md5 mismatch for {url}")
                archive_checked = bool(spec.archive_md5)   # the archive's checksum vouches for its members
                _extract_member(tmp / "download", spec.member, tmp / "file")
            else:
                atomic.publish(tmp / "download", tmp / "file")
        sha = _verify(tmp / "file", spec, allow_unverified, archive_checked)
        atomic.publish(tmp / "file", target)
    return target, url, sha


def unknown_names(names: list[str] | None, registry: str | os.PathLike | None = None) -> list[str]:
    """Names in ``names`` the registry does not list (``evalsets fetch --only`` checks these)."""
    known = {es.name for es in load_registry(registry)}
    return [n for n in names or [] if n not in known]


#: failure codes that mean "could not reach the host" (not "the host answered badly")
_UNREACHABLE = ("http_error", "timeout", "host_unreachable")


def fetch(cache_dir: str | os.PathLike | None = None, *, mirror: str | None = None,
          names: list[str] | None = None, registry: str | os.PathLike | None = None,
          allow_unverified: bool = False, session: requests.Session | None = None,
          http=None, progress: Callable[["FetchResult"], None] | None = None) -> list[FetchResult]:
    """Download and verify every registry file (official first, then its substitute).

    Each split ends as one :class:`FetchResult` (passed to ``progress`` as soon as it is known);
    a failure is recorded with what was tried. Once a host could not be reached, its other
    files are not tried again in this run (offline, that is one failed connection per host,
    not minutes of retries). ``fetched.json`` in the cache lists what is there, so ``load``
    needs no network.
    """
    from laion_audio.http import HttpClient, host_of

    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    http = http or HttpClient(retries=2, connect_timeout=10.0, read_timeout=60.0,
                              respect_robots=False, session=session)
    unreachable: dict[str, str] = {}
    results = []
    manifest = _read_fetched(cache)
    for es in load_registry(registry):
        if names and es.name not in names:
            continue
        for chain in es.files:
            res = FetchResult(es.name, chain[0].split, ok=False)
            for spec in chain:
                source = (mirror.rstrip("/") + "/" + spec.path) if mirror and "://" in mirror else (
                    None if mirror else spec.url)
                host = host_of(source) if source and "://" in source else None
                if host in unreachable:
                    res.tried.append(f"{spec.path}: skipped, {host} unreachable")
                    continue
                try:
                    target, url, sha = _fetch_one(spec, cache, mirror, http, allow_unverified)
                except (EvalSetError, FileNotFoundError, KeyError, OSError, tarfile.TarError,
                        zipfile.BadZipFile) as exc:
                    res.tried.append(f"{spec.path}: {exc}")
                    if host and getattr(exc, "code", "") in _UNREACHABLE:
                        unreachable[host] = str(exc)
                    continue
                res.ok, res.path, res.substitute, res.url, res.sha256 = True, spec.path, spec.substitute, url, sha
                manifest[f"{es.name}/{spec.split}"] = {
                    "eval_set": es.name, "split": spec.split, "role": spec.role,
                    "id_kind": spec.id_kind, "parser": spec.parser, "path": spec.path,
                    "sha256": sha, "substitute": spec.substitute, "url": url}
                break
            res.message = "" if res.ok else "; ".join(res.tried)
            results.append(res)
            log.debug("%s/%s: %s", res.eval_set, res.split, res.path if res.ok else res.message)
            if progress:
                progress(res)
    atomic.write_text(cache / "fetched.json", json.dumps(manifest, indent=2, sort_keys=True))
    return results


def fetched(cache_dir: str | os.PathLike | None = None) -> dict:
    """What the cache holds (``fetched.json``): ``"eval_set/split" -> entry``; {} when empty."""
    return _read_fetched(Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _read_fetched(cache: Path) -> dict:
    p = cache / "fetched.json"
    return json.loads(p.read_text()) if p.exists() else {}


# --------------------------------------------------------------------------- parsers
# Each parser reads one file and returns item_id, match_id, start, end (and split when the
# file holds several). Ids are strings; a Freesound id is the decimal sound id.

def _frame(item_id, match_id, start=None, end=None, split=None) -> pd.DataFrame:
    df = pd.DataFrame({"item_id": pd.Series(item_id, dtype="string"),
                       "match_id": pd.Series(match_id, dtype="string").str.strip()})
    df["start"] = pd.Series(start, dtype="float64") if start is not None else float("nan")
    df["end"] = pd.Series(end, dtype="float64") if end is not None else float("nan")
    if split is not None:
        df["split"] = pd.Series(split, dtype="string")
    return df


def parse_esc50(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str)
    return _frame(df["filename"], df["src_file"], split="fold" + df["fold"])


def parse_urbansound8k(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"fsID": str, "fold": str})
    return _frame(df["slice_file_name"], df["fsID"], df["start"], df["end"], split="fold" + df["fold"])


def parse_fsd50k(path: Path) -> pd.DataFrame:
    """dev.csv (fname,labels,mids,split) or eval.csv (fname,labels,mids); fname is the Freesound id."""
    df = pd.read_csv(path, dtype=str)
    split = df["split"] if "split" in df.columns else None
    return _frame(df["fname"], df["fname"], split=split)


def parse_clotho_metadata(path: Path) -> pd.DataFrame:
    """Zenodo clotho_metadata_*.csv (ISO-8859-1): file_name, keywords, sound_id, ..."""
    df = pd.read_csv(path, dtype=str, encoding="ISO-8859-1")
    return _frame(df["file_name"], df["sound_id"])


def parse_wavcaps_clotho_json(path: Path) -> pd.DataFrame:
    """WavCaps' Clotho json_files/*.json: {"data": [{wav, id (Freesound id), duration, ...}]}."""
    items = json.loads(Path(path).read_text())["data"]
    return _frame([PurePosixPath(i["wav"]).name for i in items], [str(i["id"]) for i in items])


def parse_audiocaps(path: Path) -> pd.DataFrame:
    """audiocap_id,youtube_id,start_time,caption; one row per caption, so clips repeat."""
    df = pd.read_csv(path, dtype={"audiocap_id": str, "youtube_id": str})
    df = df.drop_duplicates(["youtube_id", "start_time"])
    start = df["start_time"].astype("float64")
    return _frame(df["audiocap_id"], df["youtube_id"], start, start + 10.0)


def parse_audioset_segments(path: Path) -> pd.DataFrame:
    """Google's segments csv: 3 '#' lines, then 'YTID, start, end, "labels"'."""
    df = pd.read_csv(path, comment="#", header=None, skipinitialspace=True, quotechar='"',
                     names=["YTID", "start", "end", "labels"], dtype={"YTID": str})
    return _frame(df["YTID"] + "_" + df["start"].map(lambda s: f"{s:.3f}"), df["YTID"],
                  df["start"], df["end"])


def _split_vgg_name(name: str) -> tuple[str, float]:
    stem = name.strip().removesuffix(".mp4")
    ytid, _, start = stem.rpartition("_")    # YouTube ids may hold "_" themselves
    return ytid, float(start)


def parse_vggsound_test_list(path: Path) -> pd.DataFrame:
    """hche11/VGGSound data/test.csv: '<ytid>_<start, 6 digits>.mp4,label' (test split only)."""
    with open(path, newline="", encoding="utf-8") as fh:
        names = [row[0] for row in csv.reader(fh) if row]
    parts = [_split_vgg_name(n) for n in names]
    start = pd.Series([p[1] for p in parts], dtype="float64")
    return _frame([n.strip() for n in names], [p[0] for p in parts], start, start + 10.0)


def parse_vggsound_full(path: Path) -> pd.DataFrame:
    """Official vggsound.csv: 'ytid,start,label,split' without header; keeps the test rows."""
    df = pd.read_csv(path, header=None, names=["ytid", "start", "label", "split"],
                     dtype={"ytid": str, "split": str})
    df = df[df["split"].str.strip() == "test"]
    start = df["start"].astype("float64")
    item = df["ytid"] + "_" + df["start"].map(lambda s: f"{int(s):06d}")
    return _frame(item, df["ytid"], start, start + 10.0)


PARSERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "esc50": parse_esc50,
    "urbansound8k": parse_urbansound8k,
    "fsd50k": parse_fsd50k,
    "clotho_metadata": parse_clotho_metadata,
    "wavcaps_clotho_json": parse_wavcaps_clotho_json,
    "audiocaps": parse_audiocaps,
    "audioset_segments": parse_audioset_segments,
    "vggsound_test_list": parse_vggsound_test_list,
    "vggsound_full": parse_vggsound_full,
}


def load(cache_dir: str | os.PathLike | None = None, *, names: list[str] | None = None,
         roles: list[str] | None = None) -> pd.DataFrame:
    """All fetched eval items as one table (see module doc); parse errors raise EvalSetError."""
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    frames = []
    for key, entry in sorted(_read_fetched(cache).items()):
        if names and entry["eval_set"] not in names:
            continue
        if roles and entry["role"] not in roles:
            continue
        path = cache / _safe_rel(entry["path"])
        try:
            df = PARSERS[entry["parser"]](path)
        except Exception as exc:  # noqa: BLE001 - name the file that failed to parse
            raise EvalSetError(f"{key}: cannot parse {path}: {type(exc).__name__}: {exc}") from exc
        if "split" not in df.columns:
            df["split"] = entry["split"]
        df["eval_set"] = entry["eval_set"]
        df["role"] = entry["role"]
        df["id_kind"] = entry["id_kind"]
        df["substitute"] = bool(entry["substitute"])
        frames.append(df[COLUMNS])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    return out.dropna(subset=["match_id"])

