"""kvcap's `transformers.pipeline`: a video file (or decoded frames) in, its Korean caption out.

Every saved kvcap folder names this pipeline in its `config.json` (`custom_pipelines`) and carries this file, so
`pipeline(model="org/kvcap-mlp", trust_remote_code=True)("clip.mp4")` captions a clip with the folder's own
decoding policy (its `generation_config.json`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline


class KVCapVideoCaptioningPipeline(Pipeline):
    """The `video-captioning` pipeline: `pipe("clip.mp4")` → `[{"generated_text": caption}]`; a list of videos
    gives one such list per video. Videos are paths or `(T, H, W, 3)` uint8 frames.

    Call options: `prompt` (an instruction other than the processor's), `max_new_tokens` and `generate_kwargs`
    (override the model's `generation_config` for this call); `batch_size` batches clips into one `generate`.
    """

    _load_processor = True
    _load_tokenizer = True  # the pipeline's batching pads with it
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # pipeline() turns the class names of config.custom_pipelines into classes, in place; names again, so
        # that the model's config still prints and saves.
        for task in (getattr(self.model.config, "custom_pipelines", None) or {}).values():
            task["pt"] = [name if isinstance(name, str) else name.__name__ for name in task.get("pt", ())]

    def _sanitize_parameters(
        self,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess = {"prompt": prompt} if prompt is not None else {}
        forward = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return preprocess, forward, {}

    def preprocess(self, video: Any, prompt: str | None = None) -> dict[str, torch.Tensor]:
        """One clip as model inputs: `input_ids` / `attention_mask` `(1, L)`, `pixel_values_videos`
        `(1, T, 3, S, S)`; every clip has the same prompt, so a batch needs no padding."""
        inputs = self.processor(text=prompt, videos=[video], return_tensors="pt")
        return dict(inputs)

    def _forward(self, model_inputs: dict[str, torch.Tensor], **generate_kwargs: Any) -> dict[str, torch.Tensor]:
        prompt_length = model_inputs["input_ids"].shape[1]
        generated = self.model.generate(**model_inputs, **generate_kwargs)
        # Only the new tokens leave here: the pipeline splits a batch's outputs along the first dimension.
        return {"caption_ids": generated[:, prompt_length:]}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> list[dict[str, str]]:
        captions = self.processor.batch_decode(model_outputs["caption_ids"])
        return [{"generated_text": caption} for caption in captions]
