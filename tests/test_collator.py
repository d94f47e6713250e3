"""kvcap.training.collator: dataset rows (cached features, frames or paths) to labelled batches."""

import numpy as np
import pytest
import torch

from kvcap.training.collator import KVCapDataCollator, note_long_captions

from .conftest import qwen3_processor, tiny_kvcap_config, tiny_processor

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


def test_long_captions_are_counted_before_training_and_cut_in_each_batch(qwen3_tokenizer, caplog):
    from kvcap.demo.qwen3_tokenizer import aihub_like_caption

    processor = qwen3_processor(qwen3_tokenizer, num_video_tokens=64)
    captions = [aihub_like_caption(0), aihub_like_caption(1, min_chars=1200), "짧은 캡션"]
    long_tokens = len(qwen3_tokenizer(captions[1], add_special_tokens=False)["input_ids"]) + 1
    with caplog.at_level("INFO", logger="kvcap.training.collator"):
        assert note_long_captions(captions, processor, 768, "train") == 1
        assert note_long_captions(captions, processor, 2000, "val") == 0
    assert (
        f"train: 1 of 3 captions are longer than --max_caption_tokens 768 (caption + end-of-turn) and are cut to it "
        f"in training (longest {long_tokens} tokens)" in caplog.text
    )
    assert f"val: 0 of 3 captions exceed --max_caption_tokens 2000 (longest {long_tokens} tokens)" in caplog.text

    rows = [{"caption": caption, "video_features": torch.zeros(8, 4, 16)} for caption in captions]
    batch = KVCapDataCollator(processor, max_caption_tokens=768)(rows)
    supervised = (batch["labels"] != -100).sum(dim=1).tolist()
    assert supervised == [450, 768, len(qwen3_tokenizer(captions[2], add_special_tokens=False)["input_ids"]) + 1]
