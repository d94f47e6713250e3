"""What the Trainer's TensorBoard logging leaves out: sample captions, and the final evaluation's figures.

The Trainer logs scalars; a captioner is judged by its captions. The diversity monitor's captions at every
evaluation and the final evaluation (its figures and sample captions) go to the run's TensorBoard folder, beside
the Trainer's own events, when ``report_to`` includes ``tensorboard``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers.integrations import TensorBoardCallback


def tensorboard_dir(trainer: Any) -> str | None:
    """The folder the trainer's TensorBoard callback writes to, or None when TensorBoard is not reported to."""
    from transformers.integrations.integration_utils import default_logdir

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            return callback.logging_dir or os.path.join(trainer.args.output_dir, default_logdir())
    return None


def captions_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table (TensorBoard renders it) of ``video_id``, ``prediction`` and, when known, ``reference``."""
    with_reference = any(row.get("reference") for row in rows)
    lines = ["| clip | caption |" + (" reference |" if with_reference else ""), "|---|---|" + ("---|" * with_reference)]
    for row in rows:
        cells = [row.get("video_id", ""), row.get("prediction") or ""]
        cells += [row.get("reference") or ""] if with_reference else []
        lines.append("| " + " | ".join(" ".join(str(cell).split()).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def log_to_tensorboard(
    trainer: Any, step: int, scalars: dict[str, float] | None = None, texts: dict[str, str] | None = None
) -> str | None:
    """Write ``scalars`` and ``texts`` at ``step`` to the run's TensorBoard folder (main process); returns it."""
    log_dir = tensorboard_dir(trainer)
    if log_dir is None or not trainer.is_world_process_zero():
        return None
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=log_dir) as writer:
        for tag, value in (scalars or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(tag, value, step)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, step)
    return log_dir
