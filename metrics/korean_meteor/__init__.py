"""kvcap korean_meteor metric; the module is also loadable with evaluate.load("metrics/korean_meteor")."""
