"""Real-width backbones with random weights, saved as checkpoints, for the real-width test tier and benchmarks.

CLIP-ViT-L/14-336 and Qwen3-8B at their published widths, heads and vocabulary, with fewer layers where asked
(``text_layers=2`` fits a CPU: ~3.3 GB in bf16), random weights, Qwen3's real tokenizer and CLIP's 336 px image
processor. Saved as ordinary checkpoints, they load through exactly the code a real run uses
(``from_pretrained_backbones``, ``kvcap_4bit_config``, ``train_hf.py``), so shapes, masks, NF4 and LoRA are those of
the presets; only the depth and the weights differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, Qwen3Config

from modeling_kvcap.configuration_kvcap import CLIP_VIT_L_14_336, QWEN3_8B

from .qwen3_tokenizer import load_qwen3_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RECIPE_FILE = "kvcap_real_width.json"


def real_width_configs(
    text_layers: int = 2, vision_layers: int = 24, pad_token_id: int = 151643
) -> tuple[CLIPVisionConfig, Qwen3Config]:
    """CLIP-ViT-L/14-336's and Qwen3-8B's configs with ``vision_layers`` / ``text_layers`` layers."""
    vision = CLIPVisionConfig(**{**CLIP_VIT_L_14_336, "num_hidden_layers": vision_layers})
    text = Qwen3Config(**{**QWEN3_8B, "num_hidden_layers": text_layers, "pad_token_id": pad_token_id})
    return vision, text


def random_model(
    model_class: type[torch.nn.Module], config, dtype: torch.dtype, seed: int, device: str = "cpu"
) -> torch.nn.Module:
    """``model_class(config)`` with seeded random weights, built directly on ``device`` in ``dtype``."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Built in the target dtype on the device: an 8B model never passes through CPU float32.
        with torch.device(device):
            return model_class(config)
    finally:
        torch.set_default_dtype(previous)


def save_real_width_backbones(
    folder: str | Path, *, text_layers: int = 2, vision_layers: int = 24, seed: int = 0
) -> dict[str, Path]:
    """Write ``folder/clip-vision`` and ``folder/qwen3`` (bf16 safetensors, tokenizer, image processor) once.

    Returns their paths. A folder already holding the same recipe is reused as it is.
    """
    folder = Path(folder)
    paths = {"clip-vision": folder / "clip-vision", "qwen3": folder / "qwen3"}
    recipe = {"text_layers": text_layers, "vision_layers": vision_layers, "seed": seed}
    recipe_path = folder / RECIPE_FILE
    if recipe_path.is_file() and json.loads(recipe_path.read_text(encoding="utf-8")) == recipe:
        return paths
    vision_config, text_config = real_width_configs(text_layers, vision_layers)
    vision = random_model(CLIPVisionModel, vision_config, torch.bfloat16, seed)
    vision.save_pretrained(paths["clip-vision"])
    del vision
    size = CLIP_VIT_L_14_336["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(paths["clip-vision"])

    from transformers import Qwen3ForCausalLM

    text = random_model(Qwen3ForCausalLM, text_config, torch.bfloat16, seed + 1)
    text.save_pretrained(paths["qwen3"])
    del text
    load_qwen3_tokenizer().save_pretrained(paths["qwen3"])
    recipe_path.write_text(json.dumps(recipe), encoding="utf-8")
    return paths


def write_aihub_length_corpus(root: str | Path, num_train: int = 1, num_val: int = 1, seed: int = 0) -> Path:
    """A few demo clips in the AI-Hub layout whose captions are AI-Hub-length paragraphs (``aihub_like_caption``)."""
    from .corpus import generate_corpus
    from .qwen3_tokenizer import aihub_like_caption

    root = Path(root)
    generate_corpus(root, num_train=num_train, num_val=num_val, seed=seed, size=64, workers=1)
    for index, label_path in enumerate(sorted(root.glob("*/labels/*.json"))):
        label = json.loads(label_path.read_text(encoding="utf-8"))
        label["annotation"]["description_kr"] = aihub_like_caption(seed * 1000 + index)
        label_path.write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")
    return root


__all__ = ["random_model", "real_width_configs", "save_real_width_backbones", "write_aihub_length_corpus"]
