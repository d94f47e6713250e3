"""Loading a saved kvcap model and captioning clips in batches with the model's own decoding policy.

The policy (greedy, ``max_new_tokens`` long enough for AI-Hub's ~575-character captions, repetition penalty 1.2 on
generated tokens only) is stored with the model, in its ``generation_config``, and applied by its ``generate``; so
the diversity monitor, the final evaluation of training, ``eval_hf.py`` and a user's plain
``model.generate(**processor(videos=[path]))`` all caption the same way. Arguments given here override it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bitsandbytes_notice import note_cpu_4bit

logger = logging.getLogger(__name__)


@dataclass
class GenerationArguments:
    """How to caption; every ``None`` falls back to the model's ``generation_config``."""

    _argument_group_name = "generation: decoding and batching"  # the heading of these options in --help

    batch_size: int = field(default=8, metadata={"help": "Clips per generate() call."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest caption in tokens (default: the model's generation config, 768)."}
    )
    repetition_penalty: float | None = field(
        default=None,
        metadata={"help": "Penalty on repeated generated tokens (default: the model's generation config, 1.2)."},
    )
    do_sample: bool | None = field(default=None, metadata={"help": "Sample instead of greedy decoding."})
    num_beams: int | None = field(default=None, metadata={"help": "Beam search width (default 1: greedy)."})
    prompt: str | None = field(default=None, metadata={"help": "Instruction; the processor's default otherwise."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")

    def generate_kwargs(self) -> dict[str, Any]:
        """The overrides of the model's generation config that were actually set."""
        names = ("max_new_tokens", "repetition_penalty", "do_sample", "num_beams")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def decoding(self, model: torch.nn.Module) -> dict[str, Any]:
        """The decoding in effect: the model's generation config with these overrides (what names a caption job)."""
        policy = {**model.generation_config.to_dict(), **self.generate_kwargs()}
        return {name: policy.get(name) for name in ("do_sample", "num_beams", "max_new_tokens", "repetition_penalty")}


@dataclass
class GeneratedCaption:
    """One generated caption with how it ended."""

    caption: str
    num_tokens: int  # generated tokens, the end-of-turn token included when it was reached
    finished: bool  # False when generation stopped at max_new_tokens: the caption is cut


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that has it, float32 elsewhere (CPU); else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_gpu = str(device or default_device()).startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {dtype!r}")
    return resolved


def input_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the embedding's device, also for quantized or device-mapped models."""
    return model.get_input_embeddings().weight.device


def _eos_ids(model: torch.nn.Module, generation_kwargs: dict[str, Any]) -> set[int]:
    eos = generation_kwargs.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _looks_like_local_path(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything else (absolute, relative, deeper) can only be a folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


class NotAModelFolderError(ValueError):
    """The folder is not a loadable kvcap model (e.g. a training checkpoint); the message says what to load."""


def check_model_folder(model_name_or_path: str) -> None:
    """Refuse, naming what to load instead, a local path that is not a saved model folder (a Hub id passes)."""
    folder = Path(model_name_or_path).expanduser()
    if not folder.exists():
        if _looks_like_local_path(model_name_or_path):
            raise FileNotFoundError(f"model folder not found: {model_name_or_path}")
        return  # a Hub id
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        run = folder.parent
        raise NotAModelFolderError(
            f"{folder} is a training checkpoint (a LoRA adapter and the trainer's state, no model): evaluate "
            f"{run / 'final'}, which training writes at its end; a stopped run gets there with "
            f"`python train_hf.py PRESET --output_dir {run} --resume_from_checkpoint true`."
        )
    if not (folder / "config.json").is_file():
        raise NotAModelFolderError(f"{folder} holds no config.json: it is not a saved model folder.")


def load_model_and_processor(
    model_name_or_path: str,
    device: str | None = None,
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """A saved kvcap folder (or Hub id) as ``(model, processor)``, the model in eval mode on ``device``.

    The folder is loaded with this installed kvcap's own classes: the code shipped in the folder runs only with
    ``trust_remote_code=True`` (for a Hub model whose code you have read, or where kvcap is not installed).
    ``load_in_4bit`` quantizes the language model to NF4 on loading; a folder saved quantized stays quantized.
    """
    from transformers import AutoConfig, AutoModel, AutoProcessor

    check_model_folder(model_name_or_path)
    device = device or default_device()
    if trust_remote_code:
        processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
    else:
        # kvcap's own classes, registered with AutoConfig / AutoModel as modeling_kvcap is imported. (Registered
        # classes win over a folder's code in transformers, even with trust_remote_code, so they are registered
        # only here.)
        import modeling_kvcap  # noqa: F401
        from processing.processing_kvcap import KVCapProcessor

        processor = KVCapProcessor.from_pretrained(model_name_or_path)
    # Read once: it says whether the folder was saved quantized, and the model load reuses it.
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {
        "config": config,
        "trust_remote_code": trust_remote_code,
        "dtype": resolve_dtype(dtype, device),
    }
    if load_in_4bit:
        from modeling_kvcap import kvcap_4bit_config

        kwargs["quantization_config"] = kvcap_4bit_config(compute_dtype=kwargs["dtype"])
    if load_in_4bit or getattr(config, "quantization_config", None) is not None:
        if torch.device(device).type == "cpu":
            note_cpu_4bit(logger)
        # Quantized weights cannot be moved after loading; they are placed on the device as they load.
        model = AutoModel.from_pretrained(model_name_or_path, device_map={"": device}, **kwargs)
        return model.eval(), processor
    model = AutoModel.from_pretrained(model_name_or_path, **kwargs)
    return model.to(device).eval(), processor


def generate_captions_detailed(
    model: torch.nn.Module,
    processor: Any,
    videos: Sequence[Any] | None = None,
    batch_size: int = 8,
    *,
    video_features: Sequence[torch.Tensor] | torch.Tensor | None = None,
    prompt: str | Sequence[str | None] | None = None,
    progress: bool = False,
    **generation_kwargs: Any,
) -> list[GeneratedCaption]:
    """:func:`generate_captions`, also telling per clip how many tokens were generated and whether it finished."""
    if (videos is None) == (video_features is None):
        raise ValueError("Pass exactly one of videos (paths or frames) or video_features (cached encoder features).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    clips: Sequence[Any] = list(videos) if videos is not None else list(video_features)
    prompts = [prompt] * len(clips) if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(clips):
        raise ValueError(f"Got {len(prompts)} prompts for {len(clips)} clips.")
    kwargs = dict(generation_kwargs)
    kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    eos_ids = _eos_ids(model, kwargs)
    device = input_device(model)

    from tqdm.auto import tqdm

    results: list[GeneratedCaption] = []
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(clips), desc="kvcap: generating", unit="clip", disable=not progress) as bar,
        ):
            for start in range(0, len(clips), batch_size):
                batch = clips[start : start + batch_size]
                batch_prompts = prompts[start : start + batch_size]
                if videos is not None:
                    inputs = processor(videos=list(batch), text=batch_prompts)
                else:
                    # Features need only the text: the processor lays out the placeholders, left padded.
                    inputs = processor(text=batch_prompts)
                    inputs["video_features"] = torch.stack([torch.as_tensor(f) for f in batch])
                inputs = {name: value.to(device) for name, value in inputs.items()}
                # Left padding gives every row the same prompt length, so the new tokens start at one column.
                prompt_length = inputs["input_ids"].shape[1]
                generated = model.generate(**inputs, **kwargs)
                captions = processor.batch_decode(generated, prompt_length=prompt_length)
                for row, caption in zip(generated[:, prompt_length:].tolist(), captions, strict=True):
                    end = next((i for i, token in enumerate(row) if token in eos_ids), None)
                    count = len(row) if end is None else end + 1
                    results.append(GeneratedCaption(caption, count, end is not None))
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return results


def generate_captions(
    model: torch.nn.Module,
    processor: Any,
    videos: Sequence[Any] | None = None,
    batch_size: int = 8,
    *,
    video_features: Sequence[torch.Tensor] | torch.Tensor | None = None,
    prompt: str | Sequence[str | None] | None = None,
    progress: bool = False,
    **generation_kwargs: Any,
) -> list[str]:
    """Caption clips with batched generation: left-padded prompts, the video encoded once at prefill, KV cache.

    Args:
        model: a kvcap model (as ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` loads it, or a PEFT
            wrapper of one). It runs in eval mode under ``torch.inference_mode()``; its train/eval mode is restored
            afterwards, so a training loop can call this between steps.
        processor: the model's ``KVCapProcessor``.
        videos: the clips, each a video path or ``(num_frames, H, W, 3)`` uint8 RGB frames (as
            ``processor.load_frames(path)`` returns them); or
        video_features: cached frozen-encoder features instead, one ``(T, P, D)`` tensor per clip or an
            ``(N, T, P, D)`` tensor (what ``kvcap.training.feature_cache`` stores).
        batch_size: clips per ``generate`` call.
        prompt: one instruction for all clips or one per clip (``None`` entries take the processor's default).
        progress: show a tqdm bar over clips (on stderr).
        generation_kwargs: overrides of the model's ``generation_config`` (kvcap's policy); ``pad_token_id``
            defaults to the tokenizer's.

    Returns:
        One caption per clip, in input order: prompt, special tokens and any ``<think>`` block removed.
    """
    return [
        result.caption
        for result in generate_captions_detailed(
            model,
            processor,
            videos,
            batch_size,
            video_features=video_features,
            prompt=prompt,
            progress=progress,
            **generation_kwargs,
        )
    ]
