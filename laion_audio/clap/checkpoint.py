"""Load LAION-CLAP checkpoints (and ours) into our CLAP with ``strict=True``.

The documented fixes (reference/clap.md §2.7, §7.3):
* ``module.`` prefixes from DDP-saved state dicts are stripped;
* ``text_branch.embeddings.position_ids`` (old transformers kept it as a buffer) is dropped;
* an HTS-AT/PANN AudioSet pretrain (``sed_model.*`` keys or bare audio keys) maps onto
  ``audio_branch.*`` for ``--pretrained-audio``.

LAION's ``.pt`` files pickle a few numpy scalars, so ``torch.load(weights_only=True)`` needs
those numpy globals allow-listed; anything else is refused unless ``trust=True``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _numpy_safe_globals() -> list:
    import numpy as np

    safe = [np.dtype, np.ndarray]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar", "_reconstruct"])
            safe += [m.scalar, m._reconstruct]
        except (ImportError, AttributeError):
            pass
    safe += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "uint32", "bool")]
    return safe


def read_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """The raw object in a checkpoint file (a dict). ``trust=True`` allows full unpickling,
    only for files you know."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        if trust:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, a torn zip, anything torch.load raises
        text = str(exc)
        # torch's weights-only message names the cause after its boilerplate
        cause = text.split("WeightsUnpickler error:", 1)[-1]
        lines = [line.strip() for line in cause.splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        if not trust and "unsupported global" in text.lower():
            raise ValueError(f"{path}: refused to unpickle ({first}); pass trust=True "
                             "(--trust-checkpoint) if you know where the file comes from") from exc
        raise ValueError(f"{path} is not a readable checkpoint (truncated, or not a torch file): "
                         f"{first}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a checkpoint (a dict with a state_dict)")
    return raw


def fix_state_dict(state: dict) -> dict:
    """Apply LAION's key fixes to a state dict (returns a new dict)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("no state_dict of tensors in it: not a CLAP checkpoint")
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    out.pop("text_branch.embeddings.position_ids", None)
    return out


def load_state_strict(model: torch.nn.Module, state: dict, path) -> None:
    """``load_state_dict(strict=True)`` whose mismatch is one line: a checkpoint of another
    model (or another --amodel/--tmodel) names what differs instead of a page of keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise ValueError(f"{path} does not fit this model ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(shapes)} reshaped tensors, e.g. {first}): a checkpoint of "
                         "another model or of other --amodel/--tmodel settings")
    model.load_state_dict(state, strict=True)


def load_clap_checkpoint(model: torch.nn.Module, path: str | Path, strict: bool = True,
                         trust: bool = False) -> dict:
    """Load a LAION-CLAP (or our own) checkpoint into ``model``; returns the raw object."""
    raw = read_checkpoint(path, trust=trust)
    state = fix_state_dict(raw)
    missing, unexpected = model.load_state_dict(state, strict=strict)
    if missing or unexpected:
        log.warning("checkpoint %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    return raw


def load_pretrained_audio(model: torch.nn.Module, path: str | Path, trust: bool = False) -> tuple:
    """Initialise ``model.audio_branch`` from an AudioSet pretrain (HTS-AT ``sed_model.*`` or a
    PANN state dict). Non-matching keys (classifier heads of other sizes) are reported."""
    raw = read_checkpoint(path, trust=trust)
    state = raw.get("state_dict", raw.get("model", raw))
    audio = {}
    for key, value in state.items():
        for prefix in ("module.", "sed_model.", "audio_branch."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        audio[key] = value
    own = model.audio_branch.state_dict()
    usable = {k: v for k, v in audio.items() if k in own and own[k].shape == v.shape}
    result = model.audio_branch.load_state_dict(usable, strict=False)
    log.info("pretrained audio %s: loaded %d tensors, %d missing", path, len(usable), len(result.missing_keys))
    return result


def load_trained_model(path: str | Path, amodel: str | None = None, tmodel: str | None = None,
                       enable_fusion: bool | None = None, fusion_type: str | None = None,
                       tokenizer_path: str | None = None, text_model_path: str | None = None,
                       trust: bool = False):
    """(model, tokenizer, settings) from one of our checkpoints (which record how they were
    built) or a LAION one (then ``amodel``/``tmodel``/``enable_fusion`` and a local tokenizer
    folder, e.g. roberta-base's, must be given)."""
    from .factory import create_model, create_tokenizer

    raw = read_checkpoint(path, trust=trust)
    saved = raw.get("args", {}) if isinstance(raw, dict) else {}
    settings = {
        # a JSON config given by path is published by name only, its content in the checkpoint
        "amodel": amodel or raw.get("amodel_config") or saved.get("amodel", "HTSAT-tiny"),
        "tmodel": tmodel or saved.get("tmodel", "roberta"),
        "enable_fusion": saved.get("enable_fusion", False) if enable_fusion is None else enable_fusion,
        "fusion_type": fusion_type or saved.get("fusion_type", "aff_2d"),
        "tokenizer": tokenizer_path or saved.get("tokenizer") or text_model_path or saved.get("text_model_path"),
        "data_truncating": saved.get("data_truncating", "rand_trunc"),
        "data_filling": saved.get("data_filling", "repeatpad"),
    }
    run_dir = Path(path).resolve().parent.parent  # <run>/checkpoints/x.pt
    recorded = settings["tokenizer"]
    if recorded and not tokenizer_path and not Path(recorded).is_absolute():
        settings["tokenizer"] = str(run_dir / recorded)  # recorded relative to the run folder
    beside = run_dir / "tokenizer"
    if (not settings["tokenizer"] or not Path(settings["tokenizer"]).is_dir()) and beside.is_dir():
        settings["tokenizer"] = str(beside)  # an older run folder that was moved or copied
    if not settings["tokenizer"]:
        raise ValueError(f"{path}: no tokenizer recorded; pass a local tokenizer folder")
    tokenizer = create_tokenizer(settings["tokenizer"])
    # a tower trained from a pretrained folder keeps that folder's size: rebuild it from there
    text_path = text_model_path or saved.get("text_model_path")
    text_config = raw.get("text_config") if isinstance(raw, dict) else None
    if not text_model_path and text_path and not (Path(text_path).is_absolute() and Path(text_path).is_dir()):
        # recorded by name only: rebuild the tower from the config the checkpoint carries
        if text_config is None:
            raise ValueError(f"{path}: its text tower came from a folder named {Path(text_path).name!r}; "
                             "pass that folder (--text-model-path)")
        text_path = None
    model = create_model(settings["amodel"], settings["tmodel"], settings["enable_fusion"],
                         settings["fusion_type"], text_model_path=text_path, tokenizer=tokenizer,
                         text_config=text_config if text_path is None else None)
    try:
        state = fix_state_dict(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    load_state_strict(model, state, path)
    model.eval()
    return model, tokenizer, settings
