"""kvcap.training.collator: dataset rows (cached features, frames or paths) to labelled batches."""

import numpy as np
import pytest
import torch

from kvcap.training.collator import KVCapDataCollator

from .conftest import tiny_kvcap_config, tiny_processor

CAPTIONS = ["맑은 낮, 빨간색 원이 왼쪽에서 오른쪽으로 이동합니다.", "밤의 시가지에 파란색 사각형이 멈춰 있습니다."]


@pytest.fixture
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, tiny_kvcap_config(tiny_tokenizer, "perceiver"))


def test_collator_uses_cached_features_when_present(processor):
    features = torch.randn(8, 16, 64)
    rows = [{"caption": caption, "video_features": features} for caption in CAPTIONS]
    batch = KVCapDataCollator(processor)(rows)
    assert batch["video_features"].shape == (2, 8, 16, 64)
    assert "pixel_values_videos" not in batch and "labels" in batch
    frames_rows = [{"caption": caption, "frames": np.zeros((8, 48, 48, 3), np.uint8)} for caption in CAPTIONS]
    assert KVCapDataCollator(processor)(frames_rows)["pixel_values_videos"].shape == (2, 8, 3, 48, 48)
