"""KVCapForConditionalGeneration: feature paths, placeholder merging, batched generation, the decoding policy
stored with the model, and input errors."""

import json
import shutil
import warnings

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
)

from modeling_kvcap import (
    DEFAULT_MAX_NEW_TOKENS,
    PROJECTOR_TYPES,
    KVCapForConditionalGeneration,
    kvcap_generation_config,
)

from .conftest import random_clips, tiny_kvcap_config, video_prompt_batch

CAPTIONS = ["맑은 낮, 빨간색 원이 왼쪽에서 오른쪽으로 이동합니다.", "밤의 시가지에 파란색 사각형이 멈춰 있습니다."]


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_loss_from_frames_equals_loss_from_cached_features(make_tiny_model, tiny_tokenizer, projector_type):
    model = make_tiny_model(projector_type).eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."] * 2, CAPTIONS, padding_side="right")
    clips = random_clips(model.config, 2)
    with torch.no_grad():
        from_frames = model(**batch, pixel_values_videos=clips)
        features = model.model.get_vision_tower_features(clips)
        from_features = model(**batch, video_features=features)
    assert features.shape == (2, 8, model.config.num_patches, model.config.vision_config.hidden_size)
    assert torch.isfinite(from_frames.loss)
    torch.testing.assert_close(from_frames.loss, from_features.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_frames.logits, from_features.logits, rtol=0, atol=1e-5)


def test_cached_features_are_the_chosen_layer_without_cls(make_tiny_model):
    model = make_tiny_model("linear")
    clips = random_clips(model.config, 1)
    with torch.no_grad():
        hidden_states = model.vision_tower(clips[0], output_hidden_states=True).hidden_states
    torch.testing.assert_close(model.model.get_vision_tower_features(clips)[0], hidden_states[-2][:, 1:])


def test_video_embeddings_land_exactly_on_the_placeholders(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("perceiver").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["짧게", "조금 더 길게 설명해주세요."])
    clips = random_clips(model.config, 2)
    captured = {}
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**batch, pixel_values_videos=clips)
        expected_video = model.get_video_features(pixel_values_videos=clips)
        text_embeds = model.get_input_embeddings()(batch["input_ids"])
    hook.remove()
    mask = batch["input_ids"] == model.config.video_token_id
    for row in range(2):
        torch.testing.assert_close(captured["embeds"][row][mask[row]], expected_video[row])
        torch.testing.assert_close(captured["embeds"][row][~mask[row]], text_embeds[row][~mask[row]])


@pytest.mark.parametrize("projector_type", ["mlp_2l", "c_abstractor"])
def test_batched_left_padded_greedy_generation_matches_one_at_a_time(make_tiny_model, tiny_tokenizer, projector_type):
    model = make_tiny_model(projector_type).eval()
    prompts = ["설명해주세요.", "이 영상을 자세히, 아주 자세히 설명해주세요."]
    clips = random_clips(model.config, 2, seed=3)
    batch = video_prompt_batch(tiny_tokenizer, model.config, prompts)
    assert (batch["attention_mask"][0] == 0).any(), "the shorter prompt must be left-padded"
    with torch.no_grad():
        batched = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=12, do_sample=False)
        batched_texts = tiny_tokenizer.batch_decode(batched[:, batch["input_ids"].shape[1] :])
        for index, prompt in enumerate(prompts):
            single = video_prompt_batch(tiny_tokenizer, model.config, [prompt])
            alone = model.generate(
                **single, pixel_values_videos=clips[index : index + 1], max_new_tokens=12, do_sample=False
            )
            assert tiny_tokenizer.decode(alone[0, single["input_ids"].shape[1] :]) == batched_texts[index]


def test_generation_encodes_the_video_once_at_prefill(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."] * 2)
    vision_calls, lm_calls = [], []
    model.vision_tower.register_forward_hook(lambda *args: vision_calls.append(1))
    model.language_model.register_forward_hook(lambda *args: lm_calls.append(1))
    with torch.no_grad():
        model.generate(**batch, pixel_values_videos=random_clips(model.config, 2), max_new_tokens=6, min_new_tokens=6)
    assert len(lm_calls) == 6
    assert len(vision_calls) == 1


def test_generation_from_cached_features_matches_frames(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("perceiver").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."] * 2)
    clips = random_clips(model.config, 2)
    with torch.no_grad():
        from_frames = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=8, do_sample=False)
        features = model.model.get_vision_tower_features(clips)
        from_features = model.generate(**batch, video_features=features, max_new_tokens=8, do_sample=False)
    assert torch.equal(from_frames, from_features)


def test_composed_model_freezes_the_vision_tower_and_keeps_it_in_eval(make_tiny_model):
    model = make_tiny_model("mlp_2l")
    assert not any(param.requires_grad for param in model.vision_tower.parameters())
    assert all(param.requires_grad for param in model.multi_modal_projector.parameters())
    model.train()
    assert model.training and model.multi_modal_projector.training
    assert not model.vision_tower.training
    assert next(model.multi_modal_projector.parameters()).dtype == torch.float32
    assert model.config.vision_model_name_or_path.endswith("clip-vision")
    assert model.config.text_model_name_or_path.endswith("qwen3")


def test_gradient_checkpointing_gives_the_same_gradients(make_tiny_model, tiny_tokenizer):
    batch = video_prompt_batch(tiny_tokenizer, make_tiny_model().config, ["설명"] * 2, CAPTIONS, "right")
    gradients = []
    for checkpointing in (False, True):
        model = make_tiny_model("mlp_2l", seed=1).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.language_model.gradient_checkpointing
        model(**batch, pixel_values_videos=random_clips(model.config, 2)).loss.backward()
        gradients.append(model.multi_modal_projector.linear_1.weight.grad.clone())
    torch.testing.assert_close(gradients[0], gradients[1])


def test_attention_defaults_to_sdpa(make_tiny_model):
    model = make_tiny_model("linear")
    assert model.config.text_config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_device_map_auto_loads_from_a_saved_folder(make_tiny_model, tmp_path, tiny_tokenizer):
    model = make_tiny_model("perceiver").eval()
    model.save_pretrained(tmp_path)
    loaded = KVCapForConditionalGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    assert {param.device.type for param in loaded.parameters()} == {"cpu"}
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    clips = random_clips(model.config, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batch, pixel_values_videos=clips).logits, model(**batch, pixel_values_videos=clips).logits
        )


def test_local_auto_classes_resolve_without_remote_code(make_tiny_model, tmp_path):
    make_tiny_model("linear").save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is KVCapForConditionalGeneration
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is KVCapForConditionalGeneration


# --- wrong input gets a clear error -------------------------------------------------------------------------


def test_both_pixel_values_and_features_is_an_error(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    clips = random_clips(model.config, 1)
    features = model.model.get_vision_tower_features(clips)
    with pytest.raises(ValueError, match="not both"):
        model(**batch, pixel_values_videos=clips, video_features=features)


def test_placeholders_without_any_video_is_an_error(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    with pytest.raises(ValueError, match=r"128 <\|video_pad\|> placeholder tokens but neither"):
        model(**batch)


def test_text_without_placeholders_runs_as_a_plain_language_model(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear")
    input_ids = torch.tensor([tiny_tokenizer("안녕하세요").input_ids])
    assert model(input_ids=input_ids).logits.shape[:2] == input_ids.shape


@pytest.mark.parametrize("frames", [4, 9])
def test_wrong_frame_count_is_an_error(make_tiny_model, tiny_tokenizer, frames):
    model = make_tiny_model("linear")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    clips = torch.randn(1, frames, 3, 48, 48)
    with pytest.raises(ValueError, match=f"has {frames} frames per clip but the model was built for num_frames=8"):
        model(**batch, pixel_values_videos=clips)
    features = torch.randn(1, frames, 16, 64)
    with pytest.raises(ValueError, match=f"{frames} frames, but the model was built for 8"):
        model(**batch, video_features=features)


def test_wrong_image_size_is_an_error(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    with pytest.raises(ValueError, match=r"must be \(batch, 8, 3, 48, 48\), got shape \(1, 8, 3, 40, 40\)"):
        model(**batch, pixel_values_videos=torch.randn(1, 8, 3, 40, 40))


def test_placeholder_and_feature_count_mismatch_states_both_numbers(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("perceiver")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"])
    input_ids = batch["input_ids"]
    first_placeholder = int((input_ids[0] == model.config.video_token_id).nonzero()[0])
    input_ids = torch.cat([input_ids[:, :first_placeholder], input_ids[:, first_placeholder + 1 :]], dim=1)
    with pytest.raises(ValueError, match=r"holds 15 <\|video_pad\|> placeholder tokens but the video gives 16"):
        model(input_ids=input_ids, pixel_values_videos=random_clips(model.config, 1))


def test_one_clip_for_a_two_prompt_batch_is_an_error(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear")
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명", "설명"])
    with pytest.raises(ValueError, match=r"holds 256 .* gives 128 features"):
        model(**batch, pixel_values_videos=random_clips(model.config, 1))


def test_generation_from_merged_inputs_embeds_matches_ids_and_frames(make_tiny_model, tiny_tokenizer):
    """The seed's path: embeddings merged by hand, then generate(inputs_embeds=...)."""
    model = make_tiny_model("c_abstractor").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."])
    clips = random_clips(model.config, 1)
    with torch.no_grad():
        from_ids = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=8, do_sample=False)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        mask = (batch["input_ids"] == model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, model.get_video_features(pixel_values_videos=clips))
        from_embeds = model.generate(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=8, do_sample=False
        )
    assert torch.equal(from_embeds, from_ids[:, batch["input_ids"].shape[1] :])


# --- the decoding policy stored with the model -------------------------------------------------------------


def _force_logits(model: KVCapForConditionalGeneration, values: dict[int, float]):
    """Hook `lm_head` so every logit is <= 0 except `values`: greedy picks then follow from the penalty alone."""

    def hook(module, args, output):
        output = output - output.amax(-1, keepdim=True)
        for token_id, value in values.items():
            output[..., token_id] = value
        return output

    return model.lm_head.register_forward_hook(hook)


def _tokens_outside(tokenizer, input_ids: torch.Tensor, count: int) -> list[int]:
    """The first `count` ordinary token ids that do not occur in `input_ids`."""
    taken = set(input_ids.flatten().tolist()) | set(tokenizer.all_special_ids)
    return [token_id for token_id in range(len(tokenizer)) if token_id not in taken][:count]


def _assert_kvcap_policy(
    generation_config: GenerationConfig, video_token_id: int, special_token_ids: tuple[int, ...] = ()
) -> None:
    assert generation_config.do_sample is False
    assert generation_config.num_beams == 1
    assert generation_config.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 768
    assert generation_config.repetition_penalty == 1.2
    eos = generation_config.eos_token_id
    ends = {eos} if isinstance(eos, int) else set(eos)
    assert generation_config.suppress_tokens == sorted(({video_token_id} | set(special_token_ids)) - ends)
    assert generation_config.temperature is None
    assert generation_config.top_p is None
    assert generation_config.top_k is None


def test_generation_config_is_kvcaps_policy_and_survives_save_and_load(tiny_tokenizer, tmp_path):
    config = tiny_kvcap_config(tiny_tokenizer, "linear")
    model = KVCapForConditionalGeneration(config)
    _assert_kvcap_policy(model.generation_config, config.video_token_id)
    assert model.generation_config.eos_token_id == config.text_config.eos_token_id
    assert model.generation_config.pad_token_id == config.text_config.pad_token_id
    assert model.generation_config.bos_token_id == config.text_config.bos_token_id
    # strict validation raises on any "flag set but unused" issue, e.g. a temperature with do_sample=False.
    model.generation_config.validate(strict=True)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["do_sample"] is False
    assert saved["num_beams"] == 1
    assert saved["max_new_tokens"] == 768
    assert saved["repetition_penalty"] == 1.2
    assert saved["suppress_tokens"] == [config.video_token_id]
    assert saved["eos_token_id"] == config.text_config.eos_token_id
    assert not {"temperature", "top_p", "top_k"} & set(saved)
    loaded = KVCapForConditionalGeneration.from_pretrained(tmp_path)
    _assert_kvcap_policy(loaded.generation_config, config.video_token_id)
    assert loaded.generation_config.to_diff_dict() == model.generation_config.to_diff_dict()


def test_composed_model_gets_kvcaps_policy_not_the_language_models(tiny_backbones, tiny_tokenizer, tmp_path):
    # A tiny Qwen3 folder carrying Qwen3-8B's chat policy: sampling at temperature 0.6, two end tokens.
    im_end, endoftext = tiny_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    qwen3 = shutil.copytree(tiny_backbones["qwen3"], tmp_path / "qwen3")
    chat_policy = {
        "bos_token_id": endoftext,
        "eos_token_id": [im_end, endoftext],
        "pad_token_id": endoftext,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }
    (qwen3 / "generation_config.json").write_text(json.dumps(chat_policy))
    model = KVCapForConditionalGeneration.from_pretrained_backbones(tiny_backbones["clip-vision"], qwen3)
    specials = tuple(index for index, token in tiny_tokenizer.added_tokens_decoder.items() if token.special)
    _assert_kvcap_policy(model.generation_config, model.config.video_token_id, specials)
    # Every structural token is suppressed (a turn or a vision span cannot open inside a caption), but not the ends.
    suppressed = set(model.generation_config.suppress_tokens)
    structural = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    assert set(tiny_tokenizer.convert_tokens_to_ids(structural)) <= suppressed
    assert not {im_end, endoftext} & suppressed
    # The special tokens are the language model's own, both end tokens included.
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert model.generation_config.pad_token_id == endoftext
    assert model.generation_config.bos_token_id == endoftext
    model.generation_config.validate(strict=True)


def test_kvcap_generation_config_reads_special_tokens_from_the_text_config_without_a_base(tiny_tokenizer):
    config = tiny_kvcap_config(tiny_tokenizer)
    base = GenerationConfig(bos_token_id=1, eos_token_id=[2, 3], pad_token_id=4, do_sample=True, temperature=0.6)
    from_base = kvcap_generation_config(config, base)
    assert (from_base.bos_token_id, from_base.eos_token_id, from_base.pad_token_id) == (1, [2, 3], 4)
    _assert_kvcap_policy(from_base, config.video_token_id)
    alone = kvcap_generation_config(config)
    assert alone.eos_token_id == config.text_config.eos_token_id
    _assert_kvcap_policy(alone, config.video_token_id)


def test_plain_generate_penalises_generated_tokens_only(make_tiny_model, tiny_tokenizer, monkeypatch):
    """A word of the prompt; forced logits make it the top pick (10) over a token that is not in the prompt (9).

    Penalising generated tokens only: the prompt's word first, then the other one (10 / 1.2 < 9), then the prompt's
    word for good (8.33 > 9 / 1.2). A prompt-wide penalty hits the prompt's word at once, so the other comes first.
    """
    model = make_tiny_model("linear").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요.", "이 영상을 자세히 설명해주세요."])
    prompt_length = batch["input_ids"].shape[1]
    clips = random_clips(model.config, 2)
    rows = [set(row.tolist()) - set(tiny_tokenizer.all_special_ids) for row in batch["input_ids"]]
    in_prompt = min(rows[0] & rows[1])  # an ordinary token both prompts hold
    [not_in_prompt] = _tokens_outside(tiny_tokenizer, batch["input_ids"], 1)
    assert (batch["input_ids"] == in_prompt).any(dim=1).all()
    expected = torch.tensor([[in_prompt, not_in_prompt, in_prompt, in_prompt]] * 2)
    built = []
    get_logits_processor = model._get_logits_processor

    def recording_get_logits_processor(*args, **kwargs) -> LogitsProcessorList:
        built.append(get_logits_processor(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(model, "_get_logits_processor", recording_get_logits_processor)

    hook = _force_logits(model, {in_prompt: 10.0, not_in_prompt: 9.0})
    with torch.no_grad():
        kvcap = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=4)
        restricted = GenerationMixin.generate(
            model,
            **batch,
            pixel_values_videos=clips,
            max_new_tokens=4,
            repetition_penalty=1.0,
            logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2, prompt_length)]),
        )
        prompt_penalised = GenerationMixin.generate(
            model, **batch, pixel_values_videos=clips, max_new_tokens=4, repetition_penalty=1.2
        )
        embeds = model.get_input_embeddings()(batch["input_ids"])
        mask = (batch["input_ids"] == model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, model.get_video_features(pixel_values_videos=clips))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from_embeds = model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=4)
    hook.remove()

    assert torch.equal(kvcap[:, prompt_length:], expected)
    assert torch.equal(kvcap, restricted)
    assert torch.equal(
        prompt_penalised[:, prompt_length:], torch.tensor([[not_in_prompt, in_prompt, in_prompt, in_prompt]] * 2)
    )
    # From embeddings the returned ids are the new tokens only, and the penalty skips nothing.
    assert torch.equal(from_embeds, expected)
    assert not [warning for warning in caught if "repetition_penalty" in str(warning.message)]
    # Exactly one penalty processor, kvcap's: generate() built none of its own to merge or conflict with. Calls in
    # order: kvcap from ids, the restricted reference, the prompt-penalised one, kvcap from embeddings.
    penalties = [
        [(p.penalty, p.prompt_ignore_length) for p in processors if isinstance(p, RepetitionPenaltyLogitsProcessor)]
        for processors in built
    ]
    assert penalties[0] == penalties[1] == [(1.2, prompt_length)]
    assert penalties[3] == [(1.2, 0)]


def test_a_caption_ends_on_im_end_although_the_prompt_holds_it(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("linear").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."])
    clips = random_clips(model.config, 1)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    [other] = _tokens_outside(tiny_tokenizer, batch["input_ids"], 1)
    assert model.generation_config.eos_token_id == im_end
    assert (batch["input_ids"] == im_end).any()
    hook = _force_logits(model, {im_end: 10.0, other: 9.0})
    with torch.no_grad():
        kvcap = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=4)
        prompt_penalised = GenerationMixin.generate(
            model, **batch, pixel_values_videos=clips, max_new_tokens=4, repetition_penalty=1.2
        )
    hook.remove()
    prompt_length = batch["input_ids"].shape[1]
    assert kvcap[0, prompt_length:].tolist() == [im_end]
    # Penalised for its place in the prompt, <|im_end|> loses to the other token and the caption runs on.
    assert prompt_penalised[0, prompt_length].item() == other
    assert prompt_penalised.shape[1] > prompt_length + 1


def test_explicit_penalty_arguments_take_precedence(make_tiny_model, tiny_tokenizer):
    """Forced logits 10, 9, 8: the third greedy pick shows the penalty in force (1.0, 1.2 or 2.0)."""
    model = make_tiny_model("linear").eval()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요."])
    clips = random_clips(model.config, 1)
    prompt_length = batch["input_ids"].shape[1]
    first, second, third = _tokens_outside(tiny_tokenizer, batch["input_ids"], 3)
    hook = _force_logits(model, {first: 10.0, second: 9.0, third: 8.0})
    with torch.no_grad():
        default = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=3)
        no_penalty = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=3, repetition_penalty=1.0)
        from_config = model.generate(
            **batch,
            pixel_values_videos=clips,
            generation_config=GenerationConfig(max_new_tokens=3, repetition_penalty=1.0),
        )
        strong = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=3, repetition_penalty=2.0)
        own = model.generate(
            **batch,
            pixel_values_videos=clips,
            max_new_tokens=3,
            logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0, prompt_length)]),
        )
    hook.remove()
    # 1.2: 10 / 1.2 = 8.33 loses to 9, then beats 9 / 1.2 = 7.5 and 8.
    assert default[0, prompt_length:].tolist() == [first, second, first]
    assert no_penalty[0, prompt_length:].tolist() == [first] * 3
    assert torch.equal(from_config, no_penalty)
    # 2.0: 10 / 2 = 5 and 9 / 2 = 4.5 both lose to 8.
    assert strong[0, prompt_length:].tolist() == [first, second, third]
    # A caller's own penalty processor is used as given, not stacked on kvcap's.
    assert torch.equal(own, strong)


def test_the_video_token_is_never_generated(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("mlp_2l").eval()
    video_token_id = model.config.video_token_id
    hook = _force_logits(model, {video_token_id: 10.0})
    try:
        for prompts in (["설명해주세요.", "이 영상을 자세히 설명해주세요."], ["설명해주세요."]):
            batch = video_prompt_batch(tiny_tokenizer, model.config, prompts)
            clips = random_clips(model.config, len(prompts))
            with torch.no_grad():
                generated = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=5)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            assert new_tokens.shape[0] == len(prompts) and new_tokens.shape[1] >= 1
            assert not (new_tokens == video_token_id).any()
        # Without the suppression the forced placeholder is generated, and decoding goes on: the placeholder check
        # reads the prompt, not the tokens the model wrote.
        with torch.no_grad():
            unsuppressed = model.generate(**batch, pixel_values_videos=clips, max_new_tokens=5, suppress_tokens=None)
        assert (unsuppressed[:, batch["input_ids"].shape[1] :] == video_token_id).all()
    finally:
        hook.remove()


def test_structural_tokens_are_never_generated_by_a_composed_model(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("perceiver").eval()
    structural = tiny_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>", "<|image_pad|>"])
    hook = _force_logits(model, {structural[0]: 10.0, structural[1]: 9.5, structural[2]: 9.0})
    try:
        for prompts in (["설명해주세요.", "이 영상을 자세히 설명해주세요."], ["설명해주세요."]):
            batch = video_prompt_batch(tiny_tokenizer, model.config, prompts)
            with torch.no_grad():
                generated = model.generate(
                    **batch, pixel_values_videos=random_clips(model.config, len(prompts)), max_new_tokens=4
                )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            assert new_tokens.shape == (len(prompts), 4)
            assert not torch.isin(new_tokens, torch.tensor(structural)).any()
    finally:
        hook.remove()


@pytest.mark.parametrize("num_items_in_batch", [None, 23])
def test_logits_only_where_labels_follow_give_the_same_loss_and_gradients(
    make_tiny_model, tiny_tokenizer, num_items_in_batch
):
    model = make_tiny_model("mlp_2l").train()
    inputs = video_prompt_batch(
        tiny_tokenizer,
        model.config,
        ["설명해주세요.", "자세히 설명해주세요."],
        captions=["빨간색 원이 보입니다.", "파란색 사각형이 위에서 아래로 천천히 움직입니다."],
        padding_side="right",
    )
    inputs["pixel_values_videos"] = random_clips(model.config, 2)
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    supervised = int((inputs["labels"][:, 1:] != -100).sum())

    results = []
    for full in (True, False):
        model.zero_grad()
        output = model(**inputs, return_full_logits=full, **extra)
        output.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((output, grads))
    (full_output, full_grads), (output, grads) = results
    assert full_output.logits.shape[:2] == inputs["input_ids"].shape
    assert output.logits.shape == (supervised, model.config.text_config.vocab_size)  # the head ran only there
    torch.testing.assert_close(output.loss, full_output.loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-5, atol=1e-7, msg=name)
