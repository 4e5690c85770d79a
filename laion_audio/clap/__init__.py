"""Bundled CLAP trainer: LAION-CLAP's models, features, loss and recipe, reading our shards
and LAION's. Model code (features, htsat, pann, feature_fusion, text, model, loss, factory,
checkpoint) is apart from training code (data, train, params, scheduler, distributed,
evaluate, metrics), as in open_clip."""
