"""One evaluation for `eval_hf.py` and the end of training: records → captions → scores → three output files."""

from .records import ClipRecord, EvaluationInputError, load_prediction_records, load_split_records, records_from_dataset
from .report import frames_to_data_uris, render_report, write_report
from .run import OUTPUT_FILES, caption_records, evaluate_model, headline, score_and_write, write_outputs
from .scoring import ScoringArguments, compute_metrics, evaluate_records

__all__ = [
    "OUTPUT_FILES",
    "ClipRecord",
    "EvaluationInputError",
    "ScoringArguments",
    "caption_records",
    "compute_metrics",
    "evaluate_model",
    "evaluate_records",
    "frames_to_data_uris",
    "headline",
    "load_prediction_records",
    "load_split_records",
    "records_from_dataset",
    "render_report",
    "score_and_write",
    "write_outputs",
    "write_report",
]
