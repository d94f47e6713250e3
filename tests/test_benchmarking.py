"""kvcap.demo.benchmarking: the GPU benchmarks quantize a random model in memory exactly as loading does."""

import pytest
import torch

from kvcap.demo.benchmarking import quantize_language_model
from modeling_kvcap import kvcap_4bit_config

from .conftest import random_clips, video_prompt_batch

bnb = pytest.importorskip("bitsandbytes")


def test_quantizing_in_memory_gives_the_model_a_4bit_load_gives(make_tiny_model, tiny_tokenizer):
    config = kvcap_4bit_config(compute_dtype=torch.bfloat16)
    loaded = make_tiny_model("mlp_2l", quantization_config=config, dtype=torch.bfloat16).eval()
    in_memory = make_tiny_model("mlp_2l", dtype=torch.bfloat16).eval()
    assert quantize_language_model(in_memory, config) == 14
    # The new layers take the model's mode, as loaded ones do: it chooses bitsandbytes' CPU kernel.
    assert not any(module.training for module in in_memory.modules())

    def layers(model):
        return {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}

    loaded_layers, in_memory_layers = layers(loaded), layers(in_memory)
    assert loaded_layers.keys() == in_memory_layers.keys() and len(loaded_layers) == 14
    for name, layer in loaded_layers.items():
        other = in_memory_layers[name]
        assert torch.equal(layer.weight.data, other.weight.data), name
        assert torch.equal(layer.weight.quant_state.absmax, other.weight.quant_state.absmax), name
    assert type(in_memory.lm_head) is torch.nn.Linear and not layers(in_memory.model.vision_tower)

    batch = video_prompt_batch(tiny_tokenizer, loaded.config, ["설명"], ["빨간 원이 움직입니다."], "right")
    clips = random_clips(loaded.config, 1).to(torch.bfloat16)
    with torch.no_grad():
        expected = loaded(**batch, pixel_values_videos=clips).logits
        torch.testing.assert_close(in_memory(**batch, pixel_values_videos=clips).logits, expected, rtol=0, atol=0)
