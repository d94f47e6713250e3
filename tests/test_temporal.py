"""Temporal encodings: every projector keeps its shape, reads frame order, keeps its seed keys without one, trains
and saves them; the spatio-temporal convolution is local; the real-size counts we document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from modeling_kvcap import PROJECTOR_TYPES, KVCapConfig, KVCapForConditionalGeneration, build_projector
from modeling_kvcap.configuration_kvcap import PER_PATCH_PROJECTORS, TEMPORAL_ENCODINGS
from modeling_kvcap.temporal import build_temporal_encoding

from .conftest import REPO_ROOT, random_clips, run_argv, tiny_kvcap_config, video_prompt_batch

ENCODINGS = [encoding for encoding in TEMPORAL_ENCODINGS if encoding != "none"]

# Measured at real size (CLIP-ViT-L/14-336, 8 frames of 24 × 24 patches) by the test below.
REAL_SIZE_PARAMETERS = {
    "frame_embedding": 8_192,
    "trajectory_embedding": 10_240,
    "spatiotemporal_conv": 1_080_320,
    "motion_conv": 4_312_064,
    "spacetime_attention": 4_798_464,
}


def _randomise(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-zero values, so that learned embeddings and filters take part."""
    torch.manual_seed(seed)
    for param in module.parameters():
        torch.nn.init.normal_(param, std=std)
    return module


def _features(config: KVCapConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(
        batch, config.num_frames, config.num_patches, config.vision_config.hidden_size, generator=generator
    )


@pytest.mark.parametrize("temporal_encoding", TEMPORAL_ENCODINGS)
@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_output_shape_is_unchanged_by_the_encoding(tiny_tokenizer, projector_type: str, temporal_encoding: str):
    config = tiny_kvcap_config(tiny_tokenizer, projector_type, temporal_encoding=temporal_encoding)
    projector = _randomise(build_projector(config))
    output = projector(_features(config, batch=3))
    assert output.shape == (3, config.num_video_tokens, config.text_config.hidden_size)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_without_an_encoding_the_projector_keeps_the_seed_state_dict(tiny_tokenizer, projector_type: str):
    """`none` adds no module and no keys, so checkpoints saved before temporal encodings load unchanged."""
    plain = build_projector(tiny_kvcap_config(tiny_tokenizer, projector_type))
    assert plain.temporal_encoding is None
    assert not any("temporal" in name for name, _ in plain.named_modules())
    plain_keys = set(plain.state_dict())
    assert not any("temporal" in key for key in plain_keys)
    if projector_type == "linear":
        assert plain_keys == {"linear.weight", "linear.bias"}
    if projector_type == "mlp_2l":
        assert plain_keys == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    for encoding in ENCODINGS:
        encoded = build_projector(tiny_kvcap_config(tiny_tokenizer, projector_type, temporal_encoding=encoding))
        keys = set(encoded.state_dict())
        temporal = {key for key in keys if key.startswith("temporal_encoding.")}
        assert temporal, f"{encoding} adds parameters"
        assert keys - temporal == plain_keys
        # A seed state dict loads into the encoded projector with exactly the temporal keys missing.
        result = encoded.load_state_dict(plain.state_dict(), strict=False)
        assert set(result.missing_keys) == temporal and not result.unexpected_keys


def _frame_order_gap(projector: torch.nn.Module, config: KVCapConfig) -> float:
    """How far the output for reversed frames is from the output with its frames reversed (0: a permutation)."""
    features = _features(config)
    batch, frames, patches = features.shape[:3]
    with torch.no_grad():
        forward = projector(features).view(batch, frames, patches, -1).flip(1).flatten(1, 2)
        reversed_ = projector(features.flip(1))
    return (reversed_ - forward).abs().max().item()


@pytest.mark.parametrize("temporal_encoding", TEMPORAL_ENCODINGS)
@pytest.mark.parametrize("projector_type", PER_PATCH_PROJECTORS)
def test_per_patch_projectors_see_frame_order_only_with_an_encoding(
    tiny_tokenizer, projector_type: str, temporal_encoding: str
):
    """Reversing the frames does more than permute the tokens once time is encoded; without, it only permutes."""
    config = tiny_kvcap_config(tiny_tokenizer, projector_type, temporal_encoding=temporal_encoding)
    gap = _frame_order_gap(_randomise(build_projector(config)), config)
    if temporal_encoding == "none":
        assert gap < 1e-5
    else:
        assert gap > 1e-2, f"{temporal_encoding}: reversing the frames only permuted the tokens (gap {gap})"


def _patch(config: KVCapConfig, frame: int, row: int, column: int) -> tuple[int, int]:
    return frame, row * config.patch_grid + column


@pytest.mark.parametrize(
    ("target", "perturbed", "changes"),
    [
        ((3, 1, 1), (4, 1, 2), True),  # the next frame, the patch to the right
        ((3, 1, 1), (2, 2, 0), True),  # the previous frame, diagonally below left
        ((3, 1, 1), (3, 1, 1), True),  # the patch itself
        ((3, 1, 1), (6, 3, 3), False),  # far in time and space
        ((3, 1, 1), (1, 1, 1), False),  # same place, two frames earlier
        ((3, 1, 1), (4, 3, 1), False),  # the next frame, two rows down
        ((3, 1, 3), (4, 2, 0), False),  # next in patch order, but the other end of the next row
    ],
)
def test_spatiotemporal_conv_mixes_neighbouring_patches_of_neighbouring_frames_only(
    tiny_tokenizer, target: tuple[int, int, int], perturbed: tuple[int, int, int], changes: bool
):
    """A 3 × 3 × 3 neighbourhood over (frames, rows, columns): through the per-patch `linear` projector, one output
    token follows the patches around it in the frames around it, and nothing further away."""
    config = tiny_kvcap_config(tiny_tokenizer, "linear", temporal_encoding="spatiotemporal_conv")
    assert (config.num_frames, config.patch_grid) == (8, 4)
    projector = _randomise(build_projector(config))
    features = _features(config, batch=1)
    changed = features.clone()
    # Random, not a constant shift, which the encoding's LayerNorm would remove.
    changed[(0, *_patch(config, *perturbed))] += torch.randn(config.vision_config.hidden_size)
    frame, patch = _patch(config, *target)
    with torch.no_grad():
        before = projector(features).view(1, config.num_frames, config.num_patches, -1)[0, frame, patch]
        after = projector(changed).view(1, config.num_frames, config.num_patches, -1)[0, frame, patch]
    if changes:
        assert (after - before).abs().max() > 1e-3
    else:
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def _real_size_counts() -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Per (projector, encoding): the whole projector's parameters and its temporal module's, on the meta device."""
    totals, temporal = {}, {}
    for projector_type in PROJECTOR_TYPES:
        for encoding in TEMPORAL_ENCODINGS:
            with torch.device("meta"):
                projector = build_projector(KVCapConfig(projector_type=projector_type, temporal_encoding=encoding))
            totals[projector_type, encoding] = sum(param.numel() for param in projector.parameters())
            module = projector.temporal_encoding
            temporal[projector_type, encoding] = 0 if module is None else sum(p.numel() for p in module.parameters())
    return totals, temporal


def test_real_size_parameter_counts():
    totals, temporal = _real_size_counts()
    for projector_type in PROJECTOR_TYPES:
        assert temporal[projector_type, "none"] == 0
        for encoding in ENCODINGS:
            assert temporal[projector_type, encoding] == REAL_SIZE_PARAMETERS[encoding], (projector_type, encoding)
            base = totals[projector_type, "none"]
            assert totals[projector_type, encoding] == base + REAL_SIZE_PARAMETERS[encoding], (projector_type, encoding)
    with torch.device("meta"):
        for encoding, count in REAL_SIZE_PARAMETERS.items():
            module = build_temporal_encoding(KVCapConfig(temporal_encoding=encoding))
            assert sum(param.numel() for param in module.parameters()) == count


def test_documented_parameter_counts_match_the_measured_ones():
    text = (REPO_ROOT / "modeling_kvcap" / "temporal.py").read_text(encoding="utf-8")
    from modeling_kvcap import temporal as temporal_module

    for encoding, count in REAL_SIZE_PARAMETERS.items():
        row = re.search(rf"^\s*{encoding}\s+([\d,]+)\s", text, flags=re.MULTILINE)
        assert row, f"temporal.py has no table row for {encoding}"
        assert int(row.group(1).replace(",", "")) == count, encoding
        assert f"{count:,} parameters" in temporal_module.TEMPORAL_ENCODING_CLASSES[encoding].__doc__


@pytest.mark.parametrize("temporal_encoding", ENCODINGS)
@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_gradients_reach_every_temporal_parameter(
    make_tiny_model, tiny_tokenizer, projector_type: str, temporal_encoding: str
):
    model = make_tiny_model(projector_type, temporal_encoding=temporal_encoding)
    assert model.config.temporal_encoding == temporal_encoding
    encoding = model.multi_modal_projector.temporal_encoding
    named = dict(encoding.named_parameters())
    assert named
    if temporal_encoding in ("frame_embedding", "trajectory_embedding"):
        for name in ("frame_embeddings", "row_direction", "column_direction"):
            if name in named:
                assert named[name].abs().sum() > 0, f"{name} is initialised, not left at zero"
    model.train()
    batch = video_prompt_batch(tiny_tokenizer, model.config, ["설명"] * 2, ["빨간색 원이 움직입니다."] * 2)
    clips = random_clips(model.config, 2)
    model(**batch, pixel_values_videos=clips).loss.backward()
    if "output_proj.weight" in named:
        # The output map starts at zero (the layer starts as the identity), so the first backward pass reaches only
        # it; one step moves it off zero, after which every filter learns.
        assert named["output_proj.weight"].grad.abs().sum() > 0, "no gradient reached output_proj.weight"
        torch.optim.SGD(model.multi_modal_projector.parameters(), lr=1.0).step()
        model.zero_grad()
        model(**batch, pixel_values_videos=clips).loss.backward()
    for name, param in named.items():
        assert param.requires_grad
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_an_unknown_encoding_is_rejected_naming_it(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"Unknown temporal_encoding 'optical_flow'.*none, frame_embedding"):
        tiny_kvcap_config(tiny_tokenizer, "linear", temporal_encoding="optical_flow")
    config = tiny_kvcap_config(tiny_tokenizer, "linear")
    config.temporal_encoding = "time_warp"  # bypasses the config check to reach the factory's own
    with pytest.raises(ValueError, match="Unknown temporal_encoding 'time_warp'"):
        build_temporal_encoding(config)
    with pytest.raises(ValueError, match="Unknown temporal_encoding 'time_warp'"):
        build_projector(config)


@pytest.mark.parametrize("temporal_encoding", ENCODINGS)
@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_save_pretrained_and_from_pretrained_keep_the_encoding_and_the_outputs(
    make_tiny_model, tiny_tokenizer, tmp_path: Path, projector_type: str, temporal_encoding: str
):
    model = make_tiny_model(projector_type, temporal_encoding=temporal_encoding).eval()
    _randomise(model.multi_modal_projector.temporal_encoding, std=0.2)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["temporal_encoding"] == temporal_encoding
    reloaded = KVCapForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.temporal_encoding == temporal_encoding
    expected, loaded = model.multi_modal_projector.state_dict(), reloaded.multi_modal_projector.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[key], loaded[key]) for key in expected)

    inputs = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요.", "자세히 설명해주세요."])
    inputs["pixel_values_videos"] = random_clips(model.config, 2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("projector_type", "temporal_encoding"), [("c_abstractor", "spatiotemporal_conv"), ("mlp_2l", "frame_embedding")]
)
def test_the_training_argument_reaches_the_model_and_the_exported_folder(
    tiny_backbones, tiny_tokenizer, tmp_path: Path, projector_type: str, temporal_encoding: str
):
    """`--temporal_encoding` → the built model's config → the merged final folder's config.json and weights."""
    from kvcap.training.arguments import parse_arguments
    from kvcap.training.export import export_merged_model, trained_projector
    from kvcap.training.run import build_model, build_processor

    argv = run_argv(
        tiny_backbones,
        tmp_path / "corpus",
        tmp_path / "run",
        projector_type=projector_type,
        temporal_encoding=temporal_encoding,
    )
    model_args, data_args, training_args = parse_arguments(argv)
    assert model_args.temporal_encoding == temporal_encoding
    model = build_model(model_args, training_args)
    config = model.get_base_model().config
    assert (config.projector_type, config.temporal_encoding) == (projector_type, temporal_encoding)
    projector = trained_projector(model)
    # Values as after training, which the export must carry over (the fresh rebuild would not have them).
    _randomise(projector.temporal_encoding, std=0.2)

    final = tmp_path / "run" / "final"
    export_merged_model(model, final, build_processor(model_args, data_args, config), dtype=torch.float32)
    saved = json.loads((final / "config.json").read_text(encoding="utf-8"))
    assert saved["temporal_encoding"] == temporal_encoding
    reloaded = AutoModel.from_pretrained(final).eval()
    assert reloaded.config.settings() == config.settings()
    features = _features(config)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.multi_modal_projector(features), projector.eval()(features))


def _trajectory_sum(encoding: torch.nn.Module, config: KVCapConfig, cells: list[tuple[int, int]]) -> torch.Tensor:
    """The encoding's output summed over one token per frame, at (row, column) `cells[t]`, on zero features."""
    outputs = encoding(torch.zeros(1, config.num_frames, config.num_patches, config.vision_config.hidden_size))[0]
    return sum(outputs[frame, row * config.patch_grid + column] for frame, (row, column) in enumerate(cells))


def test_trajectory_embedding_sums_an_objects_tokens_to_its_displacement(tiny_tokenizer):
    """Summed over the tokens an object covers, time × place points along its motion, and is zero at rest."""
    config = tiny_kvcap_config(tiny_tokenizer, "linear", temporal_encoding="trajectory_embedding")
    encoding = build_temporal_encoding(config)
    row_axis, column_axis = torch.eye(config.vision_config.hidden_size)[:2]
    with torch.no_grad():
        encoding.row_direction.copy_(row_axis)
        encoding.column_direction.copy_(column_axis)
    frames, last = config.num_frames, config.patch_grid - 1
    sweep = [round(t * last / (frames - 1)) for t in range(frames)]  # 0 → last across the frames
    left_to_right = _trajectory_sum(encoding, config, [(1, column) for column in sweep])
    right_to_left = _trajectory_sum(encoding, config, [(1, last - column) for column in sweep])
    top_to_bottom = _trajectory_sum(encoding, config, [(row, 2) for row in sweep])
    still = _trajectory_sum(encoding, config, [(2, 1)] * frames)
    assert left_to_right[1] > 1 and left_to_right[0].abs() < 1e-5
    torch.testing.assert_close(right_to_left, -left_to_right)
    assert top_to_bottom[0] > 1 and top_to_bottom[1].abs() < 1e-5
    torch.testing.assert_close(still, torch.zeros_like(still))


def test_spacetime_attention_lets_a_token_see_far_in_time_and_space(tiny_tokenizer):
    """Unlike the 3 × 3 × 3 convolutions, one token's output follows a patch in another frame and another corner."""
    config = tiny_kvcap_config(tiny_tokenizer, "linear", temporal_encoding="spacetime_attention")
    encoding = _randomise(build_temporal_encoding(config))
    features = _features(config, batch=1)
    changed = features.clone()
    changed[(0, *_patch(config, 7, 3, 3))] += torch.randn(config.vision_config.hidden_size)
    with torch.no_grad():
        before, after = (
            encoding(features)[(0, *_patch(config, 0, 0, 0))],
            encoding(changed)[(0, *_patch(config, 0, 0, 0))],
        )
    assert (after - before).abs().max() > 1e-3
