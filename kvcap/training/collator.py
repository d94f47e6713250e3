"""The training collator: dataset rows (cached features, frames or paths) to a labelled batch for the `Trainer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature

from processing.processing_kvcap import KVCapProcessor


class KVCapDataCollator:
    """Batches dataset rows for the `Trainer`.

    Each row has `caption` and one of `video_features` `(T, P, D)` (from the feature cache), `frames`
    `(T, H, W, 3)` or `video_path`. Features are stacked as they are, so the vision tower never runs in training.
    """

    def __init__(self, processor: KVCapProcessor, max_length: int | None = None, prompt: str | None = None):
        self.processor = processor
        self.max_length = max_length
        self.prompt = prompt

    def __call__(self, rows: Sequence[dict[str, Any]]) -> BatchFeature:
        captions = [row["caption"] for row in rows]
        if all("video_features" in row and row["video_features"] is not None for row in rows):
            batch = self.processor(text=self.prompt, captions=captions, max_length=self.max_length)
            batch["video_features"] = torch.stack([torch.as_tensor(row["video_features"]) for row in rows])
            return batch
        videos = [row["frames"] if row.get("frames") is not None else row["video_path"] for row in rows]
        return self.processor(videos=videos, text=self.prompt, captions=captions, max_length=self.max_length)
