"""Command-line arguments of `train_hf.py`, as `HfArgumentParser` dataclasses, and YAML presets."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from kvcap.cpu_threads import check_cpu_threads
from kvcap.metrics.caption_diversity.caption_diversity import COLLAPSE_THRESHOLD
from modeling_kvcap.configuration_kvcap import (
    DEFAULT_TEXT_MODEL,
    DEFAULT_VISION_MODEL,
    MODEL_SETTINGS,
    PROJECTOR_TYPES,
    TEMPORAL_ENCODINGS,
    KVCapConfig,
)
from processing.aihub import DEFAULT_MAX_CAPTION_TOKENS
from processing.processing_kvcap import DEFAULT_PROMPT

AIHUB_CORPUS_NAME = "대한민국 배경영상 상세묘사 (AI-Hub)"


@dataclass
class ModelArguments:
    _argument_group_name = "model: backbones, projector, 4-bit and LoRA"  # the heading of these options in --help

    vision_model_name_or_path: str = field(
        default=DEFAULT_VISION_MODEL, metadata={"help": "CLIP checkpoint (Hub id or path) for the frozen vision tower."}
    )
    text_model_name_or_path: str = field(
        default=DEFAULT_TEXT_MODEL, metadata={"help": "Qwen3 causal LM checkpoint (Hub id or path)."}
    )
    # The model settings (MODEL_SETTINGS), with KVCapConfig's own defaults: one definition of each.
    projector_type: str = field(default=KVCapConfig.projector_type, metadata={"help": " | ".join(PROJECTOR_TYPES)})
    num_frames: int = field(default=KVCapConfig.num_frames, metadata={"help": "Frames sampled per clip."})
    vision_feature_layer: int = field(
        default=KVCapConfig.vision_feature_layer, metadata={"help": "Vision hidden state fed to the projector."}
    )
    num_query_tokens: int = field(
        default=KVCapConfig.num_query_tokens, metadata={"help": "Video tokens for perceiver / c_abstractor."}
    )
    projector_hidden_act: str = field(
        default=KVCapConfig.projector_hidden_act, metadata={"help": "Activation of the mlp_2l projector."}
    )
    perceiver_depth: int = field(default=KVCapConfig.perceiver_depth, metadata={"help": "Perceiver resampler layers."})
    perceiver_num_heads: int = field(
        default=KVCapConfig.perceiver_num_heads, metadata={"help": "Perceiver attention heads (64 dims each)."}
    )
    abstractor_depth: int = field(
        default=KVCapConfig.abstractor_depth, metadata={"help": "C-Abstractor blocks before and after pooling."}
    )
    temporal_encoding: str = field(
        default=KVCapConfig.temporal_encoding,
        metadata={
            "help": f"How the projector marks time: {' | '.join(TEMPORAL_ENCODINGS)} (see modeling_kvcap/temporal.py)."
        },
    )
    load_in_4bit: bool = field(default=True, metadata={"help": "Quantize the language model to 4-bit NF4 (QLoRA)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | flash_attention_2 | eager"})
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights' and compute dtype: auto (bfloat16 on a GPU, float32 on CPU), bfloat16, float32."},
    )

    def model_settings(self) -> dict:
        """The `KVCapConfig` settings chosen here, passed whole to the model builder."""
        return {name: getattr(self, name) for name in MODEL_SETTINGS}

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
    _argument_group_name = "data: corpus, frames, feature cache"  # the heading of these options in --help

    data_dir: str | None = field(default=None, metadata={"help": "AI-Hub corpus root (either layout); required."})
    train_split: str = "train"
    eval_split: str = "val"
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation clips."})
    max_caption_tokens: int | None = field(
        default=DEFAULT_MAX_CAPTION_TOKENS,
        metadata={
            "help": "Longest training target in tokens (caption + end-of-turn); longer captions are cut to it, and "
            "how many is said before training. The default equals the model's generation limit."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest training sequence (prompt + video tokens + caption); captions are cut to fit. Default: "
            "no limit beyond --max_caption_tokens."
        },
    )
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "Instruction given with every clip."})
    use_feature_cache: bool = field(
        default=True, metadata={"help": "Encode every clip once with the frozen vision tower and train on the cache."}
    )
    feature_cache_dir: str | None = field(default=None, metadata={"help": "Where cached features live."})
    dataset_name: str = field(default=AIHUB_CORPUS_NAME, metadata={"help": "The corpus' name, for the model card."})
    dataset_hub_id: str | None = field(
        default=None,
        metadata={
            "help": "The corpus' Hub id (org/name), when it has one: the model card links it under `datasets`. "
            "AI-Hub's corpus has none, and is then named by --dataset_name only."
        },
    )
    prepare: dict | str | None = field(
        default=None,
        metadata={
            "help": "A data-preparation step run before the data is loaded (main process first): a mapping "
            "`{module: NAME, OPTION: VALUE...}` in a preset, or the same as JSON on the command line; NAME's "
            "`prepare(model_args, data_args, **options)` is called."
        },
    )

    def __post_init__(self):
        if isinstance(self.prepare, str):
            try:
                self.prepare = json.loads(self.prepare)
            except json.JSONDecodeError as error:
                raise ValueError(f"--prepare must be a JSON object, got {self.prepare!r} ({error.msg}).") from error
        if self.prepare is not None and not isinstance(self.prepare, dict):
            raise ValueError(f"prepare must be a mapping with a `module`, got {self.prepare!r}.")


@dataclass
class KVCapTrainingArguments(TrainingArguments):
    _argument_group_name = "training: stages, and the Trainer's own options"  # the heading of these options in --help

    stage1_epochs: int = field(default=2, metadata={"help": "Stage 1 (projector only) epochs."})
    stage1_learning_rate: float = field(default=1e-3, metadata={"help": "Stage 1 peak learning rate."})
    stage2_epochs: int = field(default=3, metadata={"help": "Stage 2 (projector + LoRA) epochs."})
    stage2_learning_rate: float = field(default=5e-5, metadata={"help": "Stage 2 peak learning rate."})
    stage_warmup_ratio: float = field(default=0.1, metadata={"help": "Warmup share of each stage."})
    diversity_num_samples: int = field(
        default=32, metadata={"help": "Validation clips captioned at each evaluation to watch for mode collapse."}
    )
    diversity_threshold: float = field(
        default=COLLAPSE_THRESHOLD, metadata={"help": "Unique-caption ratio below which to warn."}
    )
    stop_on_collapse: bool = field(default=False, metadata={"help": "Stop training when diversity collapses."})
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Caption length limit of the model's generation config (default kvcap's, 768 tokens): used by "
            "the monitor and the final evaluation, and saved with the exported model."
        },
    )
    final_eval: bool = field(default=True, metadata={"help": "Caption the validation set at the end and score it."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the previous run in a used --output_dir (its checkpoint-*, final/ and eval/ are removed). "
            "Without it, or --resume_from_checkpoint, a non-empty --output_dir is refused."
        },
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Threads torch uses on CPU (torch.set_num_threads). Default: torch's, one per physical core, or "
            "OMP_NUM_THREADS. The demo preset sets 1: its figures are exact at that count and it is not slowed by "
            "other load. Printed at the start of every run."
        },
    )

    # Defaults that suit kvcap rather than the generic Trainer.
    remove_unused_columns: bool = False
    max_grad_norm: float = 1.0
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_steps: float = 10
    ddp_find_unused_parameters: bool | None = True

    def __post_init__(self):
        check_cpu_threads(self.cpu_threads)
        # The two stages define the run's length; a different --num_train_epochs would be silently ignored.
        stages_total = self.stage1_epochs + self.stage2_epochs
        if self.num_train_epochs not in (stages_total, TrainingArguments.num_train_epochs):
            raise ValueError(
                f"num_train_epochs={self.num_train_epochs} but the stages last {self.stage1_epochs} + "
                f"{self.stage2_epochs} epochs; set stage1_epochs and stage2_epochs instead."
            )
        self.num_train_epochs = stages_total
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


ARGUMENT_CLASSES = (ModelArguments, DataArguments, KVCapTrainingArguments)


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    """The presets installed with kvcap (``kvcap/configs/NAME.yaml``), by name."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def preset_path(name_or_path: str) -> Path:
    """A preset's file: a path to a YAML file, or the name of a preset installed with kvcap (``demo``, ``mlp_2l``)."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"{path}: no such preset file (installed presets: {', '.join(preset_names())}).")
        return path
    path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(
            f"{name_or_path!r} is neither a YAML file nor an installed preset; the presets are "
            f"{', '.join(preset_names())} (in {PRESETS_DIR})."
        )
    return path


def read_preset(path: str | Path) -> dict:
    """A YAML preset as typed values, every key checked against the argument dataclasses."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        # PyYAML names the text "<unicode string>"; the user needs the file and the line.
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}).") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: a preset must be UTF-8 text ({error.reason} at byte {error.start}).") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset must be a mapping of argument names to values.")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown argument(s) {', '.join(unknown)} (see `python train_hf.py --help`).")
    return values


CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# What a run writes into its output_dir; --overwrite_output_dir removes these, and only these.
RUN_OUTPUTS = ("final", "eval")
RESUME_LAST = {"true", "last", "yes", "1"}
RESUME_NONE = {"", "false", "no", "0", "none"}


def checkpoints_in(output_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """``(complete, partial)`` checkpoint folders by step; a complete one has ``trainer_state.json``.

    A checkpoint whose save was cut short (a kill, a full disk) has no ``trainer_state.json``, written last: resuming
    from it would fail or resume wrongly, so it is never picked.
    """
    folder = Path(output_dir)
    found = (
        sorted(
            (path for path in folder.iterdir() if path.is_dir() and CHECKPOINT_NAME.match(path.name)),
            key=lambda path: int(CHECKPOINT_NAME.match(path.name).group(1)),
        )
        if folder.is_dir()
        else []
    )
    complete = [path for path in found if (path / "trainer_state.json").is_file()]
    return complete, [path for path in found if path not in complete]


def resolve_resume(value: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint`` as a folder: ``true``/``last`` is the last complete checkpoint in ``output_dir``
    (the Trainer's convention), ``false`` none, anything else a checkpoint folder that must be complete."""
    if value is None or value.strip().lower() in RESUME_NONE:
        return None
    if value.strip().lower() in RESUME_LAST:
        complete, partial = checkpoints_in(output_dir)
        if not complete:
            cut = f" ({', '.join(p.name for p in partial)} cut short, without trainer_state.json)" if partial else ""
            raise ValueError(f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint{cut}.")
        return str(complete[-1])
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    if not (path / "trainer_state.json").is_file():
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint (no trainer_state.json; its save was cut "
            "short); pass an earlier checkpoint-N or `true` for the last complete one."
        )
    return str(path)


def check_output_dir(training_args: KVCapTrainingArguments) -> None:
    """Refuse a used ``output_dir`` unless the run resumes it or replaces it: a run never destroys another."""
    folder = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint or training_args.overwrite_output_dir or not folder.is_dir():
        return
    used = sorted(path.name for path in folder.iterdir())
    if used:
        shown = ", ".join(used[:5]) + (f" and {len(used) - 5} more" if len(used) > 5 else "")
        raise ValueError(
            f"--output_dir {folder} holds a previous run ({shown}): pass --resume_from_checkpoint true to continue "
            "it, --overwrite_output_dir true to replace it, or another --output_dir."
        )


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, KVCapTrainingArguments]:
    """`[preset] [--key value ...]` → the three argument dataclasses; the command line overrides the preset.

    The preset is a YAML file or the name of one installed with kvcap (`demo`, `linear`, `mlp_2l`, `perceiver`,
    `c_abstractor`). A mistake in the arguments exits with one line naming the file or argument (`parser.error`),
    before any model loads.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    try:
        if argv and not argv[0].startswith("-"):
            # The preset's values become the parser's defaults, so they keep their YAML types and flags override them.
            parser.set_defaults(**read_preset(preset_path(argv.pop(0))))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not torch.cuda.is_available():
            # Without use_cpu the processes of a CPU launch would each train alone, silently.
            argv += ["--use_cpu", "true"]
        model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
        if not unknown:
            training_args.resume_from_checkpoint = resolve_resume(
                training_args.resume_from_checkpoint, training_args.output_dir
            )
            check_output_dir(training_args)
    except ValueError as error:
        parser.error(str(error))
    if unknown:
        parser.error(f"unknown argument(s) {' '.join(unknown)} (see --help).")
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
