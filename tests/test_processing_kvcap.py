"""KVCapProcessor: CLIP preprocessing of frames, chat prompts with expanded placeholders, label masks, decoding."""

import json

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil

from kvcap.demo.video_clips import make_clip
from processing.processing_kvcap import DEFAULT_PROMPT, KVCapProcessor
from processing.video_io import read_video_frames

from .conftest import qwen3_processor, run_in_clean_interpreter, tiny_kvcap_config, tiny_processor

CAPTIONS = ["맑은 낮, 빨간색 원이 왼쪽에서 오른쪽으로 이동합니다.", "밤의 시가지에 파란색 사각형이 멈춰 있습니다."]


@pytest.fixture(params=["tiny", "qwen3"])
def processor(request, tiny_tokenizer) -> KVCapProcessor:
    """The tiny tokenizer's processor, and the real presets' one: Qwen3's tokenizer, 4,608 video tokens, 336 px."""
    if request.param == "qwen3":
        return qwen3_processor(request.getfixturevalue("qwen3_tokenizer"))
    return tiny_processor(tiny_tokenizer, tiny_kvcap_config(tiny_tokenizer, "perceiver"))


@pytest.fixture(scope="module")
def clip_paths(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("clips")
    return [
        make_clip(folder / "wide.mp4", width=96, height=64, num_frames=20, fps=10),
        make_clip(folder / "tall.mp4", width=48, height=80, num_frames=12, fps=10, gop=4),
    ]


def test_labels_supervise_exactly_the_caption_and_end_of_turn(processor):
    batch = processor(text=["설명", "이 영상을 자세히 설명해주세요."], captions=CAPTIONS)
    for row, caption in enumerate(CAPTIONS):
        supervised = batch["labels"][row][batch["labels"][row] != -100]
        assert processor.tokenizer.decode(supervised) == caption + "<|im_end|>"
        # Labels equal the inputs wherever they are supervised: the model shifts them itself.
        mask = batch["labels"][row] != -100
        assert torch.equal(batch["input_ids"][row][mask], supervised)


def test_video_tokens_prompt_and_padding_are_never_supervised(processor):
    batch = processor(text=["짧게", "아주 길게 자세히 설명해주세요."], captions=["짧은 캡션", CAPTIONS[0]])
    labels, input_ids = batch["labels"], batch["input_ids"]
    assert (labels[input_ids == processor.video_token_id] == -100).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()
    assert ((input_ids == processor.video_token_id).sum(dim=1) == processor.num_video_tokens).all()


def test_training_pads_right_and_generation_pads_left(processor):
    training = processor(text=["짧게", "아주 길게 자세히 설명해주세요."], captions=CAPTIONS)
    assert training["attention_mask"][:, 0].all() and not training["attention_mask"][:, -1].all()
    generation = processor(text=["짧게", "아주 길게 자세히 설명해주세요."])
    assert "labels" not in generation
    assert generation["attention_mask"][:, -1].all() and not generation["attention_mask"][:, 0].all()


def test_prompt_is_qwen3_chat_with_thinking_off_and_one_expanded_placeholder(processor):
    ids = processor.prompt_ids(None)
    text = processor.tokenizer.decode(ids)
    expected = (
        "<|im_start|>user\n<|vision_start|>"
        + "<|video_pad|>" * processor.num_video_tokens
        + f"<|vision_end|>{DEFAULT_PROMPT}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert text == expected


def test_chat_messages_are_accepted(processor):
    messages = [
        {"role": "system", "content": "당신은 영상 해설가입니다."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "무엇이 보이나요?"}]},
    ]
    batch = processor(text=[messages], captions=["도형이 보입니다."])
    decoded = processor.tokenizer.decode(batch["input_ids"][0])
    assert decoded.startswith("<|im_start|>system\n당신은 영상 해설가입니다.<|im_end|>\n<|im_start|>user\n")
    assert "무엇이 보이나요?" in decoded


def test_frames_are_normalised_exactly_as_clip_does(processor, clip_paths):
    frames = read_video_frames(clip_paths[0], num_frames=8)  # 64 x 96: resize and crop needed
    pixel_values = processor(videos=[frames])["pixel_values_videos"]
    size = processor.image_size
    reference = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})(
        images=list(frames), return_tensors="np"
    )["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, size, size)
    np.testing.assert_array_equal(pixel_values[0].numpy(), reference)


def test_presized_frames_take_the_vectorised_path_with_the_same_result(processor):
    side = processor.image_size
    frames = np.random.default_rng(0).integers(0, 256, size=(8, side, side, 3), dtype=np.uint8)
    fast = processor(videos=frames)["pixel_values_videos"][0].numpy()
    reference = processor.image_processor(images=list(frames), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-5)


def test_paths_are_decoded_resized_in_the_decoder_and_normalised(processor, clip_paths):
    batch = processor(videos=clip_paths)
    assert batch["pixel_values_videos"].shape == (2, 8, 3, processor.image_size, processor.image_size)
    for index, path in enumerate(clip_paths):
        frames = read_video_frames(path, num_frames=8, size=processor.image_size)
        torch.testing.assert_close(batch["pixel_values_videos"][index], processor.preprocess_frames(frames))


def test_max_length_cuts_captions_only(processor):
    prompt_length = len(processor.prompt_ids(None))
    batch = processor(captions=[CAPTIONS[0]], max_length=prompt_length + 3)
    assert batch["input_ids"].shape[1] == prompt_length + 3
    assert (batch["labels"][0] != -100).sum() == 3
    with pytest.raises(ValueError, match="leaves no room for a caption"):
        processor(captions=[CAPTIONS[0]], max_length=prompt_length)


def test_batch_decode_returns_only_the_caption(processor):
    prompt = processor(text=["설명"])["input_ids"]
    answer = processor.tokenizer("<think>\n\n</think>\n\n" + CAPTIONS[0], add_special_tokens=False).input_ids
    generated = torch.cat([prompt, torch.tensor([[*answer, processor.end_of_turn_id]])], dim=1)
    assert processor.batch_decode(generated, prompt_length=prompt.shape[1]) == [CAPTIONS[0]]


@pytest.mark.parametrize(
    ("videos", "message"),
    [
        (np.zeros((5, 48, 48, 3), dtype=np.uint8), "has 5 frames but this processor samples num_frames=8"),
        (np.zeros((8, 48, 48, 3), dtype=np.float32), "must be uint8"),
        (np.zeros((8, 48, 48), dtype=np.uint8), r"must be \(num_frames, H, W, 3\)"),
    ],
)
def test_bad_frames_are_clear_errors(processor, videos, message):
    with pytest.raises(ValueError, match=message):
        processor(videos=[videos])


def test_prompt_with_two_videos_is_an_error(processor):
    two_videos = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(ValueError, match="exactly one video, found 2"):
        processor(text=[two_videos])


def test_processor_to_model_end_to_end(make_tiny_model, tiny_tokenizer, clip_paths):
    model = make_tiny_model("c_abstractor").eval()
    processor = tiny_processor(tiny_tokenizer, model.config)
    training = processor(videos=clip_paths, captions=CAPTIONS)
    with torch.no_grad():
        assert torch.isfinite(model(**training).loss)
        inputs = processor(videos=clip_paths)
        generated = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    captions = processor.batch_decode(generated, prompt_length=inputs["input_ids"].shape[1])
    assert len(captions) == 2 and all(isinstance(text, str) and text for text in captions)


CLEAN_PROCESSOR = r"""
import json, sys
folder, video, output = sys.argv[1:]
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
batch = processor(videos=[video], captions=["빨간색 원"])
with open(output, "w") as handle:
    json.dump({key: value.tolist() for key, value in batch.items()} | {"class": type(processor).__module__}, handle)
"""


def test_auto_processor_round_trip_in_a_clean_interpreter(processor, clip_paths, tmp_path):
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    saved = {path.name for path in folder.iterdir()}
    assert {"processor_config.json", "processing_kvcap.py", "video_io.py", "chat_template.jinja"} <= saved
    assert {"tokenizer.json", "tokenizer_config.json"} <= saved
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_kvcap.KVCapProcessor"
    assert config["num_video_tokens"] == processor.num_video_tokens

    output = tmp_path / "batch.json"
    run_in_clean_interpreter(CLEAN_PROCESSOR, str(folder), str(clip_paths[1]), str(output), workdir=tmp_path)
    loaded = json.loads(output.read_text())
    assert loaded.pop("class").startswith("transformers_modules.")
    expected = processor(videos=[clip_paths[1]], captions=["빨간색 원"])
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(torch.tensor(loaded[key], dtype=value.dtype), value, rtol=0, atol=0)


def test_a_prompt_from_apply_chat_template_is_used_as_it_is(processor, clip_paths):
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": DEFAULT_PROMPT}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert isinstance(prompt, str) and prompt.count("<|video_pad|>") == 1 and prompt.startswith("<|im_start|>user")
    templated = processor(text=prompt, videos=[clip_paths[0]])
    plain = processor(videos=[clip_paths[0]])
    assert torch.equal(templated["input_ids"], plain["input_ids"])
    torch.testing.assert_close(templated["pixel_values_videos"], plain["pixel_values_videos"])


def test_apply_chat_template_tokenizes_a_conversation_that_names_its_video(processor, clip_paths):
    conversations = [
        [{"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "설명"}]}]
        for path in clip_paths
    ]
    inputs = processor.apply_chat_template(conversations[0], tokenize=True, return_dict=True)
    expected = processor(text="설명", videos=[clip_paths[0]])
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values_videos"}
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    torch.testing.assert_close(inputs["pixel_values_videos"], expected["pixel_values_videos"])
    batch = processor.apply_chat_template(conversations, tokenize=True, return_dict=True)
    assert batch["pixel_values_videos"].shape[0] == 2
    assert torch.equal(processor.apply_chat_template(conversations[1], tokenize=True), batch["input_ids"][1:])


def test_text_is_the_first_positional_argument(processor, clip_paths):
    positional = processor("이 영상을 설명해주세요.", videos=[clip_paths[1]])
    keyword = processor(text="이 영상을 설명해주세요.", videos=[clip_paths[1]])
    assert torch.equal(positional["input_ids"], keyword["input_ids"])


def test_the_usual_trimming_and_decoding_give_the_caption(processor):
    inputs = processor(text=["설명"])
    caption_ids = processor.tokenizer(CAPTIONS[0], add_special_tokens=False)["input_ids"]
    generated = torch.cat([inputs["input_ids"], torch.tensor([[*caption_ids, processor.end_of_turn_id]])], dim=1)
    trimmed = generated[:, inputs["input_ids"].shape[1] :]
    assert processor.batch_decode(trimmed, skip_special_tokens=True) == [CAPTIONS[0]]
    assert processor.post_process_image_text_to_text(trimmed) == [CAPTIONS[0]]
    assert processor.post_process_video_text_to_text(generated, prompt_length=inputs["input_ids"].shape[1]) == [
        CAPTIONS[0]
    ]


def test_the_prompt_is_the_one_qwen3s_own_chat_template_renders_with_the_video_added(qwen3_tokenizer):
    processor = qwen3_processor(qwen3_tokenizer)
    own = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": DEFAULT_PROMPT}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    video_part = "<|vision_start|><|video_pad|><|vision_end|>"
    assert processor.render_prompt() == own.replace("user\n", "user\n" + video_part, 1)
    ids = processor.prompt_ids()
    start = ids.index(qwen3_tokenizer.convert_tokens_to_ids("<|vision_start|>"))
    # One run of exactly 4,608 placeholders, framed by the vision tokens, as the model's scatter expects.
    assert ids[start + 1 : start + 1 + 4608] == [processor.video_token_id] * 4608
    assert ids[start + 1 + 4608] == qwen3_tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert ids.count(processor.video_token_id) == 4608 and len(ids) == 4608 + 24


@pytest.mark.parametrize(
    ("limit", "supervised", "ends"), [(None, 449 + 1, True), (768, 449 + 1, True), (100, 100, False)]
)
def test_an_aihub_length_caption_is_cut_only_past_max_caption_tokens(qwen3_tokenizer, caplog, limit, supervised, ends):
    from kvcap.demo.qwen3_tokenizer import aihub_like_caption

    processor = qwen3_processor(qwen3_tokenizer, num_video_tokens=64)
    caption = aihub_like_caption(0)
    assert len(qwen3_tokenizer(caption, add_special_tokens=False)["input_ids"]) == 449
    with caplog.at_level("WARNING", logger="processing.processing_kvcap"):
        batch = processor(captions=[caption, "짧은 캡션"], max_caption_tokens=limit)
    labels = batch["labels"][0][batch["labels"][0] != -100]
    assert len(labels) == supervised
    # A cut caption gets no end-of-turn token: the model must not learn to stop mid-sentence.
    assert (labels[-1].item() == processor.end_of_turn_id) == ends
    assert processor.tokenizer.decode(labels, skip_special_tokens=True) in caption
    assert ("1 of 2 captions were cut to fit max_caption_tokens=100" in caplog.text) == (not ends)
