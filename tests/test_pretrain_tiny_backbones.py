"""The demo's short pretraining of the tiny backbones lowers their losses (a few steps here; the demo runs more)."""

import os

import numpy as np
import torch
from transformers import CLIPVisionModel, Qwen3ForCausalLM

from kvcap.demo.corpus import COLORS, SHAPES, TIMES_OF_DAY, object_maps, sample_training_scenes
from kvcap.demo.pretrain import (
    IGNORE,
    REPAINT_MIN_DISTANCE,
    patch_targets,
    pretrain_language_model,
    pretrain_vision_tower,
    repaint_objects,
    visible_facts,
)
from kvcap.demo.tiny_backbones import tiny_text_config, tiny_vision_config


def test_vision_pretraining_lowers_its_loss_and_changes_the_tower(tiny_tokenizer):
    torch.manual_seed(0)
    vision = CLIPVisionModel(tiny_vision_config())
    before = {name: param.detach().clone() for name, param in vision.named_parameters()}
    losses = pretrain_vision_tower(vision, tiny_tokenizer, steps=30, batch_size=32, num_scenes=200)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert any(not torch.equal(param, before[name]) for name, param in vision.named_parameters())
    assert not vision.training


def test_language_pretraining_lowers_its_loss_and_shows_its_progress(tiny_tokenizer, capsys):
    torch.manual_seed(0)
    language_model = Qwen3ForCausalLM(tiny_text_config(len(tiny_tokenizer), tiny_tokenizer))
    losses = pretrain_language_model(language_model, tiny_tokenizer, steps=30, batch_size=16, num_captions=300)
    # Paragraph captions: 30 steps take the loss from 6.9 to 4.3 (measured 0.62 of the start).
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    # Minutes of work on a free CPU and far more on a busy one: a bar with its rate shows it is moving.
    shown = capsys.readouterr().err
    assert "kvcap demo: pretraining the language model" in shown and "30/30" in shown and "step/s" in shown


def test_language_pretraining_batches_are_cut_to_their_longest_text(tiny_tokenizer):
    """Padding to the corpus' longest caption would spend most of each step on padding."""
    torch.manual_seed(0)
    language_model = Qwen3ForCausalLM(tiny_text_config(len(tiny_tokenizer), tiny_tokenizer))
    masks = []
    language_model.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True
    )
    pretrain_language_model(language_model, tiny_tokenizer, steps=12, batch_size=4, num_captions=200)
    assert len(masks) == 12
    for mask in masks:
        assert mask[:, -1].any(), "the last column holds some text: the batch is no wider than its longest"
        assert (mask.sum(-1) >= 1).all()
    # Captions vary in length, so batches do too.
    assert len({mask.shape[1] for mask in masks}) > 1


def test_backbone_pretraining_runs_at_its_own_thread_count(tmp_path, monkeypatch):
    """Two threads whatever the caller set (one here), and the caller's count afterwards."""
    import kvcap.demo.pretrain as pretrain
    from kvcap.demo.tiny_backbones import PRETRAIN_THREADS, build_tiny_backbones

    seen = {}

    def short(real, name, **sizes):
        def run(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs, **sizes)

        return run

    monkeypatch.setattr(
        pretrain, "pretrain_vision_tower", short(pretrain.pretrain_vision_tower, "vision", steps=2, num_scenes=70)
    )
    monkeypatch.setattr(
        pretrain,
        "pretrain_language_model",
        short(pretrain.pretrain_language_model, "language", steps=2, num_captions=40),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_tiny_backbones(tmp_path, pretrain=True)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    wanted = min(PRETRAIN_THREADS, os.cpu_count() or 1)
    assert seen == {"vision": wanted, "language": wanted}
    assert after == 1


def test_pretraining_caption_says_what_one_frame_shows():
    scene = {
        "objects": [{"color": "빨간색", "shape": "원"}, {"color": "파란색", "shape": "사각형"}],
        "sky_color": "주황색",
        "category": "자연",
    }
    assert visible_facts(scene) == "빨간색 원, 파란색 사각형. 주황색 하늘. 자연"


def test_object_maps_mark_exactly_the_pixels_drawn_in_each_colour():
    for frames, _, scene in sample_training_scenes(6, seed=3, size=48, num_frames=4):
        owners = object_maps(scene, 48, 4)
        for k, obj in enumerate(scene["objects"]):
            painted = (frames == COLORS[obj["color"]]).all(axis=-1)
            assert (owners == k + 1).any()
            assert ((owners == k + 1) == painted).all()


def test_patch_targets_name_the_object_filling_each_patch():
    scene = sample_training_scenes(1, seed=0, size=96, num_frames=8)[0][2]
    grid = 4
    targets = patch_targets(scene, 96, 8, grid)
    assert targets.shape == (8, grid * grid, 2)
    colour_classes = {list(COLORS).index(obj["color"]) + 1 for obj in scene["objects"]}
    shape_classes = {SHAPES.index(obj["shape"]) + 1 for obj in scene["objects"]}
    assert set(targets[..., 0].flatten()) - {0} == colour_classes
    assert set(targets[..., 1].flatten()) - {0} == shape_classes
    # A patch is labelled exactly when one object covers at least a tenth of it, and with that object.
    owners = object_maps(scene, 96, 8)
    cell = 96 // grid
    for t in range(8):
        for p in range(grid * grid):
            block = owners[t, (p // grid) * cell : (p // grid + 1) * cell, (p % grid) * cell : (p % grid + 1) * cell]
            coverage = [(block == k + 1).sum() for k in range(len(scene["objects"]))]
            best = int(max(range(len(coverage)), key=coverage.__getitem__))
            if coverage[best] * 10 >= cell * cell:
                expected = scene["objects"][best]
                assert targets[t, p, 0] == list(COLORS).index(expected["color"]) + 1
                assert targets[t, p, 1] == SHAPES.index(expected["shape"]) + 1
            else:
                assert (targets[t, p] == 0).all()


def test_repainted_objects_keep_their_shape_and_lose_their_colour_name():
    """Half the vision pretraining's scenes show shapes in colours outside the vocabulary, so shape is learned apart
    from colour: every object pixel, and nothing else, takes one colour far from each named and sky colour."""
    rng = np.random.default_rng(0)
    vocabulary = np.asarray(list(COLORS.values()) + [tod["rgb"] for tod in TIMES_OF_DAY.values()])
    for frames, _, scene in sample_training_scenes(8, seed=5, size=96, num_frames=8):
        before = frames.copy()
        owners = object_maps(scene, 96, 8)
        targets_before = patch_targets(scene, 96, 8, 4)
        repaint_objects(frames, scene, rng)
        assert (frames[owners == 0] == before[owners == 0]).all(), "the background is untouched"
        for k, obj in enumerate(scene["objects"]):
            painted = np.unique(frames[owners == k + 1], axis=0)
            assert len(painted) == 1
            assert np.abs(vocabulary - painted[0]).sum(-1).min() > REPAINT_MIN_DISTANCE
            assert obj["repainted"]
        assert visible_facts(scene).split(". ")[0] == ", ".join(obj["shape"] for obj in scene["objects"])
        targets = patch_targets(scene, 96, 8, 4)
        assert (targets[..., 1] == targets_before[..., 1]).all(), "the shape labels stay"
        object_patches = targets_before[..., 0] > 0
        assert (targets[..., 0][object_patches] == IGNORE).all() and (targets[..., 0][~object_patches] == 0).all()


def test_training_scenes_keep_to_the_pairs_asked_for():
    """Train pairs by default (what the vision tower is pretrained on); held-out pairs only for a probe."""
    from kvcap.demo.corpus import HELD_OUT_PAIRS

    by_default = [
        obj for _, _, scene in sample_training_scenes(30, seed=1, size=48, num_frames=2) for obj in scene["objects"]
    ]
    held_out = [
        obj
        for _, _, scene in sample_training_scenes(30, seed=1, size=48, num_frames=2, pairs=HELD_OUT_PAIRS)
        for obj in scene["objects"]
    ]
    assert not any(obj["held_out"] for obj in by_default)
    assert all(obj["held_out"] and (obj["color"], obj["shape"]) in HELD_OUT_PAIRS for obj in held_out)
