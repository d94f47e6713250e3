"""KVCapConfig: the real-size defaults, the video-token count and the errors for bad settings."""

import pytest
from transformers import AutoConfig, CLIPVisionConfig, Qwen3Config

from modeling_kvcap import PROJECTOR_TYPES, KVCapConfig
from modeling_kvcap.configuration_kvcap import QWEN3_VIDEO_PAD_TOKEN_ID, TEMPORAL_ENCODINGS

from .conftest import tiny_kvcap_config


def test_default_config_describes_the_real_system_without_downloading():
    config = KVCapConfig()
    assert isinstance(config.vision_config, CLIPVisionConfig)
    assert isinstance(config.text_config, Qwen3Config)
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (
        4096,
        36,
        8,
        151936,
    )
    assert (config.projector_type, config.num_frames, config.vision_feature_layer) == ("mlp_2l", 8, -2)
    assert config.video_token_id == QWEN3_VIDEO_PAD_TOKEN_ID
    assert config.vision_model_name_or_path == "openai/clip-vit-large-patch14-336"
    assert config.text_model_name_or_path == "Qwen/Qwen3-8B"
    assert config.num_patches == 576


@pytest.mark.parametrize(
    ("projector_type", "expected"),
    [("linear", 4608), ("mlp_2l", 4608), ("perceiver", 64), ("c_abstractor", 64)],
)
def test_num_video_tokens_at_real_size(projector_type, expected):
    assert KVCapConfig(projector_type=projector_type).num_video_tokens == expected


def test_num_video_tokens_follows_frames_grid_and_queries(tiny_tokenizer):
    assert tiny_kvcap_config(tiny_tokenizer, "linear", num_frames=4).num_video_tokens == 4 * 16
    assert tiny_kvcap_config(tiny_tokenizer, "perceiver", num_query_tokens=5).num_video_tokens == 5


def test_c_abstractor_pools_time_and_space():
    assert KVCapConfig(projector_type="c_abstractor").abstractor_pool_shape == (4, 4)
    assert KVCapConfig(projector_type="c_abstractor", num_query_tokens=144).abstractor_pool_shape == (4, 6)


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_round_trip_through_dict_and_auto_config(tmp_path, tiny_tokenizer, projector_type):
    config = tiny_kvcap_config(tiny_tokenizer, projector_type)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, KVCapConfig)
    saved, original = loaded.to_dict(), config.to_dict()
    saved.pop("_name_or_path"), original.pop("_name_or_path")
    assert saved == original
    assert loaded.num_video_tokens == config.num_video_tokens


def test_temporal_encoding_defaults_to_none():
    assert TEMPORAL_ENCODINGS == (
        "none",
        "frame_embedding",
        "trajectory_embedding",
        "spatiotemporal_conv",
        "motion_conv",
        "spacetime_attention",
    )
    assert KVCapConfig().temporal_encoding == "none"
    assert KVCapConfig().settings()["temporal_encoding"] == "none"


@pytest.mark.parametrize("temporal_encoding", TEMPORAL_ENCODINGS)
def test_temporal_encoding_round_trips_through_dict_and_settings(tmp_path, tiny_tokenizer, temporal_encoding):
    config = tiny_kvcap_config(tiny_tokenizer, "perceiver", temporal_encoding=temporal_encoding)
    assert config.to_dict()["temporal_encoding"] == temporal_encoding
    assert KVCapConfig.from_dict(config.to_dict()).temporal_encoding == temporal_encoding
    assert config.settings()["temporal_encoding"] == temporal_encoding
    # Rebuilding from the same backbones and the settings (as export does) keeps it.
    rebuilt = KVCapConfig(vision_config=config.vision_config, text_config=config.text_config, **config.settings())
    assert rebuilt.settings() == config.settings()
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).temporal_encoding == temporal_encoding


def test_unknown_temporal_encoding_is_rejected():
    with pytest.raises(
        ValueError, match=r"Unknown temporal_encoding 'optical_flow'.*none, frame_embedding, trajectory_embedding"
    ):
        KVCapConfig(temporal_encoding="optical_flow")


def test_unknown_projector_type_is_rejected():
    with pytest.raises(ValueError, match=r"Unknown projector_type 'qformer'.*linear, mlp_2l, perceiver, c_abstractor"):
        KVCapConfig(projector_type="qformer")


def test_impossible_c_abstractor_layout_is_rejected():
    with pytest.raises(ValueError, match="num_query_tokens=63"):
        KVCapConfig(projector_type="c_abstractor", num_query_tokens=63)


def test_vision_feature_layer_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="vision_feature_layer=-30"):
        KVCapConfig(vision_feature_layer=-30)


def test_zero_frames_is_rejected():
    with pytest.raises(ValueError, match="num_frames"):
        KVCapConfig(num_frames=0)
