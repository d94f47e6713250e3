"""kvcap siglip_score metric; the module is also loadable with evaluate.load("kvcap/metrics/siglip_score")."""
