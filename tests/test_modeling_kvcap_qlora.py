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


def _lora_model_and_batch(make_tiny_model, tiny_tokenizer):
    """A bf16-compute NF4 model with LoRA (B not zero, so every matrix gets a gradient) and one labelled batch."""
    quantized = make_tiny_model(
        "mlp_2l", quantization_config=kvcap_4bit_config(compute_dtype=torch.bfloat16), dtype=torch.bfloat16
    )
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=KVCapForConditionalGeneration.lora_target_modules,
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    model = get_peft_model(quantized, lora)
    for param in model.base_model.model.multi_modal_projector.parameters():
        param.requires_grad_(True)
    captions = ["빨간색 원이 왼쪽에서 오른쪽으로 이동합니다.", "파란색 사각형이 제자리에 멈춰 있습니다."]
    batch = video_prompt_batch(tiny_tokenizer, quantized.config, ["설명"] * 2, captions, "right")
    batch["pixel_values_videos"] = random_clips(quantized.config, 2).to(torch.bfloat16)
    return model, batch


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.train()
    model(**batch).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def _packed_layers(model) -> int:
    return sum(
        getattr(module.weight.quant_state, "packing_format_for_cpu", False)
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
    )


def test_an_eval_forward_between_training_steps_leaves_the_gradients_unchanged(make_tiny_model, tiny_tokenizer):
    # bitsandbytes repacks 4-bit weights on CPU for an inference kernel without backward at the first no-grad eval
    # forward (on CPUs with AVX512-BF16); the monitor's captioning does exactly that between training steps.
    model, batch = _lora_model_and_batch(make_tiny_model, tiny_tokenizer)
    before = _gradients(model, batch)
    model.eval()
    with torch.no_grad():
        model(**batch)
        model.generate(**{key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values_videos")})
    assert _packed_layers(model) == 0, "a model that trains keeps its 4-bit weights in the differentiable layout"
    after = _gradients(model, batch)
    assert before.keys() == after.keys()
    assert sum(".lora_" in name for name in after) == 28, "both matrices of 14 LoRA layers train"
    for name, gradient in after.items():
        assert gradient.abs().sum() > 0, f"{name} lost its gradient"
        torch.testing.assert_close(gradient, before[name], rtol=0, atol=0, msg=name)


def test_a_model_that_captioned_before_training_gets_its_gradients_back(make_tiny_model, tiny_tokenizer):
    model, batch = _lora_model_and_batch(make_tiny_model, tiny_tokenizer)
    reference, _ = _lora_model_and_batch(make_tiny_model, tiny_tokenizer)
    expected = _gradients(reference, batch)
    model.eval()
    with torch.no_grad():
        model(**batch)
    packed_on_this_cpu = _packed_layers(model)
    gradients = _gradients(model, batch)
    assert _packed_layers(model) == 0
    for name, gradient in gradients.items():
        assert gradient.abs().sum() > 0, f"{name} lost its gradient ({packed_on_this_cpu} layers were packed)"
        # Unpacking requantises the scales, so the base weights differ in their last bits from the loaded ones.
        torch.testing.assert_close(gradient, expected[name], rtol=0.05, atol=0.05 * expected[name].abs().max().item())
