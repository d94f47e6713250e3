"""KVCapProcessor: frames and a Korean prompt in, model inputs out; generated ids in, captions out."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging

from .video_io import VideoReadError, read_video_frames

logger = logging.get_logger(__name__)

DEFAULT_PROMPT = "이 영상을 자세히 설명해주세요."
VIDEO_TOKEN = "<|video_pad|>"
END_OF_TURN = "<|im_end|>"
START_OF_TURN = "<|im_start|>"

# Qwen3's ChatML with a video part, and thinking switched off by the empty `<think>` block after the assistant
# header, which is what Qwen3 emits for `enable_thinking=False`.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)

VideoInput = str | os.PathLike | np.ndarray | torch.Tensor | Sequence[Any]
Messages = list[dict[str, Any]]


class KVCapProcessor(ProcessorMixin):
    r"""
    Turns videos and prompts into kvcap inputs, and generated ids back into captions.

    Args:
        image_processor (`CLIPImageProcessorPil`):
            CLIP's image processor: the crop size and normalisation statistics come from it.
        tokenizer (`Qwen2Tokenizer`):
            The language model's tokenizer (Qwen3's special tokens).
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to Qwen3's ChatML with a video part.
        num_video_tokens (`int`, *optional*, defaults to 4608):
            `<|video_pad|>` placeholders per clip; take it from `KVCapConfig.num_video_tokens`.
        num_frames (`int`, *optional*, defaults to 8):
            Frames sampled per clip.
        prompt (`str`, *optional*, defaults to `"이 영상을 자세히 설명해주세요."`):
            The instruction used when no text is given.
    """

    # The error `load_frames` raises for an unreadable clip. A processor loaded with trust_remote_code reads video
    # with its own copy of video_io, whose VideoReadError is another class: catch `processor.VideoReadError`.
    VideoReadError = VideoReadError

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_video_tokens: int = 4608,
        num_frames: int = 8,
        prompt: str = DEFAULT_PROMPT,
        **kwargs,
    ):
        self.num_video_tokens = num_video_tokens
        self.num_frames = num_frames
        self.prompt = prompt
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)
        self.video_token_id = self._token_id(VIDEO_TOKEN)
        self.end_of_turn_id = self._token_id(END_OF_TURN)

    @classmethod
    def from_pretrained_backbones(
        cls, vision_model_name_or_path: str, text_model_name_or_path: str, *, num_video_tokens: int, **kwargs
    ) -> KVCapProcessor:
        """Build the processor from the backbones' own image processor and tokenizer."""
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        return cls(
            image_processor=CLIPImageProcessorPil.from_pretrained(vision_model_name_or_path),
            tokenizer=AutoTokenizer.from_pretrained(text_model_name_or_path),
            num_video_tokens=num_video_tokens,
            **kwargs,
        )

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {token} token; kvcap needs Qwen3's special tokens.")
        return token_id

    @property
    def image_size(self) -> int:
        """Side of the square frames the vision tower takes (336 at real size)."""
        crop = self.image_processor.crop_size
        # A plain dict in saved configs, a SizeDict (attribute access) once an image processor has read it.
        return int(crop["height"] if isinstance(crop, dict) else getattr(crop, "height", crop))

    # --- videos -----------------------------------------------------------------------------------------------

    def load_frames(self, video: VideoInput) -> np.ndarray:
        """One clip as `(num_frames, H, W, 3)` uint8 RGB: read from a path, or checked if already frames."""
        if isinstance(video, (str, os.PathLike)):
            # Resizing inside the decoder's scaler avoids converting full-resolution frames to RGB.
            return read_video_frames(video, num_frames=self.num_frames, size=self.image_size)
        frames = video.numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"A clip's frames must be (num_frames, H, W, 3) RGB, got shape {frames.shape}.")
        if frames.shape[0] != self.num_frames:
            raise ValueError(
                f"A clip has {frames.shape[0]} frames but this processor samples num_frames={self.num_frames}; "
                "pass a video path, or frames from read_video_frames(path, num_frames)."
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"Frames must be uint8 RGB, got {frames.dtype}.")
        return frames

    def preprocess_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`(T, H, W, 3)` uint8 → `(T, 3, S, S)` float32, resized, cropped and normalised as CLIP expects."""
        size = self.image_size
        if frames.shape[1:3] != (size, size):
            pixel_values = self.image_processor(images=list(frames), return_tensors="np")["pixel_values"]
            return torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
        # Already at the crop size (resized while decoding): only rescale and normalise, vectorised over frames.
        mean = np.asarray(self.image_processor.image_mean, dtype=np.float32)
        std = np.asarray(self.image_processor.image_std, dtype=np.float32)
        scale = np.float32(self.image_processor.rescale_factor)
        pixel_values = (frames.astype(np.float32) * scale - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixel_values.transpose(0, 3, 1, 2)))

    def process_videos(self, videos: Sequence[VideoInput]) -> torch.Tensor:
        """Paths or frame arrays → `pixel_values_videos` `(B, num_frames, 3, S, S)`."""
        return torch.stack([self.preprocess_frames(self.load_frames(video)) for video in videos])

    # --- text -------------------------------------------------------------------------------------------------

    def build_messages(self, prompt: str | Messages | None = None) -> Messages:
        """A user turn holding the video and the instruction, unless chat messages are given."""
        if prompt is None or isinstance(prompt, str):
            text = self.prompt if prompt is None else prompt
            return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        return list(prompt)

    def render_prompt(self, prompt: str | Messages | None = None, add_generation_prompt: bool = True) -> str:
        """The chat-formatted prompt text with one `<|video_pad|>`; a prompt already formatted is kept as it is."""
        if isinstance(prompt, str) and START_OF_TURN in prompt:
            # Already through a chat template (e.g. `apply_chat_template(conversation)`), as LLaVA-style code does.
            return prompt
        return self.tokenizer.apply_chat_template(
            self.build_messages(prompt),
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=False,
        )

    def apply_chat_template(
        self,
        conversation: Messages | Sequence[Messages],
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        return_dict: bool = False,
        **kwargs,
    ) -> str | list[str] | BatchFeature | torch.Tensor:
        """Chat messages → the prompt text, or with `tokenize=True` the model inputs.

        A `{"type": "video", "path": ...}` part (or `"video"` / `"url"`) names the clip; with `tokenize=True` it is
        read and `pixel_values_videos` `(B, num_frames, 3, S, S)` come back with `input_ids` and `attention_mask`
        (`return_dict=True`, else `input_ids` alone). A list of conversations gives a batch.
        """
        conversations = [conversation] if conversation and isinstance(conversation[0], dict) else list(conversation)
        template = chat_template or self.chat_template
        texts = [
            self.tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=False,
            )
            for messages in conversations
        ]
        if not tokenize:
            return texts[0] if len(texts) == 1 and conversation and isinstance(conversation[0], dict) else texts
        videos = [_video_of(messages) for messages in conversations]
        inputs = self(text=texts, videos=videos if all(v is not None for v in videos) else None)
        return inputs if return_dict else inputs["input_ids"]

    def prompt_ids(self, prompt: str | Messages | None = None) -> list[int]:
        """Chat-formatted prompt ids with the video placeholder expanded to `num_video_tokens`."""
        text = self.render_prompt(prompt)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        placeholders = ids.count(self.video_token_id)
        if placeholders != 1:
            raise ValueError(f"A prompt must hold exactly one video, found {placeholders} {VIDEO_TOKEN} tokens.")
        # Expanding ids, not text, keeps tokenisation of a 4,608-token placeholder run cheap.
        position = ids.index(self.video_token_id)
        return ids[:position] + [self.video_token_id] * self.num_video_tokens + ids[position + 1 :]

    def caption_ids(self, caption: str) -> list[int]:
        """The supervised target: the caption's ids and the end-of-turn token."""
        return [*self.tokenizer(caption, add_special_tokens=False)["input_ids"], self.end_of_turn_id]

    def __call__(
        self,
        text: str | Messages | Sequence[str | Messages] | None = None,
        videos: VideoInput | Sequence[VideoInput] | None = None,
        captions: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
        padding_side: str | None = None,
        max_length: int | None = None,
        max_caption_tokens: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            text: the instruction for every clip, one per clip, or chat messages; defaults to `self.prompt`. A prompt
                already chat-formatted (from `apply_chat_template`, holding one `<|video_pad|>`) is used as it is.
            videos: one video or a list; each a path, or `(num_frames, H, W, 3)` uint8 RGB frames.
            captions: reference captions; when given, `labels` supervise only caption + end-of-turn tokens.
            padding_side: `"right"` for training (the default with captions), `"left"` for generation.
            max_length: longest sequence; captions are cut to fit (the prompt and video tokens never are).
            max_caption_tokens: longest supervised target (caption + end-of-turn token); longer captions are cut to
                it, and a cut caption gets no end-of-turn token, so the model is not taught to stop mid-sentence.

        Returns:
            `BatchFeature` with `input_ids` / `attention_mask` `(B, L)`, `pixel_values_videos`
            `(B, num_frames, 3, S, S)` when videos are given, and `labels` `(B, L)` when captions are.
        """
        if return_tensors != "pt":
            raise ValueError(
                f"KVCapProcessor returns PyTorch tensors only (return_tensors='pt'), got {return_tensors!r}."
            )
        video_list = _as_video_list(videos)
        caption_list = [captions] if isinstance(captions, str) else (list(captions) if captions is not None else None)
        batch_size = len(video_list) if video_list is not None else len(caption_list or _as_prompt_list(text, 1))
        prompts = _as_prompt_list(text, batch_size)
        if len(prompts) != batch_size:
            raise ValueError(f"Got {len(prompts)} prompts for {batch_size} videos.")
        if caption_list is not None and len(caption_list) != batch_size:
            raise ValueError(f"Got {len(caption_list)} captions for {batch_size} videos.")

        rows, label_rows, truncated = [], [], 0
        for index, prompt in enumerate(prompts):
            prompt_ids = self.prompt_ids(prompt)
            target_ids = self.caption_ids(caption_list[index]) if caption_list is not None else []
            room = len(target_ids)
            if max_caption_tokens is not None:
                room = min(room, max_caption_tokens)
            if max_length is not None and len(prompt_ids) + room > max_length:
                if len(prompt_ids) >= max_length:
                    raise ValueError(
                        f"max_length={max_length} leaves no room for a caption: the prompt alone is "
                        f"{len(prompt_ids)} tokens ({self.num_video_tokens} of them video tokens)."
                    )
                room = max_length - len(prompt_ids)
            if room < len(target_ids):
                target_ids = target_ids[:room]
                truncated += 1
            rows.append(prompt_ids + target_ids)
            label_rows.append([-100] * len(prompt_ids) + target_ids)
        if truncated:
            limits = ", ".join(
                f"{name}={value}"
                for name, value in (("max_caption_tokens", max_caption_tokens), ("max_length", max_length))
                if value is not None
            )
            logger.warning(f"{truncated} of {batch_size} captions were cut to fit {limits}.")

        side = padding_side or ("right" if caption_list is not None else "left")
        data = _pad(rows, label_rows, self.tokenizer.pad_token_id, side)
        if caption_list is None:
            data.pop("labels")
        if video_list is not None:
            data["pixel_values_videos"] = self.process_videos(video_list)
        return BatchFeature(data=data)

    # --- decoding ---------------------------------------------------------------------------------------------

    def batch_decode(self, generated_ids, prompt_length: int | None = None, **kwargs) -> list[str]:
        """Captions from `generate()` output: the prompt (the first `prompt_length` ids), specials and any
        thinking block are removed, and surrounding white space is stripped."""
        if prompt_length is not None:
            generated_ids = generated_ids[:, prompt_length:]
        kwargs.setdefault("skip_special_tokens", True)
        texts = self.tokenizer.batch_decode(generated_ids, **kwargs)
        return [_THINK_BLOCK.sub("", text).strip() for text in texts]

    def decode(self, generated_ids, **kwargs) -> str:
        return self.batch_decode(generated_ids[None] if generated_ids.ndim == 1 else generated_ids, **kwargs)[0]

    def post_process_video_text_to_text(self, generated_ids, prompt_length: int | None = None, **kwargs) -> list[str]:
        """Alias of `batch_decode` under the name transformers' processors use."""
        return self.batch_decode(generated_ids, prompt_length=prompt_length, **kwargs)

    def post_process_image_text_to_text(self, generated_ids, prompt_length: int | None = None, **kwargs) -> list[str]:
        """Alias of `batch_decode` under the name transformers' image-text-to-text processors use."""
        return self.batch_decode(generated_ids, prompt_length=prompt_length, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos"]


def _video_of(messages: Messages) -> Any:
    """The clip a conversation's video part names (`path`, `video` or `url`), or None."""
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "video":
                return part.get("path") or part.get("video") or part.get("url")
    return None


def _as_video_list(videos: VideoInput | Sequence[VideoInput] | None) -> list[VideoInput] | None:
    if videos is None:
        return None
    if isinstance(videos, (str, os.PathLike)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        return [videos] if videos.ndim == 4 else list(videos)
    return list(videos)


def _as_prompt_list(text: str | Messages | Sequence[str | Messages] | None, batch_size: int) -> list:
    if text is None or isinstance(text, str):
        return [text] * batch_size
    if text and isinstance(text[0], dict):  # one conversation for every clip
        return [text] * batch_size
    return list(text)


def _pad(rows: list[list[int]], label_rows: list[list[int]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        input_ids[index, span] = torch.tensor(row)
        attention_mask[index, span] = 1
        labels[index, span] = torch.tensor(label_row)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


__all__ = ["DEFAULT_CHAT_TEMPLATE", "DEFAULT_PROMPT", "KVCapProcessor"]

# Written into processor_config.json on save, so the saved folder loads with AutoProcessor + trust_remote_code.
KVCapProcessor.register_for_auto_class("AutoProcessor")
