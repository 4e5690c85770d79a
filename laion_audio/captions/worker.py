"""The caption stage as a worker runs it: model loaded once per process, the shared cache opened
per batch. The entry of the stage table for both ``build`` and ``laion-audio caption``."""
from __future__ import annotations

from typing import Any

from ..records import Record

#: one Captioner per (model, load options) per worker process, as an actor would hold it
_CAPTIONERS: dict = {}


def _captioner(model: str, load: dict[str, Any]):
    from .k2c import Captioner, GenerationParams

    key = (model, repr(sorted(load.items())))
    if key not in _CAPTIONERS:
        kwargs = dict(load)
        if kwargs.get("params") is not None:
            kwargs["params"] = GenerationParams(**kwargs["params"])
        else:
            kwargs.pop("params", None)
        _CAPTIONERS[key] = Captioner.load(model, **{k: v for k, v in kwargs.items() if v is not None})
    return _CAPTIONERS[key]


def captioner_for(model: str, *, input_format, device, gen_batch_size, params):
    """This process's captioner for these options, loaded once: the ``caption`` command loads
    it up front (a model that cannot load is one line) and the stage's worker gets the same."""
    return _captioner(model, {"input_format": input_format, "device": device,
                              "batch_size": gen_batch_size, "params": params})


def release(model: str) -> None:
    """Drop this process's captioners of ``model``: ``build`` loads one in the driver to check
    the folder, and keeps it only when the stage runs there (Ray workers load their own; the
    driver's copy would hold memory, on a GPU too, for the whole run)."""
    import gc

    for key in [k for k in _CAPTIONERS if isinstance(k, tuple) and k[0] == model]:
        del _CAPTIONERS[key]
    gc.collect()


def caption_batch(records: list[Record], *, model: str | None = None,
                  input_format: str | None = None, min_duration: float | None = 2.0,
                  cache_path: str | None = None, template: str = "sounds_of",
                  debias: bool = True, labels_dir: str | None = None, device: str | None = None,
                  gen_batch_size: int | None = None, params: dict | None = None,
                  keyword_fallback: bool = True, audioset_captions: str | None = None,
                  stats: Any = None) -> list[Record]:
    """Caption a batch: with ``model`` a T5 keyword-to-caption model (cached raw captions in
    ``cache_path``), else the paper's template. Options are plain values so they cross to Ray
    workers; ``params`` holds :class:`GenerationParams` fields (None: the decoding the model's
    quality report passed with). ``audioset_captions``: an ``audioset-captions`` Parquet whose
    rows AudioSet records take as their texts."""
    from .cache import CaptionCache
    from .keywords import AudioSetLabels
    from .stage import CaptionOptions, caption_batch as caption_stage

    captioner = cache = None
    if model:
        captioner = captioner_for(model, input_format=input_format, device=device,
                                  gen_batch_size=gen_batch_size, params=params)
        cache = CaptionCache(cache_path) if cache_path else None
    labels = AudioSetLabels.from_dir(labels_dir) if labels_dir else None
    table = None
    if audioset_captions:
        from .stage import AudioSetCaptionTable

        if audioset_captions not in _CAPTIONERS:
            _CAPTIONERS[audioset_captions] = AudioSetCaptionTable(audioset_captions)
        table = _CAPTIONERS[audioset_captions]
    options = CaptionOptions(min_duration=min_duration or None, template=template, debias=debias,
                             labels=labels, keyword_fallback=keyword_fallback,
                             audioset_captions=table)
    try:
        return caption_stage(records, captioner, options, cache=cache, stats=stats)
    finally:
        if cache is not None:
            cache.close()
