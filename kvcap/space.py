"""The web demo behind ``app.py`` (a Hugging Face Space): upload a video, see its 8 sampled frames and its caption.

:func:`caption_clip` does the work, testable without a browser; :func:`build_app` lays it out with Gradio. When a
reference caption is pasted, the page also shows Korean METEOR against it (with kiwipiepy morphemes, as the
evaluation scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .generation import GenerationArguments, generate_captions_detailed, load_model_and_processor

TITLE = "kvcap · 한국어 영상 캡션"


@dataclass
class ClipCaption:
    """What the page shows for one clip: its frames ``(T, H, W, 3)``, the caption and, with a reference, METEOR."""

    frames: np.ndarray
    caption: str
    finished: bool
    meteor: float | None = None


def caption_clip(
    model: Any, processor: Any, video: str, reference: str | None = None, max_new_tokens: int | None = None
) -> ClipCaption:
    """Caption one video with the model's own decoding policy (``max_new_tokens`` overrides its length)."""
    frames = processor.load_frames(video)
    generation = GenerationArguments(batch_size=1, max_new_tokens=max_new_tokens)
    (result,) = generate_captions_detailed(model, processor, [frames], 1, **generation.generate_kwargs())
    meteor = None
    if reference and reference.strip():
        from kvcap.metrics.korean_meteor.korean_meteor import meteor_scores

        meteor = meteor_scores([result.caption], [reference.strip()])["scores"][0]
    return ClipCaption(frames=frames, caption=result.caption, finished=result.finished, meteor=meteor)


def build_app(model_name_or_path: str, device: str | None = None, trust_remote_code: bool = False) -> Any:
    """The Gradio page for one model folder or Hub id (loaded once, when the page is built)."""
    import gradio as gr

    model, processor = load_model_and_processor(model_name_or_path, device, trust_remote_code=trust_remote_code)

    def run(video: str | None, reference: str) -> tuple[list[np.ndarray], str, str]:
        if not video:
            raise gr.Error("먼저 영상을 올려 주세요 (upload a video first).")
        try:
            result = caption_clip(model, processor, video, reference)
        except processor.VideoReadError as error:
            raise gr.Error(f"영상을 읽을 수 없습니다: {error.reason}") from error
        cut = "" if result.finished else " (cut at the length limit)"
        score = "" if result.meteor is None else f"METEOR against the reference: **{result.meteor:.4f}**"
        return list(result.frames), result.caption + cut, score

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\n`{model_name_or_path}`: 8 frames → CLIP → projector → Qwen3")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="영상 (video)", sources=["upload"])
                reference = gr.Textbox(label="참조 캡션 (reference, optional)", lines=3)
                button = gr.Button("캡션 생성 (caption)", variant="primary", elem_id="caption-button")
            with gr.Column():
                frames = gr.Gallery(label="샘플링된 8 프레임 (sampled frames)", columns=4, height="auto")
                caption = gr.Textbox(label="캡션 (caption)", lines=6, elem_id="caption-output")
                score = gr.Markdown(elem_id="meteor-output")
        button.click(run, inputs=[video, reference], outputs=[frames, caption, score])
    return app


def launch_options() -> dict[str, Any]:
    """``launch()`` options every run of the page shares: system fonts (a Space may run offline, and the default
    theme fetches its fonts from the web). Analytics are switched off by ``app.py`` before Gradio is imported."""
    import gradio as gr

    return {"theme": gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])}
