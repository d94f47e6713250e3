"""The demo's short pretraining of the tiny backbones lowers their losses (a few steps here; the demo runs more)."""

import torch
from transformers import CLIPVisionModel, Qwen3ForCausalLM

from scripts.make_tiny_backbones import tiny_text_config, tiny_vision_config
from scripts.pretrain_tiny_backbones import (
    _object_targets,
    pretrain_language_model,
    pretrain_vision_tower,
    visible_facts,
)


def test_vision_pretraining_lowers_its_loss_and_changes_the_tower(tiny_tokenizer):
    torch.manual_seed(0)
    vision = CLIPVisionModel(tiny_vision_config())
    before = {name: param.detach().clone() for name, param in vision.named_parameters()}
    losses = pretrain_vision_tower(vision, tiny_tokenizer, steps=30, batch_size=32, num_scenes=200)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert any(not torch.equal(param, before[name]) for name, param in vision.named_parameters())
    assert not vision.training


def test_language_pretraining_lowers_its_loss(tiny_tokenizer):
    torch.manual_seed(0)
    language_model = Qwen3ForCausalLM(tiny_text_config(len(tiny_tokenizer), tiny_tokenizer))
    losses = pretrain_language_model(language_model, tiny_tokenizer, steps=30, batch_size=16, num_captions=300)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_pretraining_targets_say_what_one_frame_shows():
    scene = {
        "objects": [{"color": "빨간색", "shape": "원"}, {"color": "파란색", "shape": "사각형"}],
        "sky_color": "주황색",
        "category": "자연",
    }
    assert visible_facts(scene) == "빨간색 원, 파란색 사각형. 주황색 하늘. 자연"
    target = _object_targets(scene)
    assert target.sum() == 4 and target.shape == (6 + 5,)
