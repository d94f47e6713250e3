"""KVCapForConditionalGeneration: feature paths, placeholder merging, batched generation and input errors."""

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText

from modeling_kvcap import KVCapForConditionalGeneration

from .conftest import PROJECTOR_TYPES, random_clips, video_prompt_batch

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
