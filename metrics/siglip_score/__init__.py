"""kvcap siglip_score metric; the module is also loadable with evaluate.load("metrics/siglip_score")."""
