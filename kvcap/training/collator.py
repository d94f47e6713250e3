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

    def __init__(
        self,
        processor: KVCapProcessor,
        max_length: int | None = None,
        prompt: str | None = None,
        max_caption_tokens: int | None = None,
    ):
        self.processor = processor
        self.max_length = max_length
        self.max_caption_tokens = max_caption_tokens
        self.prompt = prompt
        # Clips that could not be decoded on the fly (path -> why), in this process (a DataLoader worker has its own).
        self.skipped: dict[str, str] = {}
        self._last_good: tuple[Any, str] | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> BatchFeature:
        if all("video_features" in row and row["video_features"] is not None for row in rows):
            captions = [row["caption"] for row in rows]
            batch = self.processor(text=self.prompt, captions=captions, **self._limits())
            batch["video_features"] = torch.stack([torch.as_tensor(row["video_features"]) for row in rows])
            return batch
        videos, captions = self._decoded(rows)
        return self.processor(videos=videos, text=self.prompt, captions=captions, **self._limits())

    def _limits(self) -> dict[str, int | None]:
        return {"max_length": self.max_length, "max_caption_tokens": self.max_caption_tokens}

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


def note_long_captions(
    captions: Sequence[str], processor: KVCapProcessor, max_caption_tokens: int | None, split: str
) -> int:
    """Say before training how many of a split's captions `max_caption_tokens` will cut; returns that count.

    A cut caption is never silent: hours into a run, a per-batch warning is easy to miss, so the count over the
    whole split comes first, with the longest caption's length.
    """
    if max_caption_tokens is None or not captions:
        return 0
    from processing.aihub import caption_token_lengths

    targets = [length + 1 for length in caption_token_lengths(captions, processor.tokenizer)]  # + end of turn
    over = sum(length > max_caption_tokens for length in targets)
    where = f"{split}: {over} of {len(targets)} captions"
    if over:
        logger.warning(
            f"{where} are longer than --max_caption_tokens {max_caption_tokens} (caption + end-of-turn) and are cut "
            f"to it in training (longest {max(targets)} tokens); raise the limit to keep them whole."
        )
    else:
        logger.info(f"{where} exceed --max_caption_tokens {max_caption_tokens} (longest {max(targets)} tokens).")
    return over
