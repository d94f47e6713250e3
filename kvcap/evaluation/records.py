"""The clips an evaluation scores: one record per clip, from an AI-Hub split, a dataset or a ``predictions.jsonl``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import open_split

logger = logging.getLogger(__name__)


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


def _prediction_lines(file: Path) -> list[str]:
    """The file's lines, read as UTF-8 (BOM or not), else as CP949 (a file saved by Korean Windows tools)."""
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as utf8_error:
        try:
            text = raw.decode("cp949")
        except UnicodeDecodeError:
            line = raw[: utf8_error.start].count(b"\n") + 1
            raise EvaluationInputError(
                f"{file}:{line}: neither UTF-8 nor CP949 ({utf8_error.reason} at byte {utf8_error.start})"
            ) from utf8_error
        logger.warning(f"{file}: not UTF-8; read as CP949")
        return text.splitlines()


def load_prediction_records(path: str, data_dir: str | None = None, split: str = "val") -> list[ClipRecord]:
    """Records from a ``predictions.jsonl``; with ``data_dir``, paths, categories and labels come from the corpus.

    Every line must be a JSON object with a string ``video_id`` and ``prediction`` (and a string ``reference``
    unless ``data_dir`` supplies it); a mistake raises :class:`EvaluationInputError` naming the file and line. A
    ``"prediction": null`` is kept as a clip without a caption (counted and listed), not dropped.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    corpus: dict[str, ClipRecord] = {}
    if data_dir is not None:
        corpus = {record.video_id: record for record in load_split_records(data_dir, split)[0]}
    records = []
    for line_number, line in enumerate(_prediction_lines(file), 1):
        where = f"{path}:{line_number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvaluationInputError(f"{where}: not JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise EvaluationInputError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
        missing = [key for key in ("video_id", "prediction") if key not in row]
        known = corpus.get(row.get("video_id"))
        if "reference" not in row and known is None:
            missing.append("reference")
        if missing:
            raise EvaluationInputError(f"{where}: missing {', '.join(missing)}")
        for key, allowed in (("video_id", (str,)), ("prediction", (str, type(None))), ("reference", (str,))):
            if key in row and not isinstance(row[key], allowed):
                kind = "a string or null" if key == "prediction" else "a string"
                raise EvaluationInputError(f"{where}: {key} must be {kind}, got {type(row[key]).__name__}")
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
                error=None if row["prediction"] is not None else f"no prediction ({where}: null)",
            )
        )
    if not records:
        raise EvaluationInputError(f"{path} holds no predictions")
    return records
