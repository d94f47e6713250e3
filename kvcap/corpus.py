"""One split of an AI-Hub corpus, opened for training or evaluation: a clear error when it holds no usable clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processing.aihub import SplitReport, load_aihub


class EmptySplitError(ValueError):
    """A split has no usable clip; the message names the corpus folder, the split and what was found instead."""


def open_split(data_dir: str | Path, split: str, **load_kwargs: Any) -> tuple[Any, SplitReport]:
    """``load_aihub(data_dir, split=split, **load_kwargs)`` and its split report, refusing an empty split.

    Raises ``FileNotFoundError`` for a missing folder and :class:`EmptySplitError` when the split has no usable
    clip (no split folder, only archives, or every sample skipped), before anything expensive has started.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    dataset, report = load_aihub(root, split=split, return_report=True, **load_kwargs)
    split_report = next(iter(report.splits.values()))
    if len(dataset) == 0:
        found = ", ".join(split_report.split_dirs) or "no split folder"
        skipped = {reason: count for reason, count in split_report.counts().items() if count}
        extra = f"; skipped {skipped}" if skipped else ""
        if split_report.archives:
            extra += f"; {len(split_report.archives)} unextracted archives (extract them first)"
        raise EmptySplitError(f"no usable clips for split {split!r} under {data_dir} ({found}{extra})")
    return dataset, split_report
