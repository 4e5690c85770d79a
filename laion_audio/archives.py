"""Safe extraction of zip and tar archives that come from outside (purchased packs, bundle URLs).

An archive is untrusted input: its member names never choose a path on disk by themselves, and its
size claims are checked before and during extraction. Each bad member becomes a typed rejection
(``unsafe_path``, ``too_large``, ``undecodable``) while the good members still come through, so a
pack with one hostile entry is not lost. Rules:

- names: no absolute paths, drive letters, ``..`` components, NUL/control characters, or empty names;
  backslashes count as separators (Windows zips); the target is re-checked to lie inside the root;
- types: only regular files are extracted; symlinks, hardlinks, devices and FIFOs are rejected;
- sizes: a per-member cap (declared size checked first, written bytes counted while copying, so a
  lying header cannot write more), a total cap, a member-count cap, an archive-wide expansion cap
  (expanded bytes <= ``max_ratio`` x archive bytes + ``ratio_floor_bytes``, for zip and every tar
  compression alike), and for zip a per-member compression-ratio cap and an overlapping-entries
  check (zip bombs);
- tree: a member whose path runs through another member's file (``a.wav`` then ``a.wav/b.wav``),
  or a file where an earlier member made a folder, is rejected (``unsafe_path``);
- names that are not valid UTF-8 (Latin-1 tar names) are read byte by byte: valid UTF-8 stays,
  each other byte becomes its Latin-1 character, so every name is valid UTF-8 and stable;
- atomic: extraction goes to a temporary folder renamed when complete, with a manifest, so a rerun
  (or a refresh) reuses a finished extraction and never sees half of one.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from . import atomic
from .records import Failure, FailureCode

MANIFEST = ".laion_audio_extracted.json"
_COPY_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds for one archive. Defaults fit the real packs (Free To Use: 50.7 GB, ~6k files) while
    stopping a member that claims gigabytes or a zip that inflates a thousand-fold."""

    max_member_bytes: int = 1 << 30          # 1 GiB: about an hour of 48 kHz 24-bit stereo
    max_total_bytes: int = 256 << 30         # 256 GiB for the whole archive
    max_members: int = 200_000
    max_ratio: float = 100.0                 # expanded / compressed, per zip member and per archive
    ratio_min_bytes: int = 64 << 10          # member ratio only checked above this size
    ratio_floor_bytes: int = 16 << 20        # archive-wide: this much may always expand
    max_name_bytes: int = 1024


@dataclass
class Extracted:
    name: str       # normalised member name (posix, relative)
    path: str       # where it lies on disk
    size: int


@dataclass
class Rejected:
    name: str       # the member name as the archive gave it (control characters replaced)
    code: str       # FailureCode value
    message: str


@dataclass
class ExtractionResult:
    root: Path
    members: list[Extracted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: int = 0            # safe members the caller did not want (``want`` returned False)

    def to_json(self) -> dict:
        return {"root": str(self.root), "members": [asdict(m) for m in self.members],
                "rejected": [asdict(r) for r in self.rejected], "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict) -> "ExtractionResult":
        return cls(root=Path(data["root"]), members=[Extracted(**m) for m in data["members"]],
                   rejected=[Rejected(**r) for r in data["rejected"]], skipped=data.get("skipped", 0))


def _latin1_bytes(err: UnicodeDecodeError):
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("laion_audio.latin1", _latin1_bytes)


def utf8_name(name: str) -> str:
    """A file or member name as valid UTF-8 text: names the OS or tarfile decoded with
    ``surrogateescape`` (bytes that are not UTF-8) get each undecodable byte as its Latin-1
    character (``caf\\xe9.wav`` -> ``café.wav``). Valid names are returned unchanged; the result is
    a function of the name's bytes only (stable across runs and machines)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape") if not _has_non_escape_surrogates(name) \
            else name.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "laion_audio.latin1").encode("utf-8", "replace").decode("utf-8")


def _has_non_escape_surrogates(name: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF for c in name)


def printable_name(name: str) -> str:
    return _CONTROL.sub("?", utf8_name(name))[:512]


def safe_member_path(name: str, limits: ArchiveLimits = ArchiveLimits()) -> PurePosixPath:
    """The relative path a member may be written to, or ``Failure(unsafe_path)``."""
    if not name or "\x00" in name:
        raise Failure(FailureCode.UNSAFE_PATH, "empty name or NUL byte in member name")
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise Failure(FailureCode.UNSAFE_PATH, f"member name longer than {limits.max_name_bytes} bytes")
    if _CONTROL.search(name):
        raise Failure(FailureCode.UNSAFE_PATH, "control character in member name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise Failure(FailureCode.UNSAFE_PATH, "absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise Failure(FailureCode.UNSAFE_PATH, "'..' in member path (zip slip)")
    if not parts:
        raise Failure(FailureCode.UNSAFE_PATH, "member name has no file part")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise Failure(FailureCode.UNSAFE_PATH, "path component longer than 255 bytes")
    return PurePosixPath(*parts)


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' or None, from the content (not the name)."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        return None
    return None


def _fingerprint(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _Budget:
    """Running totals shared by both archive kinds."""

    def __init__(self, limits: ArchiveLimits, result: ExtractionResult, archive_bytes: int):
        self.limits = limits
        self.result = result
        self.total = 0
        self.count = 0
        self.seen: set[str] = set()
        self.folders: set[str] = set()
        #: expanded bytes this archive may produce: the total cap, and a ratio of its own size
        self.cap = min(limits.max_total_bytes,
                       int(limits.max_ratio * archive_bytes) + limits.ratio_floor_bytes)


    def reject(self, name: str, code: str, message: str) -> None:
        self.result.rejected.append(Rejected(printable_name(name), code, utf8_name(message)))

    def admit(self, name: str, declared: int, want: Callable[[str], bool]) -> PurePosixPath | None:
        """Check one member before reading it; returns its relative path or None (rejected/skipped)."""
        try:
            rel = safe_member_path(name, self.limits)
        except Failure as exc:
            self.reject(name, exc.code, exc.message)
            return None
        if not want(rel.as_posix()):
            self.result.skipped += 1
            return None
        if rel.as_posix() in self.seen:
            self.reject(name, FailureCode.UNSAFE_PATH, "duplicate member name (would overwrite)")
            return None
        parents = [PurePosixPath(*rel.parts[:i]).as_posix() for i in range(1, len(rel.parts))]
        if rel.as_posix() in self.folders or any(p in self.seen for p in parents):
            self.reject(name, FailureCode.UNSAFE_PATH,
                        "member path collides with another member (a file used as a folder)")
            return None
        if declared > self.limits.max_member_bytes:
            self.reject(name, FailureCode.TOO_LARGE,
                        f"declared size {declared} > {self.limits.max_member_bytes} bytes")
            return None
        if self.total + declared > self.cap:
            self.reject(name, FailureCode.TOO_LARGE,
                        f"archive would expand past {self.cap} bytes "
                        f"(limit: {self.limits.max_ratio:.0f}x its size, at most "
                        f"{self.limits.max_total_bytes} bytes)")
            return None
        self.seen.add(rel.as_posix())
        self.folders.update(parents)
        return rel

    def write(self, name: str, rel: PurePosixPath, src, declared: int, root: Path) -> None:
        """Copy at most the allowed bytes; a member that writes more than it declared is cut and
        rejected (a lying header)."""
        dest = root.joinpath(*rel.parts)
        root_resolved = root.resolve()
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:   # a file where a folder should be (admit() stops the known cases)
            self.reject(name, FailureCode.UNSAFE_PATH, f"cannot create the member's folder: {exc}"[:300])
            return
        if not dest.parent.resolve().is_relative_to(root_resolved):
            self.reject(name, FailureCode.UNSAFE_PATH, "target folder escapes the extraction root")
            return
        cap = min(self.limits.max_member_bytes, declared, self.cap - self.total)
        written = 0
        try:
            with open(dest, "xb") as out:
                while True:
                    chunk = src.read(min(_COPY_CHUNK, cap + 1 - written))
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > cap:
                        raise Failure(FailureCode.TOO_LARGE,
                                      f"member inflates past its declared size {declared}")
                    out.write(chunk)
        except Failure as exc:
            dest.unlink(missing_ok=True)
            self.reject(name, exc.code, exc.message)
            return
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            # zlib.error is a subclass of Exception only; caught by the caller's generic branch
            dest.unlink(missing_ok=True)
            self.reject(name, FailureCode.UNDECODABLE, f"corrupt member: {exc}"[:300])
            return
        if written < declared:
            dest.unlink(missing_ok=True)
            self.reject(name, FailureCode.TRUNCATED, f"member has {written} of {declared} declared bytes")
            return
        self.total += written
        self.result.members.append(Extracted(rel.as_posix(), str(dest), written))


def _extract_zip(archive: Path, root: Path, budget: _Budget, want) -> None:
    limits = budget.limits
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        overlapping = _overlapping_zip_entries(infos)
        for i, info in enumerate(infos):
            if i >= limits.max_members:
                budget.reject(f"{archive.name}#{i}+", FailureCode.TOO_LARGE,
                              f"more than {limits.max_members} members; the rest were not read")
                break
            if info.is_dir():
                continue
            info.filename = utf8_name(info.filename)
            mode = info.external_attr >> 16
            if info.create_system == 3 and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                budget.reject(info.filename, FailureCode.UNSAFE_PATH, f"{kind} member")
                continue
            if info.flag_bits & 0x1:
                budget.reject(info.filename, FailureCode.UNDECODABLE, "encrypted member")
                continue
            if info.filename in overlapping:
                budget.reject(info.filename, FailureCode.TOO_LARGE,
                              "member data overlaps another member (zip bomb)")
                continue
            if (info.file_size >= limits.ratio_min_bytes
                    and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
                budget.reject(info.filename, FailureCode.TOO_LARGE,
                              f"compression ratio {info.file_size / max(info.compress_size, 1):.0f} "
                              f"> {limits.max_ratio:.0f} (zip bomb)")
                continue
            rel = budget.admit(info.filename, info.file_size, want)
            if rel is None:
                continue
            try:
                with zf.open(info) as src:
                    budget.write(info.filename, rel, src, info.file_size, root)
            except Exception as exc:  # zlib.error, NotImplementedError (unknown compression)
                try:
                    root.joinpath(*rel.parts).unlink(missing_ok=True)
                except OSError:
                    pass
                budget.reject(info.filename, FailureCode.UNDECODABLE, f"cannot read member: {exc}"[:300])


def _overlapping_zip_entries(infos: list[zipfile.ZipInfo]) -> set[str]:
    """Names whose compressed data runs into the next member's header (overlapping-file bombs)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    bad = set()
    for cur, nxt in zip(ordered, ordered[1:]):
        start = cur.header_offset + 30 + len(cur.orig_filename.encode("utf-8", "replace"))
        if start + cur.compress_size > nxt.header_offset or cur.header_offset == nxt.header_offset:
            bad.add(cur.filename)
            bad.add(nxt.filename)
    return bad


def _extract_tar(archive: Path, root: Path, budget: _Budget, want) -> None:
    limits = budget.limits
    # stream mode: one forward pass, also for .tar.gz/.bz2/.xz (no random access needed)
    # names decode as UTF-8 whatever the locale; other bytes are fixed by utf8_name
    with tarfile.open(archive, mode="r|*", encoding="utf-8", errors="surrogateescape") as tf:
        i = 0
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                budget.reject(f"{archive.name}#{i}", FailureCode.TRUNCATED,
                              f"archive ends early or is corrupt after {i} members: {exc}"[:300])
                break
            if member is None:
                break
            i += 1
            if i > limits.max_members:
                budget.reject(f"{archive.name}#{i}+", FailureCode.TOO_LARGE,
                              f"more than {limits.max_members} members; the rest were not read")
                break
            if member.isdir():
                continue
            member.name = utf8_name(member.name)
            if member.issym() or member.islnk():
                budget.reject(member.name, FailureCode.UNSAFE_PATH,
                              f"{'symlink' if member.issym() else 'hardlink'} member -> {member.linkname!r}")
                continue
            if not member.isreg():
                budget.reject(member.name, FailureCode.UNSAFE_PATH, "device, FIFO or other special member")
                continue
            rel = budget.admit(member.name, member.size, want)
            if rel is None:
                continue
            src = tf.extractfile(member)
            budget.write(member.name, rel, src, member.size, root)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *,
                    limits: ArchiveLimits = ArchiveLimits(),
                    want: Callable[[str], bool] = lambda name: True) -> ExtractionResult:
    """Extract ``archive`` (zip or any tar) into ``dest`` safely; reuse a finished extraction.

    Raises ``Failure(undecodable)`` when the file is not an archive at all. Members are reported
    in ``result.members`` (extracted) and ``result.rejected`` (typed reasons)."""
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise Failure(FailureCode.MISSING_FILE, f"archive {archive} does not exist")
    fingerprint = _fingerprint(archive)
    manifest = dest / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if data.get("fingerprint") == fingerprint:
                result = ExtractionResult.from_json(data["result"])
                if all(Path(m.path).is_file() for m in result.members):
                    return result
        except (ValueError, KeyError, TypeError):
            pass
    kind = archive_kind(archive)
    if kind is None:
        raise Failure(FailureCode.UNDECODABLE, f"{archive.name} is neither a zip nor a tar archive")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):   # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    result = ExtractionResult(root=dest)
    budget = _Budget(limits, result, archive.stat().st_size)
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, budget, want)
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Failure(FailureCode.UNDECODABLE, f"{archive.name}: {exc}") from exc
    # paths were written under tmp; point them at the final folder
    for m in result.members:
        m.path = str(dest / m.name)
    (tmp / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "result": result.to_json()},
                                           ensure_ascii=False), encoding="utf-8")
    atomic.publish(tmp, dest)
    return result


def extract_one(archive: str | os.PathLike, member: str, dest_dir: str | os.PathLike, *,
                limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extract a single member (by its normalised name) into ``dest_dir``; used by ``fetch`` when
    the crawl's extraction folder is not on this machine. Same checks as :func:`extract_archive`."""
    target = safe_member_path(member, limits).as_posix()
    archive = Path(archive)
    kind = archive_kind(archive)
    if kind is None:
        raise Failure(FailureCode.UNDECODABLE, f"{archive.name} is neither a zip nor a tar archive")
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=".one-", dir=dest_dir))   # private: fetch_many runs threads
    result = ExtractionResult(root=out)
    budget = _Budget(limits, result, archive.stat().st_size)

    def only(name: str) -> bool:
        return name == target
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, out, budget, only)
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise Failure(FailureCode.UNDECODABLE, f"{archive.name}: {exc}") from exc
    mine = [r for r in result.rejected if safe_name_or_none(r.name) == target]
    if mine or not result.members:
        shutil.rmtree(out, ignore_errors=True)
    if mine:
        raise Failure(mine[0].code, mine[0].message)
    if not result.members:
        raise Failure(FailureCode.MISSING_FILE, f"{member} is not in {archive.name}")
    src = Path(result.members[0].path)
    suffix = PurePosixPath(target).suffix.lower()[:12]
    digest = hashlib.sha1(f"{archive}\x00{target}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
    final = Path(dest_dir) / f"{digest}{suffix}"   # our name; a 255-byte member name stays out
    atomic.publish(src, final)
    shutil.rmtree(out, ignore_errors=True)
    return final


def safe_name_or_none(name: str) -> str | None:
    try:
        return safe_member_path(name).as_posix()
    except Failure:
        return None


def count_codes(rejected: Iterable[Rejected]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r.code] = counts.get(r.code, 0) + 1
    return counts
