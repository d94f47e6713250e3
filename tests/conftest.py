"""Shared fixtures: tiny real backbones, the shipped Korean tokenizer and tiny kvcap models.

Every model here is a real architecture at a tiny size (see `scripts/make_tiny_backbones.py`); nothing is
downloaded, and the Hub is switched off for the whole run so a test can never reach it by accident.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from modeling_kvcap import KVCapConfig, KVCapForConditionalGeneration
from scripts.make_tiny_backbones import (
    TINY_NUM_QUERY_TOKENS,
    build_tiny_backbones,
    load_tokenizer,
    tiny_text_config,
    tiny_vision_config,
)

PROJECTOR_TYPES = ("linear", "mlp_2l", "perceiver", "c_abstractor")
PROMPT = "이 영상을 자세히 설명해주세요."


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of the tiny `clip-vision`, `qwen3` and `siglip` checkpoints, built once per session."""
    return build_tiny_backbones(tmp_path_factory.mktemp("tiny-backbones"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return load_tokenizer()


def tiny_kvcap_config(tokenizer, projector_type: str = "mlp_2l", **overrides) -> KVCapConfig:
    """A kvcap config over the tiny backbones' configs (8 frames of a 4 × 4 patch grid, 16 query tokens)."""
    fields = {
        "vision_config": tiny_vision_config(),
        "text_config": tiny_text_config(len(tokenizer), tokenizer),
        "projector_type": projector_type,
        "num_query_tokens": TINY_NUM_QUERY_TOKENS,
        "perceiver_depth": 2,
        "perceiver_num_heads": 2,
        "abstractor_depth": 1,
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    }
    fields.update(overrides)
    return KVCapConfig(**fields)


@pytest.fixture
def make_tiny_model(tiny_backbones: dict[str, Path]) -> Callable[..., KVCapForConditionalGeneration]:
    """Compose a kvcap model from the tiny checkpoints through the real loading path; deterministic per seed."""

    def make(projector_type: str = "mlp_2l", seed: int = 0, **kwargs) -> KVCapForConditionalGeneration:
        torch.manual_seed(seed)
        kwargs.setdefault("num_query_tokens", TINY_NUM_QUERY_TOKENS)
        kwargs.setdefault("perceiver_depth", 2)
        kwargs.setdefault("perceiver_num_heads", 2)
        kwargs.setdefault("abstractor_depth", 1)
        return KVCapForConditionalGeneration.from_pretrained_backbones(
            tiny_backbones["clip-vision"], tiny_backbones["qwen3"], projector_type=projector_type, **kwargs
        )

    return make


def video_prompt_batch(
    tokenizer,
    config: KVCapConfig,
    prompts: Sequence[str],
    captions: Sequence[str] | None = None,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Chat-formatted `input_ids` / `attention_mask` (and `labels` when captions are given) for one clip each.

    Each prompt carries `config.num_video_tokens` placeholders; labels supervise only the caption and its
    end-of-turn token.
    """
    rows, label_rows = [], []
    for index, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        text = text.replace("<|video_pad|>", "<|video_pad|>" * config.num_video_tokens)
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        target_ids = []
        if captions is not None:
            target_ids = tokenizer(captions[index] + "<|im_end|>", add_special_tokens=False).input_ids
        rows.append(prompt_ids + target_ids)
        label_rows.append([-100] * len(prompt_ids) + target_ids)
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        input_ids[index, span] = torch.tensor(row)
        attention_mask[index, span] = 1
        labels[index, span] = torch.tensor(label_row)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if captions is not None:
        batch["labels"] = labels
    return batch


def random_clips(config: KVCapConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """Normalised-looking frames `(batch, num_frames, 3, image_size, image_size)`."""
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return torch.randn(batch, config.num_frames, 3, size, size, generator=generator)
