"""Captions for label-only records: keyword-to-caption (T5), de-biasing, the paper's templates,
a persistent generation cache, our own captioner trainer and a quality report.

Flow: ``keywords.record_keywords`` -> ``cache`` lookup -> ``k2c.Captioner.generate`` (batched beam
search) -> ``debias.debias`` -> ``stage.caption_batch`` writes ``texts``/``text_augment_t5`` and
``caption_provenance``. ``templates`` is the fallback when no model is configured.
"""
