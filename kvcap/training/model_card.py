"""The exported folder's model card: usage, the training recipe and the validation metrics."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_card(
    output_dir: str | Path, config, generation_config, training_args, metrics: dict | None = None
) -> Path:
    """README.md with usage, the training recipe and, when given, the evaluation metrics."""
    output_dir = Path(output_dir)
    hub_id = getattr(training_args, "hub_model_id", None) or "org/kvcap"
    lines = [
        "---",
        "language: ko",
        "library_name: transformers",
        "pipeline_tag: video-text-to-text",
        "tags: [kvcap, video-captioning, korean, qlora]",
        f"base_model: [{config.text_model_name_or_path}, {config.vision_model_name_or_path}]",
        "---",
        "",
        f"# kvcap — {config.projector_type}",
        "",
        "Korean video captioning: 8 frames → frozen CLIP → "
        f"`{config.projector_type}` projector ({config.num_video_tokens} video tokens) → Qwen3 with merged LoRA.",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{hub_id}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{hub_id}", trust_remote_code=True)',
        'inputs = processor(videos=["clip.mp4"])',
        "generated = model.generate(**inputs)  # kvcap's decoding policy, from generation_config.json",
        'print(processor.batch_decode(generated, prompt_length=inputs["input_ids"].shape[1])[0])',
        "```",
        "",
        "The folder's `generation_config.json` holds kvcap's decoding policy: greedy, "
        f"{generation_config.max_new_tokens} new tokens, repetition penalty "
        f"{generation_config.repetition_penalty} on generated tokens only (the model's `generate` keeps it off the "
        "prompt), the video placeholder suppressed. Pass `max_new_tokens=` and the like to `generate` to override it.",
        "",
        "To load the language model in 4-bit, pass `quantization_config=kvcap_4bit_config()` (from `modeling_kvcap`),",
        "which quantizes the language model only.",
        "",
        "## Training",
        "",
        f"- vision: `{config.vision_model_name_or_path}` (frozen, layer {config.vision_feature_layer})",
        f"- language: `{config.text_model_name_or_path}`",
        f"- stage 1: projector only, lr {training_args.stage1_learning_rate}, {training_args.stage1_epochs} epochs",
        f"- stage 2: projector + LoRA, lr {training_args.stage2_learning_rate}, {training_args.stage2_epochs} epochs",
        "- warmup 10 % + cosine per stage, grad-norm clip 1.0; LoRA merged into unquantized weights for release",
    ]
    if metrics:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---:|"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {key} | {value:.4f} |")
        lines += ["", "```json", json.dumps(metrics, ensure_ascii=False, indent=2, default=str), "```"]
    path = output_dir / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
