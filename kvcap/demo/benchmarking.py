"""Synthetic models and result writing for `bench/`.

Randomly initialised kvcap models (nothing downloaded) at the CPU bench shape (CLIP 128 wide x 4 layers, Qwen3 256
wide x 4 layers, the shipped tiny tokenizer) or the real shape (CLIP-ViT-L/14-336 + Qwen3-8B), their processor, a
one-line machine description and the Markdown result writer that the benchmark scripts share.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, Qwen3Config

from modeling_kvcap import KVCapConfig, KVCapForConditionalGeneration
from modeling_kvcap.configuration_kvcap import CLIP_VIT_L_14_336, QWEN3_8B
from processing.processing_kvcap import KVCapProcessor


def cpu_bench_config(
    projector_type: str,
    tokenizer: Any,
    *,
    image_size: int = 96,
    num_query_tokens: int = 64,
    text_layers: int | None = None,
    vision_layers: int | None = None,
) -> KVCapConfig:
    """Random CLIP + Qwen3 a notch above the test suite's tiny ones (see the module docstring).

    ``image_size`` is the frame side (8 px patches); ``text_layers`` / ``vision_layers`` default to 4.
    """
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        projection_dim=64,
        num_hidden_layers=vision_layers or 4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
    )
    text = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=text_layers or 4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return KVCapConfig(
        vision_config=vision,
        text_config=text,
        projector_type=projector_type,
        num_query_tokens=num_query_tokens,
        perceiver_depth=2,
        perceiver_num_heads=4,
        abstractor_depth=1,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )


def real_shape_config(
    projector_type: str, tokenizer: Any, *, text_layers: int | None = None, vision_layers: int | None = None
) -> KVCapConfig:
    """CLIP-ViT-L/14-336 + Qwen3-8B as ``KVCapConfig()`` describes them, optionally with fewer layers.

    The tiny tokenizer's ids all lie inside Qwen3's vocabulary, so prompts are built with it; the prompt's text part
    is a few tokens shorter than with Qwen3's tokenizer, next to 4,608 (or 64) video tokens. ``text_layers`` /
    ``vision_layers`` default to the full 36 / 24.
    """
    vision = CLIPVisionConfig(**{**CLIP_VIT_L_14_336, "num_hidden_layers": vision_layers or 24})
    text = Qwen3Config(**{**QWEN3_8B, "num_hidden_layers": text_layers or 36})
    return KVCapConfig(
        vision_config=vision,
        text_config=text,
        projector_type=projector_type,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )


def bench_model(projector_type: str, tokenizer: Any, args: Any) -> KVCapForConditionalGeneration:
    """The benchmarks' random kvcap from their shared flags (``real_shape``, ``image_size``, ``num_query_tokens``,
    ``text_layers``, ``vision_layers``, ``device``, ``seed``): real widths in bf16, or the CPU shape in fp32."""
    if args.real_shape:
        config = real_shape_config(
            projector_type, tokenizer, text_layers=args.text_layers, vision_layers=args.vision_layers
        )
    else:
        config = cpu_bench_config(
            projector_type,
            tokenizer,
            image_size=args.image_size,
            num_query_tokens=args.num_query_tokens,
            text_layers=args.text_layers,
            vision_layers=args.vision_layers,
        )
    return build(config, args.device, torch.bfloat16 if args.real_shape else torch.float32, args.seed)


def build(config: KVCapConfig, device: str, dtype: torch.dtype, seed: int) -> KVCapForConditionalGeneration:
    """A randomly initialised kvcap model (seeded), built directly on ``device`` in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Built directly on the device in the target dtype: an 8B model never passes through CPU float32.
        with torch.device(device):
            model = KVCapForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def make_processor(tokenizer: Any, config: KVCapConfig) -> KVCapProcessor:
    """A ``KVCapProcessor`` for ``config``: CLIP preprocessing at its frame size, its number of video tokens."""
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return KVCapProcessor(image_processor, tokenizer, num_video_tokens=config.num_video_tokens)


def machine_description(device: str) -> str:
    """One line for a result table: the GPU and torch on CUDA; else the CPU, its cores, torch threads, Python."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}"
    )


def write_result(command: str, table: str, out: Path | None) -> None:
    """Print the command and its Markdown table, and write them to ``out`` when given."""
    text = f"`{command.strip()}`\n\n{table}"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


__all__ = [
    "bench_model",
    "build",
    "cpu_bench_config",
    "machine_description",
    "make_processor",
    "real_shape_config",
    "write_result",
]
