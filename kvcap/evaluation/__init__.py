"""kvcap evaluation helpers used by ``eval_hf.py``: the self-contained HTML report."""

from .report import frames_to_data_uris, render_report, write_report

__all__ = ["frames_to_data_uris", "render_report", "write_report"]
