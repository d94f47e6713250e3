"""The four projectors: shapes, token counts, gradients, and the real-size parameter counts we document."""

import re
from pathlib import Path

import pytest
import torch

from modeling_kvcap import PROJECTOR_TYPES, KVCapConfig, build_projector
from modeling_kvcap import projectors as projectors_module

from .conftest import random_clips, tiny_kvcap_config, video_prompt_batch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Measured at real size (CLIP-ViT-L/14-336 → Qwen3-8B, 8 frames, 64 query tokens) by the test below.
REAL_SIZE_PARAMETERS = {
    "linear": 4_198_400,
    "mlp_2l": 20_979_712,
    "perceiver": 67_225_600,
    "c_abstractor": 37_406_208,
}


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_output_shape_and_token_count(tiny_tokenizer, projector_type):
    config = tiny_kvcap_config(tiny_tokenizer, projector_type)
    projector = build_projector(config)
    features = torch.randn(3, config.num_frames, config.num_patches, config.vision_config.hidden_size)
    output = projector(features)
    assert output.shape == (3, config.num_video_tokens, config.text_config.hidden_size)
    expected_tokens = 8 * 16 if projector_type in ("linear", "mlp_2l") else 16
    assert config.num_video_tokens == expected_tokens


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_gradients_reach_the_projector_and_not_the_frozen_vision_tower(make_tiny_model, tiny_tokenizer, projector_type):
    model = make_tiny_model(projector_type)
    model.train()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"] * 2, ["빨간색 원이 움직입니다."] * 2)
    loss = model(**batch, pixel_values_videos=random_clips(model.config, 2)).loss
    loss.backward()
    for name, param in model.multi_modal_projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reached {name}"
    assert all(not param.requires_grad and param.grad is None for param in model.vision_tower.parameters())
    assert not model.vision_tower.training, "a frozen vision tower stays in eval mode"


@pytest.mark.parametrize("projector_type", ["perceiver", "c_abstractor"])
def test_compressing_projectors_see_frame_order(tiny_tokenizer, projector_type):
    """Reversing the frames changes the output: motion direction must be recoverable from the tokens."""
    torch.manual_seed(0)
    config = tiny_kvcap_config(tiny_tokenizer, projector_type)
    projector = build_projector(config)
    # Give the learned embeddings non-zero values, as after initialisation.
    for param in projector.parameters():
        torch.nn.init.normal_(param, std=0.1)
    features = torch.randn(1, config.num_frames, config.num_patches, config.vision_config.hidden_size)
    assert not torch.allclose(projector(features), projector(features.flip(1)), atol=1e-5)


def test_unknown_projector_type_raises(tiny_tokenizer):
    config = tiny_kvcap_config(tiny_tokenizer, "linear")
    config.projector_type = "resampler"  # bypasses the config check to reach the factory's own
    with pytest.raises(ValueError, match="Unknown projector_type 'resampler'"):
        build_projector(config)


def _real_size_counts() -> dict[str, int]:
    counts = {}
    for projector_type in PROJECTOR_TYPES:
        with torch.device("meta"):
            projector = build_projector(KVCapConfig(projector_type=projector_type))
        counts[projector_type] = sum(param.numel() for param in projector.parameters())
    return counts


def test_real_size_parameter_counts():
    assert _real_size_counts() == REAL_SIZE_PARAMETERS


@pytest.mark.parametrize("document", ["modeling_kvcap/projectors.py", "README.md"])
def test_documented_parameter_counts_match_the_measured_ones(document):
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    for projector_type, count in REAL_SIZE_PARAMETERS.items():
        row = re.search(rf"^\|?\s*`?{projector_type}`?\s*\|?\s+([\d,]+)", text, flags=re.MULTILINE)
        assert row, f"{document} has no table row for {projector_type}"
        assert int(row.group(1).replace(",", "")) == count, f"{document}: {projector_type}"


def test_real_size_token_counts_in_docstrings():
    for projector_type, cls in projectors_module.PROJECTOR_CLASSES.items():
        tokens = KVCapConfig(projector_type=projector_type).num_video_tokens
        assert f"{REAL_SIZE_PARAMETERS[projector_type]:,} parameters" in cls.__doc__
        assert f"({tokens:,}) video tokens" in cls.__doc__
