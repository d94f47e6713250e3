"""The training collator: dataset rows (cached features, frames or paths) to a labelled batch for the `Trainer`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature

from processing.processing_kvcap import KVCapProcessor

logger = logging.getLogger(__name__)


class KVCapDataCollator:
    """Batches dataset rows for the `Trainer`.

    Each row has `caption` and one of `video_features` `(T, P, D)` (from the feature cache), `frames`
    `(T, H, W, 3)` or `video_path`. Features are stacked as they are, so the vision tower never runs in training.
    """

    def __init__(self, processor: KVCapProcessor, max_length: int | None = None, prompt: str | None = None):
        self.processor = processor
        self.max_length = max_length
        self.prompt = prompt
        # Clips that could not be decoded on the fly (path -> why), in this process (a DataLoader worker has its own).
        self.skipped: dict[str, str] = {}
        self._last_good: tuple[Any, str] | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> BatchFeature:
        if all("video_features" in row and row["video_features"] is not None for row in rows):
            captions = [row["caption"] for row in rows]
            batch = self.processor(text=self.prompt, captions=captions, max_length=self.max_length)
            batch["video_features"] = torch.stack([torch.as_tensor(row["video_features"]) for row in rows])
            return batch
        videos, captions = self._decoded(rows)
        return self.processor(videos=videos, text=self.prompt, captions=captions, max_length=self.max_length)

    def _decoded(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[str]]:
        """Each row's frames ``(T, H, W, 3)``, decoding paths here; a clip that cannot be decoded is skipped.

        One bad clip must not stop hours of training (nor the resume, which would meet it again): it is left out
        of its batch, counted and logged with its path. A batch with no clip left takes the last good clip again.
        """
        read_error = getattr(self.processor, "VideoReadError", RuntimeError)
        videos, captions = [], []
        for row in rows:
            if row.get("frames") is not None:
                videos.append(row["frames"])
                captions.append(row["caption"])
                continue
            try:
                videos.append(self.processor.load_frames(row["video_path"]))
                captions.append(row["caption"])
            except read_error as error:
                self.skipped[row["video_path"]] = str(error)
                logger.warning(
                    f"Skipped a clip that cannot be decoded ({len(self.skipped)} so far in this process): {error}"
                )
        if not videos:
            if self._last_good is None:
                # Nothing to stand in for them yet: say which clips, rather than train on an empty batch.
                raise RuntimeError(f"no clip of the first batch could be decoded: {'; '.join(self.skipped.values())}")
            videos, captions = [self._last_good[0]], [self._last_good[1]]
        self._last_good = (videos[-1], captions[-1])
        return videos, captions
