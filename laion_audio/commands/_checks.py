"""Up-front checks the commands share: each raises :class:`~laion_audio.errors.UserError`
(one line, exit 2) before a work folder is created or Ray starts, so a mistake costs seconds
instead of a run that fails per record."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UnavailableError, UserError

# ---------------------------------------------------------------------- argparse types
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_bytes(text: str) -> int:
    """``1000000``, ``500M``, ``1G``, ``1GiB`` -> bytes (decimal units; ``Ki``/``Mi``/``Gi`` binary)."""
    t = str(text).strip().upper().removesuffix("B")
    num = t.rstrip("KMGTI")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (try 500M or 1G)")
    if value < 1:
        raise argparse.ArgumentTypeError(f"byte size must be positive: {text!r}")
    return int(value)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {'at least 1' if low == 1 else f'{low} or more'}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1 (worker counts, batch sizes): ``--workers 0`` is a usage error, not a
    ZeroDivisionError half a minute into the run."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An int >= 0 (0 turns an option off)."""
    return _int_at_least(text, 0)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a duration floor where 0 disables it)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, learning rates): ``--max-minutes 0`` or ``-1`` meant no
    limit at all, a training run that never ends."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A float within [0, 1)."""
    value = _finite(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share within [0, 1), got {text}")
    return value


# ---------------------------------------------------------------------- checks
def existing_folder(path: str | os.PathLike | None, what: str) -> Path:
    if not path:
        raise UserError(f"{what} is required")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{what} {path} is not a folder" + ("" if p.exists() else " (it does not exist)"))
    return p


def existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {path} " + ("is not a file" if p.exists() else "does not exist"))
    return p


def writable_file(path: str | os.PathLike | None, what: str) -> None:
    """An output file the command can write: not a folder, and its nearest existing folder
    takes a new file (probed, so read-only mounts and /proc are caught before any work)."""
    if not path:
        return
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    _probe_write(p.parent, what, path)


def writable_folder(path: str | os.PathLike, what: str) -> None:
    """An output folder the command can create (or write in): probed the same way."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {path} is a file; give a folder")
    _probe_write(p, what, path)


def _probe_write(folder: Path, what: str, given) -> None:
    while not folder.exists():
        folder = folder.parent
    try:
        import tempfile

        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{what} {given}: cannot write in {folder} ({exc.strerror or exc})") from None


def ledger_folder(path: str | os.PathLike, what: str = "LEDGER_DIR") -> Path:
    """An existing ledger (as written by build): commands that read one never create one."""
    from ..ledger import journal_dir

    p = existing_folder(path, what)
    journal = journal_dir(p)      # rows written since the last compaction live beside the folder
    if not any(p.iterdir()) and not journal.is_dir():
        raise UserError(f"{what} {path} is empty, not a ledger (run `laion-audio build` first)")
    return p


def sources(names: list[str]) -> list[str]:
    """Known source names, each once, in the order given."""
    from crawlers import all_sources

    known = all_sources()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown source {', '.join(map(repr, unknown))}; known: "
                        + ", ".join(sorted(known)))
    return list(dict.fromkeys(names))


def source_options(name: str, options: dict) -> None:
    """Construct the source with its options and run its own :meth:`check` (paths, CSV
    columns, credentials, label files), turning what they raise into one line."""
    from crawlers import get_source
    from laion_audio.records import Failure

    try:
        source = get_source(name)(**options)
        source.check()
    except UserError:
        raise
    except Failure as exc:
        raise UnavailableError(f"source {name}: {exc.message}") if exc.code in (
            "http_error", "timeout", "unreachable") else UserError(f"source {name}: {exc.message}")
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"source {name}: {exc}")


def caption_model(model: str | None, what: str = "--caption-model") -> None:
    """A keyword-to-caption model must be a folder holding a Hugging Face config (or a hub id
    already in the local cache); a typo is found here, not as one failure per record."""
    if not model:
        return
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UserError(f"{what} {model} is not a model folder (no config.json); pass the "
                            "folder `laion-audio train-captioner --out` wrote")
        weights = p / "model.safetensors"
        if weights.is_file():     # its header and length (no tensors read): a cut copy is found here,
            try:                  # not as a failure of every record in the workers
                from safetensors import safe_open

                with safe_open(str(weights), framework="numpy"):
                    pass
            except Exception as exc:
                raise UserError(f"{what} {model}: model.safetensors is damaged or cut short ({exc})")
        return
    if str(model).startswith(("/", ".", "~")) or str(model).count("/") > 1:   # a path, not org/name
        raise UserError(f"{what} {model} does not exist")
    try:      # a hub id: only when its files are already here (a build never downloads a model)
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(model), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{what} {model}: no such folder, and not a model in the local Hugging "
                        f"Face cache ({type(exc).__name__})")


def name_dir_pairs(values: list[str], what: str = "--eval-audio") -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"{what} wants NAME=DIR, got {v!r}")
        existing_folder(folder, f"{what} {name}=")
        out[name] = folder
    return out


def json_file(path: str, what: str):
    """A JSON file's content; bytes that are not UTF-8 JSON are the user's to fix."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} is not UTF-8 JSON: {exc}") from None


def labels_by_index(data: dict, what: str) -> list[str]:
    """The labels of a {label: index} map in index order; the indices must be 0..n-1, each
    once (a gap or a repeat shifts every class after it)."""
    if not data or sorted(v for v in data.values() if type(v) is int) != list(range(len(data))):
        raise UserError(f"{what}: expected {{label: index}} with the indices 0..n-1, each once")
    return [k for k, _ in sorted(data.items(), key=lambda kv: kv[1])]
