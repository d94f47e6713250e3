"""The clips an evaluation scores: one record per clip, from an AI-Hub split, a dataset or a ``predictions.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import open_split


class EvaluationInputError(ValueError):
    """The corpus, split or predictions file cannot be evaluated; the message names the file and the problem."""


@dataclass
class ClipRecord:
    """One evaluated clip; the fields written to ``predictions.jsonl`` (thumbnails go to the report only)."""

    video_id: str
    video_path: str | None
    category: str | None
    reference: str
    prediction: str | None = None
    attributes: dict[str, Any] | None = None
    num_tokens: int | None = None
    finished: bool | None = None
    error: str | None = None  # why the clip has no caption: unreadable, or generation failed
    video_error: str | None = None  # why a captioned clip's video could not be read again (report frames, SigLIP)
    scores: dict[str, Any] = field(default_factory=dict)
    thumbnails: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("thumbnails")
        if row["attributes"] is None:
            row.pop("attributes")
        for optional in ("error", "video_error"):
            if row[optional] is None:
                row.pop(optional)
        return row


def attributes_of(metadata: str | None) -> dict[str, Any] | None:
    """Ground-truth visual attributes stored in a label's metadata (the demo corpus has them), else None."""
    if not metadata:
        return None
    try:
        parsed = json.loads(metadata)
    except json.JSONDecodeError:
        return None
    attributes = parsed.get("attributes") if isinstance(parsed, dict) else None
    return attributes if isinstance(attributes, dict) and "objects" in attributes else None


def select_evenly(count: int, max_samples: int | None) -> list[int]:
    """``max_samples`` indices spread evenly over ``count`` rows (all of them when ``None``)."""
    if max_samples is None or max_samples >= count:
        return list(range(count))
    if max_samples < 1:
        raise EvaluationInputError(f"max_samples must be at least 1, got {max_samples}")
    # Evenly spaced rather than the first N: ids are often grouped by category, and a subset should keep the mix.
    return sorted({int(i) for i in np.linspace(0, count - 1, max_samples).round()})


def records_from_dataset(dataset: Any, max_samples: int | None = None) -> list[ClipRecord]:
    """Records of the rows of an AI-Hub ``datasets.Dataset`` (as ``processing.aihub.load_aihub`` returns it)."""
    columns = set(dataset.column_names)
    records = []
    for index in select_evenly(len(dataset), max_samples):
        row = dataset[index]
        records.append(
            ClipRecord(
                video_id=row["video_id"],
                # Absolute, so that predictions.jsonl can be scored again from any working directory.
                video_path=os.path.abspath(row["video_path"]),
                category=row.get("category") if "category" in columns else None,
                reference=row["caption"],
                attributes=attributes_of(row["metadata"]) if "metadata" in columns else None,
            )
        )
    return records


def load_split_records(
    data_dir: str, split: str, max_samples: int | None = None
) -> tuple[list[ClipRecord], dict[str, Any]]:
    """Clips of one AI-Hub split as records, and what the corpus scan skipped (counts and paths)."""
    dataset, split_report = open_split(data_dir, split, decode_video=False)
    scan = {
        "root": str(data_dir),
        "split": split_report.split,
        "num_usable": split_report.num_usable,
        "skipped": split_report.counts(),
        "skipped_paths": {reason: paths for reason, paths in split_report.skipped.items() if paths},
        "skipped_details": split_report.details,
        "archives": split_report.archives,  # not extracted: their clips are missing from the split
    }
    return records_from_dataset(dataset, max_samples), scan


def load_prediction_records(path: str, data_dir: str | None = None, split: str = "val") -> list[ClipRecord]:
    """Records from a ``predictions.jsonl``; with ``data_dir``, paths, categories and labels come from the corpus."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    corpus: dict[str, ClipRecord] = {}
    if data_dir is not None:
        corpus = {record.video_id: record for record in load_split_records(data_dir, split)[0]}
    records = []
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluationInputError(f"{path}:{line_number}: not JSON ({error.msg})") from error
            missing = [key for key in ("video_id", "prediction") if key not in row]
            known = corpus.get(row.get("video_id"))
            if "reference" not in row and known is None:
                missing.append("reference")
            if missing:
                raise EvaluationInputError(f"{path}:{line_number}: missing {', '.join(missing)}")
            records.append(
                ClipRecord(
                    video_id=row["video_id"],
                    video_path=known.video_path if known else row.get("video_path"),
                    category=known.category if known else row.get("category"),
                    reference=row.get("reference", known.reference if known else ""),
                    prediction=row["prediction"],
                    attributes=known.attributes if known else row.get("attributes"),
                    num_tokens=row.get("num_tokens"),
                    finished=row.get("finished"),
                )
            )
    if not records:
        raise EvaluationInputError(f"{path} holds no predictions")
    return records
