"""Command-line arguments of `train_hf.py`, as `HfArgumentParser` dataclasses, and YAML presets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from modeling_kvcap.configuration_kvcap import DEFAULT_TEXT_MODEL, DEFAULT_VISION_MODEL
from processing.processing_kvcap import DEFAULT_PROMPT


@dataclass
class ModelArguments:
    vision_model_name_or_path: str = field(
        default=DEFAULT_VISION_MODEL, metadata={"help": "CLIP checkpoint (Hub id or path) for the frozen vision tower."}
    )
    text_model_name_or_path: str = field(
        default=DEFAULT_TEXT_MODEL, metadata={"help": "Qwen3 causal LM checkpoint (Hub id or path)."}
    )
    projector_type: str = field(default="mlp_2l", metadata={"help": "linear | mlp_2l | perceiver | c_abstractor"})
    num_frames: int = field(default=8, metadata={"help": "Frames sampled per clip."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision hidden state fed to the projector."})
    num_query_tokens: int = field(default=64, metadata={"help": "Video tokens for perceiver / c_abstractor."})
    load_in_4bit: bool = field(default=True, metadata={"help": "Quantize the language model to 4-bit NF4 (QLoRA)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | flash_attention_2 | eager"})

    def lora_config(self):
        """LoRA on the language model's attention and MLP projections; the projector trains in full beside it."""
        from peft import LoraConfig

        from modeling_kvcap import KVCapForConditionalGeneration

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=KVCapForConditionalGeneration.lora_target_modules,
            modules_to_save=["multi_modal_projector"],
            bias="none",
        )


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={"help": "AI-Hub corpus root (either layout); required."})
    train_split: str = "train"
    eval_split: str = "val"
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation clips."})
    max_length: int | None = field(
        default=None, metadata={"help": "Longest training sequence; captions are cut to fit (counted in the log)."}
    )
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "Instruction given with every clip."})
    use_feature_cache: bool = field(
        default=True, metadata={"help": "Encode every clip once with the frozen vision tower and train on the cache."}
    )
    feature_cache_dir: str | None = field(default=None, metadata={"help": "Where cached features live."})
    demo_assets: bool = field(
        default=False,
        metadata={"help": "Build the tiny backbones and the demo corpus at the configured paths when missing."},
    )
    demo_num_train_clips: int = field(
        default=1200, metadata={"help": "Train clips of the demo corpus that --demo_assets writes."}
    )
    demo_num_val_clips: int = field(default=60, metadata={"help": "Val clips of the demo corpus."})


@dataclass
class KVCapTrainingArguments(TrainingArguments):
    stage1_epochs: int = field(default=2, metadata={"help": "Stage 1 (projector only) epochs."})
    stage1_learning_rate: float = field(default=1e-3, metadata={"help": "Stage 1 peak learning rate."})
    stage2_epochs: int = field(default=3, metadata={"help": "Stage 2 (projector + LoRA) epochs."})
    stage2_learning_rate: float = field(default=5e-5, metadata={"help": "Stage 2 peak learning rate."})
    stage_warmup_ratio: float = field(default=0.1, metadata={"help": "Warmup share of each stage."})
    diversity_num_samples: int = field(
        default=32, metadata={"help": "Validation clips captioned at each evaluation to watch for mode collapse."}
    )
    diversity_threshold: float = field(default=0.5, metadata={"help": "Unique-caption ratio below which to warn."})
    stop_on_collapse: bool = field(default=False, metadata={"help": "Stop training when diversity collapses."})
    generation_max_new_tokens: int = field(default=512, metadata={"help": "Caption length limit when generating."})
    final_eval: bool = field(default=True, metadata={"help": "Caption the validation set at the end and score it."})

    # Defaults that suit kvcap rather than the generic Trainer.
    remove_unused_columns: bool = False
    max_grad_norm: float = 1.0
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_steps: float = 10
    ddp_find_unused_parameters: bool | None = True

    def __post_init__(self):
        self.num_train_epochs = self.stage1_epochs + self.stage2_epochs
        # On unless asked otherwise, under either name (`gradient_checkpointing` is the deprecated alias): the
        # language model's activations dominate memory at real size.
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        elif None not in (self.activation_checkpointing, self.gradient_checkpointing) and (
            self.activation_checkpointing != self.gradient_checkpointing
        ):
            # The Trainer would keep activation_checkpointing and silently drop the alias (e.g. a preset's value
            # against a command-line --gradient_checkpointing).
            raise ValueError(
                f"activation_checkpointing={self.activation_checkpointing} but gradient_checkpointing="
                f"{self.gradient_checkpointing}; set activation_checkpointing only (the other is its deprecated alias)."
            )
        super().__post_init__()


def yaml_to_argv(path: str | Path) -> list[str]:
    """Turn a YAML preset into command-line words, so later command-line words override it."""
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset must be a mapping of argument names to values.")
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, KVCapTrainingArguments]:
    """`[preset.yaml] [--key value ...]` → the three argument dataclasses."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = yaml_to_argv(argv[0]) + argv[1:]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.cuda.is_available():
        # Without use_cpu the processes of a CPU launch would each train alone, silently.
        argv += ["--use_cpu", "true"]
    parser = HfArgumentParser((ModelArguments, DataArguments, KVCapTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not data_args.data_dir:
        parser.error("--data_dir (an AI-Hub corpus root) is required.")
    if training_args.push_to_hub and not training_args.hub_model_id:
        # Said now, not after hours of training when the push would fail.
        parser.error("--push_to_hub needs --hub_model_id org/name.")
    if training_args.world_size != world_size:
        raise RuntimeError(
            f"Launched as {world_size} processes but training would run with world size {training_args.world_size}."
        )
    return model_args, data_args, training_args
