"""The exported folder's model card: Hub metadata and `model-index`, usage, the training recipe, metrics and limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_kvcap import kvcap_4bit_config

from .arguments import AIHUB_CORPUS_NAME

LICENSE = "mit"
TAGS = ["kvcap", "video-captioning", "korean", "qlora"]
# (card metric key, model-index metric type, shown name)
INDEXED_METRICS = (
    ("val_meteor", "meteor", "Korean METEOR (kiwipiepy morphemes)"),
    ("val_meteor_shuffled_floor", "meteor", "Korean METEOR, shuffled-reference floor"),
    ("val_unique_ratio", "unique_ratio", "Unique-caption ratio (mode-collapse detector)"),
    ("val_distinct_2", "distinct_2", "Distinct-2"),
)


def hub_ids(*names: str | None) -> list[str]:
    """The names that are Hub ids (``org/name``), not local folders, which mean nothing on the Hub."""
    return [
        name
        for name in names
        if name and name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
    ]


def _value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) or float(value).is_integer() else f"{value:.4f}"


def _quantization_snippet() -> list[str]:
    # Written out from kvcap_4bit_config() itself: a Hub user has transformers, not this package.
    config = kvcap_4bit_config()
    skip = ", ".join(f'"{name}"' for name in config.llm_int8_skip_modules)
    return [
        "```python",
        "import torch",
        "from transformers import AutoModel, BitsAndBytesConfig",
        "",
        "quantization_config = BitsAndBytesConfig(",
        f'    load_in_4bit=True, bnb_4bit_quant_type="{config.bnb_4bit_quant_type}",',
        f"    bnb_4bit_use_double_quant={config.bnb_4bit_use_double_quant}, bnb_4bit_compute_dtype=torch.bfloat16,",
        f"    llm_int8_skip_modules=[{skip}],",
        ")",
        "model = AutoModel.from_pretrained(",
        '    MODEL_ID, trust_remote_code=True, quantization_config=quantization_config, device_map={"": 0}',
        ")",
        "```",
    ]


def card_data(
    config: Any, hub_id: str, dataset_name: str, metrics: dict[str, Any] | None, dataset_id: str | None = None
) -> ModelCardData:
    """The YAML metadata the Hub renders: language, license, library, task, tags, base models, model-index, and
    ``datasets`` when the corpus has a Hub id (AI-Hub's has none: it is then named in the model-index only)."""
    results = [
        EvalResult(
            task_type="video-text-to-text",
            task_name="Korean video captioning",
            dataset_type=dataset_id or "aihub-background-video-captions",
            dataset_name=dataset_name,
            dataset_split="val",
            metric_type=metric_type,
            metric_name=name,
            metric_value=round(float(metrics[key]), 4),
        )
        for key, metric_type, name in INDEXED_METRICS
        if metrics and metrics.get(key) is not None
    ]
    return ModelCardData(
        language="ko",
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="video-text-to-text",
        tags=[*TAGS, config.projector_type],
        base_model=hub_ids(config.text_model_name_or_path, config.vision_model_name_or_path) or None,
        datasets=[dataset_id] if dataset_id else None,
        model_name=hub_id,
        eval_results=results or None,
    )


def write_model_card(
    output_dir: str | Path,
    config: Any,
    generation_config: Any,
    training_args: Any,
    metrics: dict[str, Any] | None = None,
    dataset_name: str = AIHUB_CORPUS_NAME,
    dataset_id: str | None = None,
) -> Path:
    """README.md with Hub metadata, usage, the training recipe, the evaluation metrics (when given) and limits."""
    output_dir = Path(output_dir)
    hub_id = getattr(training_args, "hub_model_id", None) or "org/kvcap"
    lines = [
        f"# kvcap — {config.projector_type}",
        "",
        "Korean video captioning: 8 frames → frozen CLIP → "
        f"`{config.projector_type}` projector ({config.num_video_tokens} video tokens) → Qwen3 with merged LoRA.",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'captioner = pipeline(model="{hub_id}", trust_remote_code=True)',
        'print(captioner("clip.mp4")[0]["generated_text"])  # a list of paths and batch_size=8 batch them',
        "```",
        "",
        "Or with the model and processor:",
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
        "prompt), the video placeholder and the other structural tokens suppressed. Pass `max_new_tokens=` and the "
        "like to `generate` to override it.",
        "",
        "To load the language model in 4-bit NF4 (the vision tower, the projector and `lm_head` stay unquantized):",
        "",
        *[line.replace("MODEL_ID", f'"{hub_id}"') for line in _quantization_snippet()],
        "",
        "## Training",
        "",
        f"- data: {dataset_name}",
        f"- vision: `{config.vision_model_name_or_path}` (frozen, layer {config.vision_feature_layer})",
        f"- language: `{config.text_model_name_or_path}`",
        f"- stage 1: projector only, lr {training_args.stage1_learning_rate}, {training_args.stage1_epochs} epochs",
        f"- stage 2: projector + LoRA, lr {training_args.stage2_learning_rate}, {training_args.stage2_epochs} epochs",
        "- warmup 10 % + cosine per stage, grad-norm clip 1.0; LoRA merged into unquantized weights for release",
    ]
    if metrics:
        lines += ["", "## Evaluation (validation split)", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {key} | {_value(value)} |" for key, value in metrics.items()]
        lines += ["", "```json", json.dumps(metrics, ensure_ascii=False, indent=2, default=str), "```"]
    lines += [
        "",
        "## Limits",
        "",
        "- Read METEOR against its shuffled-reference floor: Korean particles and shared phrasing score well above 0.",
        "- The captions follow the training labels, which state things 8 frames cannot show (e.g. when a clip was "
        "filmed); such statements are guesses.",
        "- Which way things move is the weakest part of video captioning models; check it before relying on it.",
    ]
    card = ModelCard.from_template(
        card_data(config, hub_id, dataset_name, metrics, dataset_id),
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body="\n".join(lines),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def write_adapter_card(adapter_dir: str | Path, config: Any, hub_id: str | None = None) -> Path:
    """``adapter/README.md``: what the adapter is and the one way to load it (PEFT's blank template replaced).

    ``AutoPeftModel`` cannot load it: its base is composed of two checkpoints and a projector, which no single
    ``base_model_name_or_path`` names; the card says so and gives the load over the composed base.
    """
    adapter_dir = Path(adapter_dir)
    hub_id = hub_id or "org/kvcap"
    vision, text = config.vision_model_name_or_path, config.text_model_name_or_path
    lines = [
        f"# kvcap LoRA adapter — {config.projector_type}",
        "",
        f"The LoRA adapter of `{hub_id}`'s language model, with the trained `{config.projector_type}` projector "
        "(saved whole, as `modules_to_save`). The folder above holds the same model with LoRA merged and loads in "
        "one line; use this adapter to train on, or over your own copies of the base checkpoints.",
        "",
        "`AutoPeftModel.from_pretrained` cannot load it: the base model is composed of two checkpoints, "
        f"`{vision}` (vision) and `{text}` (language), and a projector, which no single `base_model_name_or_path` "
        "names. Compose the base with kvcap's own code (from the model repository, so kvcap need not be installed), "
        "then load the adapter over it:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoConfig",
        "from transformers.dynamic_module_utils import get_class_from_dynamic_module",
        "",
        f'MODEL_ID = "{hub_id}"',
        "config = AutoConfig.from_pretrained(MODEL_ID, trust_remote_code=True)",
        'KVCap = get_class_from_dynamic_module("modeling_kvcap.KVCapForConditionalGeneration", MODEL_ID)',
        "base = KVCap.from_pretrained_backbones(",
        "    config.vision_model_name_or_path,",
        "    config.text_model_name_or_path,",
        "    video_token_id=config.video_token_id,",
        "    **config.settings(),",
        ")",
        'model = PeftModel.from_pretrained(base, MODEL_ID, subfolder="adapter")  # is_trainable=True to train on',
        "```",
        "",
        "For 4-bit NF4, as in training, pass `quantization_config=` (the `BitsAndBytesConfig` of the model card) "
        "to `from_pretrained_backbones`.",
    ]
    card = ModelCard.from_template(
        ModelCardData(
            library_name="peft",
            license=LICENSE,
            language="ko",
            base_model=hub_ids(text, vision) or None,
            tags=[*TAGS, config.projector_type, "lora"],
        ),
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body="\n".join(lines),
    )
    path = adapter_dir / "README.md"
    card.save(path)
    return path
