"""Build a CLAP model (and its tokenizer) from a LAION-style model config name.

``amodel`` names a JSON under ``model_configs/`` (``HTSAT-tiny``, ``HTSAT-base``, ``PANN-14``,
``PANN-10``, ``PANN-6``; ``*-test`` are tiny widths for CPU tests) or a path to such a JSON;
``tmodel`` is ``roberta``, ``bert`` or ``transformer``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .features import AudioConfig
from .htsat import create_htsat
from .model import CLAP
from .pann import create_pann
from .text import TEXT_TYPES, Tokenizer, build_hf_text_branch, load_tokenizer

CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(amodel: str | dict) -> dict:
    """A config by name, by JSON path, or as the dict a checkpoint carries (``amodel_config``)."""
    if isinstance(amodel, dict):
        return amodel
    path = Path(amodel)
    if not path.suffix == ".json":
        path = CONFIG_DIR / f"{amodel}.json"
    if not path.is_file():
        raise ValueError(f"unknown audio model {amodel!r}; known: {', '.join(list_models())}")
    return json.loads(path.read_text())


def create_audio_branch(audio_cfg: dict, enable_fusion: bool, fusion_type: str,
                        spec_augment: bool = True):
    cfg = AudioConfig.from_dict(audio_cfg)
    fusion = fusion_type if enable_fusion else None
    if cfg.model_type == "HTSAT":
        branch = create_htsat(cfg, cfg.model_name, fusion, spec_augment=spec_augment,
                              **audio_cfg.get("htsat", {}))
    elif cfg.model_type == "PANN":
        branch = create_pann(cfg, cfg.model_name, fusion, channels=audio_cfg.get("pann_channels"),
                             spec_augment=spec_augment)
    else:
        raise ValueError(f"unknown audio model type {cfg.model_type!r} (HTSAT or PANN)")
    return branch


def create_model(amodel: str = "HTSAT-tiny", tmodel: str = "roberta", enable_fusion: bool = False,
                 fusion_type: str = "aff_2d", text_model_path: str | Path | None = None,
                 tokenizer: Tokenizer | None = None, joint_embed_shape: int = 512,
                 mlp_act: str = "relu", spec_augment: bool = True,
                 text_config: dict | None = None) -> CLAP:
    """A CLAP whose state-dict names match LAION's. With ``text_model_path`` the text tower is
    the pretrained model in that folder; with ``text_config`` (a checkpoint's saved tower
    config) it is that architecture; otherwise it is built from scratch (sized by the config's
    ``text_cfg.hf`` overrides, vocabulary from ``tokenizer``)."""
    if tmodel not in TEXT_TYPES:
        raise ValueError(f"unknown text model {tmodel!r}; expected one of {TEXT_TYPES}")
    cfg = load_model_config(amodel)
    audio_branch = create_audio_branch(cfg["audio_cfg"], enable_fusion, fusion_type, spec_augment)
    audio_width = audio_branch.num_features
    if cfg.get("embed_dim") not in (None, audio_width):
        raise ValueError(f"{amodel}: embed_dim {cfg['embed_dim']} != audio width {audio_width}")
    text_cfg = dict(cfg.get("text_cfg", {}))
    text_branch = None
    if tmodel in ("roberta", "bert"):
        sized = text_model_path is not None or text_config is not None
        vocab = len(tokenizer) if (tokenizer is not None and not sized) else None
        pad = tokenizer.hf.pad_token_id if (tokenizer is not None and not sized) else None
        text_branch = build_hf_text_branch(tmodel, text_model_path, text_config or text_cfg.get("hf"),
                                           vocab, pad)
    elif tokenizer is not None:
        text_cfg["vocab_size"] = len(tokenizer)
    return CLAP(audio_branch, audio_width, tmodel, text_branch=text_branch, text_cfg=text_cfg,
                joint_embed_shape=joint_embed_shape, mlp_act=mlp_act)


def create_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in a local folder (a pretrained text model's folder or one written by
    ``text.train_tokenizer``)."""
    return load_tokenizer(path)
