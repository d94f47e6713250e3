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


def test_a_clip_that_cannot_be_decoded_is_skipped_counted_and_never_stops_a_batch(processor, tmp_path, caplog):
    from kvcap.demo.corpus import generate_corpus
    from kvcap.demo.video_clips import corrupt_first_keyframe

    generate_corpus(tmp_path / "corpus", num_train=2, num_val=0, seed=0, workers=1)
    good = sorted((tmp_path / "corpus" / "train" / "videos").glob("*.mp4"))
    bad = corrupt_first_keyframe(good[0], tmp_path / "damaged.mp4")  # passes a probe, fails to decode
    collator = KVCapDataCollator(processor)
    with caplog.at_level("WARNING", logger="kvcap.training.collator"):
        batch = collator(
            [{"caption": CAPTIONS[0], "video_path": str(good[0])}, {"caption": CAPTIONS[1], "video_path": str(bad)}]
        )
    assert batch["pixel_values_videos"].shape[0] == 1 and list(collator.skipped) == [str(bad)]
    assert "damaged.mp4" in caplog.text and "1 so far" in caplog.text
    # A batch with no readable clip takes the last good clip again, rather than stop the run.
    alone = collator([{"caption": CAPTIONS[1], "video_path": str(bad)}])
    assert alone["pixel_values_videos"].shape[0] == 1
    torch.testing.assert_close(alone["pixel_values_videos"], batch["pixel_values_videos"])
    with pytest.raises(RuntimeError, match=r"no clip of the first batch could be decoded.*damaged\.mp4"):
        KVCapDataCollator(processor)([{"caption": CAPTIONS[1], "video_path": str(bad)}])
