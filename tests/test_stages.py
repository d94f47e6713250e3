"""The two-stage schedule: per-stage warmup + cosine, the switch point, and which parameters train when."""

import math
from itertools import pairwise

import pytest
import torch
from peft import LoraConfig, get_peft_model

from kvcap.training.stages import (
    LORA,
    PROJECTOR,
    StageSchedule,
    apply_stage,
    build_stage_optimizer,
    build_stage_scheduler,
    stage_parameter_groups,
)
from modeling_kvcap import KVCapForConditionalGeneration


def test_each_stage_warms_up_then_decays_from_its_own_peak():
    schedule = StageSchedule(stage1_steps=20, stage2_steps=30, warmup_ratio=0.1)
    stage1 = [schedule.learning_rate(step, PROJECTOR) for step in range(20)]
    stage2 = [schedule.learning_rate(step, PROJECTOR) for step in range(20, 50)]
    assert stage1[:2] == [pytest.approx(5e-4), pytest.approx(1e-3)]  # 2 warmup steps to the 1e-3 peak
    assert max(stage1) == pytest.approx(1e-3)
    assert all(later <= earlier for earlier, later in pairwise(stage1[1:]))
    assert stage2[:3] == [pytest.approx(5e-5 / 3), pytest.approx(2 * 5e-5 / 3), pytest.approx(5e-5)]
    assert all(later <= earlier for earlier, later in pairwise(stage2[2:]))
    assert stage2[-1] < 1e-6
    # Halfway through stage 1's cosine part the rate is half the peak.
    assert schedule.learning_rate(2 + 9, PROJECTOR) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 19)))


def test_lora_rate_is_zero_in_stage_one_and_follows_stage_two():
    schedule = StageSchedule(stage1_steps=4, stage2_steps=6)
    assert [schedule.learning_rate(step, LORA) for step in range(4)] == [0.0] * 4
    assert [schedule.stage_at(step) for step in (0, 3, 4, 9)] == [1, 1, 2, 2]
    for step in range(4, 10):
        assert schedule.learning_rate(step, LORA) == schedule.learning_rate(step, PROJECTOR) > 0


def test_steps_are_split_by_epochs():
    schedule = StageSchedule.from_epochs(50, stage1_epochs=2, stage2_epochs=3)
    assert (schedule.stage1_steps, schedule.stage2_steps) == (20, 30)
    with pytest.raises(ValueError, match="cannot be split"):
        StageSchedule.from_epochs(51, stage1_epochs=2, stage2_epochs=3)


@pytest.fixture
def peft_model(make_tiny_model):
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=KVCapForConditionalGeneration.lora_target_modules,
        modules_to_save=["multi_modal_projector"],
    )
    return get_peft_model(make_tiny_model("mlp_2l"), lora)


def test_groups_hold_the_trained_projector_copy_and_the_lora_adapters(peft_model):
    groups = stage_parameter_groups(peft_model)
    assert all("modules_to_save" in name for name, _ in groups[PROJECTOR])
    assert len(groups[PROJECTOR]) == 4  # two Linear layers, weight and bias
    assert len(groups[LORA]) == 2 * 2 * 7  # 2 layers x (A, B) x 7 target projections


def test_apply_stage_toggles_lora_only(peft_model):
    apply_stage(peft_model, 1)
    groups = stage_parameter_groups(peft_model)
    assert not any(param.requires_grad for _, param in groups[LORA])
    assert all(param.requires_grad for _, param in groups[PROJECTOR])
    apply_stage(peft_model, 2)
    assert all(param.requires_grad for _, param in stage_parameter_groups(peft_model)[LORA])


def test_scheduler_sets_absolute_rates_per_group(peft_model):
    optimizer = build_stage_optimizer(peft_model)
    schedule = StageSchedule(stage1_steps=2, stage2_steps=2, warmup_ratio=0.5)
    scheduler = build_stage_scheduler(optimizer, schedule)
    seen = []
    for _ in range(4):
        seen.append({group["name"]: group["lr"] for group in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert [rates[LORA] for rates in seen] == [0.0, 0.0, pytest.approx(5e-5), pytest.approx(5e-5 * 0.5)]
    assert [rates[PROJECTOR] for rates in seen] == [
        pytest.approx(1e-3),
        pytest.approx(1e-3 * 0.5),
        pytest.approx(5e-5),
        pytest.approx(5e-5 * 0.5),
    ]
    assert torch.is_tensor(optimizer.param_groups[0]["params"][0])
