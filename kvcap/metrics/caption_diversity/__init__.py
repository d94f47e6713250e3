"""kvcap caption_diversity metric; the module is also loadable with evaluate.load("kvcap/metrics/caption_diversity")."""
