"""kvcap.generation: batched captioning equals one clip at a time, from frames or cached features; loading a folder
in 4-bit; the command-line generation overrides; dtype resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvcap.demo.corpus import generate_corpus
from kvcap.generation import GenerationArguments, generate_captions, load_model_and_processor, resolve_dtype
from modeling_kvcap import PROJECTOR_TYPES
from modeling_kvcap.configuration_kvcap import TEMPORAL_ENCODINGS

from .conftest import tiny_processor


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generation-corpus")
    # Six val clips, as tests/test_eval_hf.py has: the 4-bit round trip below is exact on these clips, not on all (on
    # CPU the loaded model's packed 4-bit weights differ in layout from the reloaded ones; logits ~3e-3 apart).
    generate_corpus(root, num_train=0, num_val=6, seed=0)
    return root


# Every projector with each temporal encoding: the encodings mix patches across frames, never across clips.
BATCHING_CASES = [("mlp_2l", "none"), ("perceiver", "none")] + [
    (projector_type, encoding)
    for encoding in TEMPORAL_ENCODINGS
    if encoding != "none"
    for projector_type in PROJECTOR_TYPES
]


@pytest.mark.parametrize(("projector_type", "temporal_encoding"), BATCHING_CASES)
def test_generate_captions_batched_equals_one_at_a_time(
    make_tiny_model, tiny_tokenizer, corpus: Path, projector_type: str, temporal_encoding: str
) -> None:
    model = make_tiny_model(projector_type, temporal_encoding=temporal_encoding).eval()
    if model.multi_modal_projector.temporal_encoding is not None:
        # Values well away from initialisation, so the encoding shapes the captions.
        torch.manual_seed(0)
        for param in model.multi_modal_projector.temporal_encoding.parameters():
            torch.nn.init.normal_(param, std=0.2)
    processor = tiny_processor(tiny_tokenizer, model.config)
    clips = [processor.load_frames(corpus / "val" / "videos" / f"kvcap_demo_val_0000{i}.mp4") for i in range(4)]
    # Prompts of different lengths, so the batch is left padded.
    prompts = ["설명해주세요.", None, "이 영상을 아주 자세히, 빠짐없이 설명해주세요.", None]
    model.train()
    batched = generate_captions(model, processor, clips, batch_size=4, prompt=prompts, max_new_tokens=10)
    assert model.training, "the caller's train mode is restored"
    alone = [
        generate_captions(model, processor, [clip], batch_size=1, prompt=[prompt], max_new_tokens=10)[0]
        for clip, prompt in zip(clips, prompts, strict=True)
    ]
    assert batched == alone
    assert len(set(batched)) > 1, "different clips and prompts give different captions"

    # Cached encoder features (as the training loop has them) caption the same as frames.
    pixel_values = processor(videos=clips)["pixel_values_videos"]
    with torch.no_grad():
        features = model.model.get_vision_tower_features(pixel_values)
    from_features = generate_captions(
        model, processor, video_features=features, batch_size=3, prompt=prompts, max_new_tokens=10
    )
    assert from_features == batched


def test_load_in_4bit_quantizes_the_language_model_only_and_reloads_quantized(
    make_tiny_model, tiny_tokenizer, corpus: Path, tmp_path: Path
) -> None:
    from bitsandbytes.nn import Linear4bit

    videos = [str(corpus / "val" / "videos" / f"kvcap_demo_val_0000{i}.mp4") for i in (1, 2)]
    checkpoint = tmp_path / "checkpoint"
    saved = make_tiny_model("mlp_2l")
    saved.save_pretrained(checkpoint)
    tiny_processor(tiny_tokenizer, saved.config).save_pretrained(checkpoint)
    model, processor = load_model_and_processor(str(checkpoint), device="cpu", load_in_4bit=True)
    quantized = {name for name, module in model.named_modules() if isinstance(module, Linear4bit)}
    assert quantized and [name for name in quantized if ".language_model." not in f".{name}"] == []
    assert not isinstance(model.lm_head, Linear4bit)
    captions = generate_captions(model, processor, videos, max_new_tokens=12)
    assert len(captions) == 2 and all(isinstance(caption, str) for caption in captions)

    # A folder saved quantized loads quantized without the flag (moving it with .to() would fail).
    model.save_pretrained(tmp_path / "quantized")
    processor.save_pretrained(tmp_path / "quantized")
    reloaded, reloaded_processor = load_model_and_processor(str(tmp_path / "quantized"), device="cpu")
    assert {name for name, module in reloaded.named_modules() if isinstance(module, Linear4bit)} == quantized
    assert generate_captions(reloaded, reloaded_processor, videos, max_new_tokens=12) == captions


def test_generation_arguments_override_only_what_was_set():
    assert GenerationArguments().generate_kwargs() == {}
    chosen = GenerationArguments(max_new_tokens=32, repetition_penalty=1.0, do_sample=False)
    assert chosen.generate_kwargs() == {"max_new_tokens": 32, "repetition_penalty": 1.0, "do_sample": False}
    with pytest.raises(ValueError, match="batch_size"):
        GenerationArguments(batch_size=0)


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("float33")


def test_a_missing_local_folder_is_named_before_anything_loads(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model_and_processor(str(tmp_path / "no" / "such"))
