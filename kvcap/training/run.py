"""One training run, step by step: prepare the data, build the model and datasets, train, export, evaluate, push."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import set_seed

from modeling_kvcap import KVCapForConditionalGeneration, kvcap_4bit_config
from processing.processing_kvcap import KVCapProcessor

from ..bitsandbytes_notice import note_cpu_4bit
from ..corpus import open_split
from ..cpu_threads import apply_cpu_threads, cpu_bf16_warning
from ..evaluation import ScoringArguments, evaluate_model, headline, records_from_dataset
from ..generation import GenerationArguments, generate_captions, load_model_and_processor, resolve_dtype
from .arguments import (
    RUN_OUTPUTS,
    DataArguments,
    KVCapTrainingArguments,
    ModelArguments,
    checkpoints_in,
    parse_arguments,
)
from .collator import KVCapDataCollator, note_long_captions
from .export import check_hub_push, export_merged_model, gather_trained_state, push_folder
from .model_card import write_adapter_card, write_model_card
from .monitor import DiversityMonitorCallback
from .tensorboard import captions_markdown, log_to_tensorboard
from .trainer import KVCapTrainer

logger = logging.getLogger(__name__)


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def kvcap_log_level(training_args: KVCapTrainingArguments) -> int:
    """``--log_level`` on the main process (``passive``: INFO), ``--log_level_replica`` (default warning) elsewhere,
    so a DDP run prints each of kvcap's lines once."""
    if training_args.should_log:
        return LOG_LEVELS.get(str(training_args.log_level), logging.INFO)
    return LOG_LEVELS.get(str(training_args.log_level_replica), logging.WARNING)


def run_preparation(model_args: ModelArguments, data_args: DataArguments) -> None:
    """The preset's data-preparation step (`prepare: {module: NAME, ...}`), when it names one."""
    if not data_args.prepare:
        return
    options = dict(data_args.prepare)
    name = options.pop("module", None)
    if not name:
        raise ValueError(f"prepare needs a `module` naming the preparation step, got {data_args.prepare}.")
    step = getattr(importlib.import_module(name), "prepare", None)
    if not callable(step):
        raise ValueError(f"prepare: module {name} has no prepare(model_args, data_args, **options) function.")
    step(model_args, data_args, **options)


def build_model(model_args: ModelArguments, training_args: KVCapTrainingArguments) -> Any:
    """kvcap composed from the backbones, LoRA on the language model, the projector trained in full."""
    dtype = resolve_dtype(model_args.dtype)
    # accelerate's launcher announces FSDP in the environment; `--fsdp` is the Trainer's own way to ask for it.
    sharded = bool(training_args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    quantization = None
    if model_args.load_in_4bit:
        # FSDP shards 4-bit weights only when their packed bytes are held in a floating dtype (as uint8, accelerate
        # leaves them whole on every rank), and it casts floating weights to its mixed-precision dtype as it gathers
        # them: bytes held in any other dtype would be converted, not kept. So they are held in the dtype FSDP
        # gathers in: the mixed-precision one, else the model's.
        gathered = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training_args.mixed_precision, dtype)
        quantization = kvcap_4bit_config(compute_dtype=dtype, quant_storage=gathered if sharded else None)
    # Under FSDP no device map: bitsandbytes quantizes onto the process's own GPU (which the launcher made current)
    # and FSDP, not a map, places the weights.
    device_map = None
    if quantization is not None and torch.cuda.is_available() and not sharded:
        device_map = {"": training_args.local_process_index}  # one full replica per DDP process
    elif quantization is not None and not torch.cuda.is_available():
        note_cpu_4bit(logger)
    model = KVCapForConditionalGeneration.from_pretrained_backbones(
        model_args.vision_model_name_or_path,
        model_args.text_model_name_or_path,
        quantization_config=quantization,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=model_args.attn_implementation,
        **model_args.model_settings(),
    )
    if training_args.generation_max_new_tokens is not None:
        # Stored with the model: the monitor, the final evaluation and the exported folder all read it there.
        model.generation_config.max_new_tokens = training_args.generation_max_new_tokens
    if training_args.activation_checkpointing:
        training_args.activation_checkpointing_kwargs = training_args.activation_checkpointing_kwargs or {
            "use_reentrant": False
        }
    return get_peft_model(model, model_args.lora_config())


def build_processor(model_args: ModelArguments, data_args: DataArguments, config: Any) -> KVCapProcessor:
    return KVCapProcessor.from_pretrained_backbones(
        model_args.vision_model_name_or_path,
        model_args.text_model_name_or_path,
        num_video_tokens=config.num_video_tokens,
        num_frames=config.num_frames,
        prompt=data_args.prompt,
    )


def load_split(data_args: DataArguments, split: str, limit: int | None) -> Any:
    """One split of the corpus; without the feature cache every clip is demuxed first (``probe``), since training
    then decodes clips as it batches them and a truncated file must be skipped now, not met at its step."""
    video_check = "header" if data_args.use_feature_cache else "probe"
    dataset, _ = open_split(data_args.data_dir, split, video_check=video_check)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


@dataclass
class TrainingRun:
    """Everything `prepare_run` builds: train with `run.trainer.train()`, then `finish_run(run)`."""

    trainer: KVCapTrainer
    processor: KVCapProcessor
    eval_dataset: Any
    model_args: ModelArguments
    data_args: DataArguments
    training_args: KVCapTrainingArguments
    push_to_hub: bool


def clear_previous_run(output_dir: str | Path) -> None:
    """``--overwrite_output_dir``: remove the previous run's checkpoints, ``final/`` and ``eval/``, saying so.

    Only what a run writes goes; anything else in the folder stays. Without this, checkpoint rotation would delete
    the old run's checkpoints one by one, and a resume could pick the other run's last checkpoint.
    """
    folder = Path(output_dir)
    complete, partial = checkpoints_in(folder)
    doomed = [*complete, *partial, *(folder / name for name in RUN_OUTPUTS if (folder / name).exists())]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if doomed:
        names = ", ".join(path.name for path in doomed)
        logger.warning(f"--overwrite_output_dir: removed the previous run's {names} in {folder}")


def prepare_run(argv: list[str] | None = None) -> TrainingRun:
    """Parse arguments, prepare the data, build the model, the processor, the (cached) datasets and the trainer."""
    model_args, data_args, training_args = parse_arguments(argv)
    logging.getLogger("kvcap").setLevel(kvcap_log_level(training_args))
    # First, so that the preparation step (the demo's pretraining) runs under the same policy as training.
    logger.info(apply_cpu_threads(training_args.cpu_threads))
    slow_bf16 = cpu_bf16_warning(training_args.bf16, training_args.device.type == "cpu")
    if slow_bf16:
        logger.warning(slow_bf16)
    if training_args.overwrite_output_dir and training_args.process_index == 0:
        clear_previous_run(training_args.output_dir)
    if training_args.push_to_hub and training_args.process_index == 0:
        check_hub_push(training_args.hub_model_id, training_args.hub_token, training_args.hub_private_repo)
    with training_args.main_process_first(desc="data preparation"):
        run_preparation(model_args, data_args)
    # Seeded after the preparation step: a run draws the same numbers whether it built its assets or found them.
    set_seed(training_args.seed)

    # Both splits are opened before the model loads: a missing folder or an empty split is said in seconds.
    train_dataset = load_split(data_args, data_args.train_split, data_args.max_train_samples)
    eval_dataset = load_split(data_args, data_args.eval_split, data_args.max_eval_samples)
    model = build_model(model_args, training_args)
    processor = build_processor(model_args, data_args, model.get_base_model().config)
    if data_args.use_feature_cache:
        from .feature_cache import cache_video_features

        encoder = model.get_base_model()
        # The Trainer's --disable_tqdm turns the cache's bar off too.
        options = {"cache_dir": data_args.feature_cache_dir, "progress": not training_args.disable_tqdm}
        train_dataset = cache_video_features(train_dataset, encoder, processor, **options)
        eval_dataset = cache_video_features(eval_dataset, encoder, processor, **options)

    for split, dataset in ((data_args.train_split, train_dataset), (data_args.eval_split, eval_dataset)):
        note_long_captions(dataset["caption"], processor, data_args.max_caption_tokens, split)

    def caption_fn(model: torch.nn.Module, videos: list) -> list[str]:
        return generate_captions(model, processor, videos, batch_size=training_args.per_device_eval_batch_size)

    monitor = DiversityMonitorCallback(
        videos=list(eval_dataset["video_path"][: training_args.diversity_num_samples]),
        caption_fn=caption_fn,
        threshold=training_args.diversity_threshold,
        stop_on_collapse=training_args.stop_on_collapse,
    )
    # The Trainer's own hub push would upload adapter checkpoints; the exported folder is pushed instead.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = KVCapTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=KVCapDataCollator(
            processor, max_length=data_args.max_length, max_caption_tokens=data_args.max_caption_tokens
        ),
        processing_class=processor,
        callbacks=[monitor],
    )
    monitor.trainer = trainer
    args = training_args
    logger.info(
        f"kvcap training on {args.world_size} process(es): global batch {args.world_size} x "
        f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} (accumulation) = "
        f"{args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps} clips per step"
    )
    return TrainingRun(trainer, processor, eval_dataset, model_args, data_args, training_args, push_to_hub)


def card_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The validation figures a model card shows, from an evaluation's ``metrics.json``."""
    overall = metrics["overall"]
    diversity = overall["diversity"]
    found = {
        "val_meteor": overall["meteor"],
        "val_meteor_shuffled_floor": overall["meteor_floor"],
        "val_unique_ratio": diversity["unique_ratio"],
        "val_distinct_1": diversity["distinct_1"],
        "val_distinct_2": diversity["distinct_2"],
        "val_num_clips": overall["num_clips"],
    }
    found.update({f"val_{key}": value for key, value in (metrics.get("attributes") or {}).items()})
    return found


def release_optimizer_memory(trainer: KVCapTrainer) -> None:
    """Free the optimizer's state and the device's cached blocks once training is over, before the final
    evaluation loads the exported model on the same device (the trained model itself stays)."""
    trainer.optimizer = None
    trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def final_evaluation(run: TrainingRun) -> dict[str, Any]:
    """`kvcap.evaluation` on the validation split with the exported model, written to `OUTPUT_DIR/eval/`.

    The exported folder is loaded as ``eval_hf.py --model_name_or_path OUTPUT_DIR/final`` loads it, on the device
    training ran on, in 4-bit when training was (``--load_in_4bit``: the merged bf16 model of the 8B presets does
    not fit a 24 GB card beside its cache of keys and values), and captions with the same decoding.
    """
    args = run.training_args
    final_dir = Path(args.output_dir) / "final"
    device, load_in_4bit = str(args.device), run.model_args.load_in_4bit
    model, processor = load_model_and_processor(
        str(final_dir), device=device, dtype=run.model_args.dtype, load_in_4bit=load_in_4bit
    )
    logger.info(f"Final evaluation of {final_dir} on {device}" + (" (language model in 4-bit)" if load_in_4bit else ""))
    metrics, paths = evaluate_model(
        model,
        processor,
        records_from_dataset(run.eval_dataset),
        Path(args.output_dir) / "eval",
        generation=GenerationArguments(batch_size=args.per_device_eval_batch_size),
        scoring=ScoringArguments(),
        source={
            "model_name_or_path": str(final_dir),
            "data_dir": run.data_args.data_dir,
            "split": run.data_args.eval_split,
            "device": device,
            "load_in_4bit": load_in_4bit,
        },
        title=f"kvcap · {Path(args.output_dir).name} · {run.data_args.eval_split}",
        progress=False,
        resume=False,  # OUTPUT_DIR/final is this run's model; captions of an earlier one must not be reused
    )
    for line in headline(metrics):
        print(line)
    logger.info(f"Final evaluation: {', '.join(map(str, paths.values()))}")
    log_final_evaluation(run.trainer, metrics, paths["predictions.jsonl"])
    return metrics


def log_final_evaluation(trainer: Any, metrics: dict[str, Any], predictions: Path, num_captions: int = 16) -> None:
    """The final evaluation's figures and its first captions, beside the run's TensorBoard events (if any)."""
    rows = []
    with predictions.open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) == num_captions:
                break
            rows.append(json.loads(line))
    scalars = {f"final/{key.removeprefix('val_')}": value for key, value in card_metrics(metrics).items()}
    log_dir = log_to_tensorboard(
        trainer, trainer.state.global_step, scalars, {"final/captions": captions_markdown(rows)}
    )
    if log_dir is not None:
        logger.info(f"Final figures and {len(rows)} sample captions written to TensorBoard in {log_dir}")


def finish_run(run: TrainingRun) -> dict[str, Any]:
    """Export `OUTPUT_DIR/final` (merged), evaluate it, write its model card, push it if asked.

    Returns the final evaluation's metrics (as in its `metrics.json`) on the main process, an empty dict elsewhere.
    """
    trainer, training_args = run.trainer, run.training_args
    metrics: dict[str, Any] = {}
    final_dir = Path(training_args.output_dir) / "final"
    # Under FSDP every rank holds a shard of the trained weights: all of them take part in gathering them.
    trained_state = gather_trained_state(trainer.model)
    if trainer.is_world_process_zero():
        release_optimizer_memory(trainer)
        dtype = resolve_dtype(run.model_args.dtype)
        merged = export_merged_model(trainer.model, final_dir, run.processor, dtype=dtype, trained_state=trained_state)
        config, generation_config = merged.config, merged.generation_config
        del merged  # a CPU copy of the whole model in bf16 (16 GB at real size); the evaluation loads its own
        gc.collect()
        if training_args.final_eval:
            metrics = final_evaluation(run)
        card = card_metrics(metrics) if metrics else None
        write_model_card(
            final_dir,
            config,
            generation_config,
            training_args,
            card,
            run.data_args.dataset_name,
            run.data_args.dataset_hub_id,
        )
        write_adapter_card(final_dir / "adapter", config, training_args.hub_model_id)
        logger.info(f"Final model: {final_dir}")
        if run.push_to_hub:
            url = push_folder(
                final_dir,
                training_args.hub_model_id,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
            )
            logger.info(f"Pushed to {url}")
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        # A gloo group left to the interpreter's exit sometimes aborts a rank there ("terminate called without an
        # active exception"), failing a run that has finished.
        torch.distributed.destroy_process_group()
    return metrics
