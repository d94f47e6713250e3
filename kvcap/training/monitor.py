"""Mode-collapse watch: at every evaluation, caption a fixed set of validation clips and measure their diversity.

The seed runs collapsed to 6–11 distinct captions for 97 clips while their loss looked healthy; this callback
makes that visible in the training log (and TensorBoard), can stop the run, and feeds `metric_for_best_model`
(e.g. `eval_unique_ratio`) so the best checkpoint can be kept by diversity.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from kvcap.metrics.caption_diversity.caption_diversity import COLLAPSE_THRESHOLD, diversity

from .tensorboard import captions_markdown, log_to_tensorboard

logger = logging.getLogger(__name__)


class DiversityMonitorCallback(TrainerCallback):
    """Adds `eval_unique_ratio`, `eval_distinct_1`, `eval_distinct_2` to every evaluation's metrics.

    Args:
        videos: the fixed validation clips (paths or `(T, H, W, 3)` frames), the same at every evaluation.
        caption_fn: `caption_fn(model, videos) -> list[str]`, batched greedy captioning.
        threshold: unique-caption ratio below which collapse is reported.
        stop_on_collapse: end training at the first collapsed evaluation.
    """

    def __init__(
        self,
        videos: Sequence,
        caption_fn: Callable[[torch.nn.Module, Sequence], list[str]],
        threshold: float = COLLAPSE_THRESHOLD,
        stop_on_collapse: bool = False,
    ):
        self.videos = list(videos)
        self.caption_fn = caption_fn
        self.threshold = threshold
        self.stop_on_collapse = stop_on_collapse
        self.trainer = None
        self.history: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not self.videos or model is None:
            return
        # Every rank captions (the metrics must agree for metric_for_best_model); the main one speaks.
        speaks = state.is_world_process_zero
        try:
            captions = self.caption_fn(model, self.videos)  # greedy, in eval mode; the model's mode is restored
        except Exception as error:  # a failed diversity check must not end hours of training
            if speaks:
                logger.warning(f"Diversity check skipped at step {state.global_step}: captioning failed ({error!r})")
            if metrics is not None:
                # NaN rather than absent: metric_for_best_model must find its key, and NaN never counts as best.
                metrics.update(dict.fromkeys(("eval_unique_ratio", "eval_distinct_1", "eval_distinct_2"), float("nan")))
            return
        scores = diversity(captions, collapse_threshold=self.threshold)
        found = {
            "eval_unique_ratio": scores["unique_ratio"],
            "eval_distinct_1": scores["distinct_1"],
            "eval_distinct_2": scores["distinct_2"],
        }
        if metrics is not None:
            metrics.update(found)  # seen by metric_for_best_model, since Trainer reads this dict afterwards
        self.history.append({"step": state.global_step, **found, "captions": captions})
        if self.trainer is not None:
            self.trainer.log(found)
            # The captions themselves, not only their diversity: a person reads what the model writes.
            named = zip(self.videos, captions, strict=True)
            rows = [{"video_id": _clip_name(video, i), "prediction": text} for i, (video, text) in enumerate(named)]
            texts = {"eval/monitor_captions": captions_markdown(rows)}
            log_to_tensorboard(self.trainer, state.global_step, texts=texts)
        unique = scores["num_unique"]
        if scores["collapsed"]:
            most_common, count = Counter(captions).most_common(1)[0]
            if speaks:
                logger.warning(
                    f"Mode collapse: only {unique} distinct captions for {len(captions)} validation clips "
                    f"(unique ratio {scores['unique_ratio']:.2f} < {self.threshold}); {count} of them read "
                    f"{most_common[:80]!r}"
                )
            if self.stop_on_collapse:
                control.should_training_stop = True
        elif speaks:
            logger.info(f"Caption diversity: {unique}/{len(captions)} distinct captions.")


def _clip_name(video: Any, index: int) -> str:
    """A clip's file stem when it is a path, else its position among the monitored clips."""
    return Path(video).stem if isinstance(video, (str, Path)) else f"clip {index}"
