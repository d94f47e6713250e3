"""kvcap evaluation metrics, each a self-contained ``evaluate`` module: ``evaluate.load("metrics/<name>")``.

A regular package (not a namespace package) so that ``metrics.<name>.<name>`` imports even when some other
distribution on ``sys.path`` ships a top-level ``metrics`` module.
"""
