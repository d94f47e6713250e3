"""kvcap caption_diversity metric; the module is also loadable with evaluate.load("metrics/caption_diversity")."""
