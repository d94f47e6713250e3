"""The language model in 4-bit NF4 (bitsandbytes on CPU) with PEFT LoRA on its projections: it trains."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from modeling_kvcap import KVCapForConditionalGeneration, kvcap_4bit_config

from .conftest import random_clips, video_prompt_batch

bnb = pytest.importorskip("bitsandbytes")

LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture
def quantized_model(make_tiny_model) -> KVCapForConditionalGeneration:
    return make_tiny_model("mlp_2l", quantization_config=kvcap_4bit_config(compute_dtype=torch.float32))


def test_only_the_language_model_is_quantized_to_nf4(quantized_model):
    language_linears = [
        module for name, module in quantized_model.language_model.named_modules() if name.split(".")[-1] in LORA_TARGETS
    ]
    assert language_linears and all(isinstance(module, bnb.nn.Linear4bit) for module in language_linears)
    assert all(module.weight.quant_state.quant_type == "nf4" for module in language_linears)
    for part in (quantized_model.vision_tower, quantized_model.multi_modal_projector):
        assert not any(isinstance(module, bnb.nn.Linear4bit) for module in part.modules())
    assert type(quantized_model.lm_head) is torch.nn.Linear
    assert quantized_model.hf_quantizer is not None


def test_lora_on_a_4bit_base_trains(quantized_model, tiny_tokenizer):
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=KVCapForConditionalGeneration.lora_target_modules,
        bias="none",
    )
    model = get_peft_model(quantized_model, lora)
    for param in model.base_model.model.multi_modal_projector.parameters():
        param.requires_grad_(True)

    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    lora_modules = {name.split(".lora_")[0] for name in trainable if ".lora_" in name}
    assert lora_modules, "LoRA adapters were attached"
    assert all(".language_model.layers." in name for name in lora_modules), "LoRA only in the language model"
    assert {name.rsplit(".", 1)[-1] for name in lora_modules} == LORA_TARGETS
    assert all(".lora_" in name or ".multi_modal_projector." in name for name in trainable)

    captions = ["빨간색 원이 왼쪽에서 오른쪽으로 이동합니다.", "파란색 사각형이 제자리에 멈춰 있습니다."]
    batch = video_prompt_batch(tiny_tokenizer, quantized_model.config, ["설명"] * 2, captions, "right")
    clips = random_clips(quantized_model.config, 2)
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(16):
        loss = model(**batch, pixel_values_videos=clips).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # LoRA dropout makes single steps noisy; the trend over the run must be clearly down.
    assert max(losses[-4:]) < min(losses[:4]), f"loss did not fall: {losses}"
    assert losses[-1] < 0.85 * losses[0], f"loss did not fall far enough: {losses}"
    lora_weights = [param for name, param in model.named_parameters() if "lora_B" in name]
    assert any(weight.abs().sum() > 0 for weight in lora_weights), "LoRA B matrices moved away from zero"
