"""kvcap korean_meteor metric; the module is also loadable with evaluate.load("kvcap/metrics/korean_meteor")."""
