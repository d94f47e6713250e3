"""Train kvcap: `python train_hf.py configs/X.yaml [--key value ...]`, or the same under `accelerate launch`.

One `Trainer.train()` runs both stages (stage 1: projector, lr 1e-3, 2 epochs; stage 2: projector + LoRA,
lr 5e-5, 3 epochs). The language model is loaded in 4-bit NF4 with LoRA (r 16, alpha 32, dropout 0.05) and
gradient checkpointing; the frozen vision tower encodes every clip once into a feature cache. At every
evaluation a diversity monitor captions fixed validation clips and warns of mode collapse. The result,
`OUTPUT_DIR/final`, loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` and its processor with
`AutoProcessor`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import set_seed

from modeling_kvcap import KVCapForConditionalGeneration, kvcap_4bit_config
from processing.aihub import load_aihub
from kvcap.training.collator import KVCapDataCollator
from processing.processing_kvcap import KVCapProcessor
from kvcap.training.arguments import DataArguments, KVCapTrainingArguments, ModelArguments, parse_arguments
from kvcap.training.export import export_merged_model, push_folder, write_model_card
from kvcap.training.monitor import DiversityMonitorCallback
from kvcap.training.trainer import KVCapTrainer

logger = logging.getLogger("kvcap.train")


def model_dtype() -> torch.dtype:
    """bf16 where the hardware has it, float32 elsewhere (CPU)."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def stale_demo_backbones(vision: Path, text: Path) -> str | None:
    """Why the demo backbones at these paths must be (re)built, or None when they are current."""
    from kvcap.demo.tiny_backbones import RECIPE_VERSION, built_recipe

    if not (vision.exists() and text.exists()):
        return "missing"
    wanted = {"version": RECIPE_VERSION, "pretrained": True}
    found = built_recipe(vision.parent)
    return None if found == wanted else f"built by recipe {found}, the demo needs {wanted}"


def ensure_demo_assets(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Build the tiny backbones and the demo corpus at the configured paths when they are missing or stale."""
    from kvcap.demo.corpus import generate_corpus
    from kvcap.demo.tiny_backbones import build_tiny_backbones

    vision, text = Path(model_args.vision_model_name_or_path), Path(model_args.text_model_name_or_path)
    if vision.parent != text.parent:
        raise ValueError("With --demo_assets the vision and text backbones must share one folder.")
    reason = stale_demo_backbones(vision, text)
    if reason is not None:
        logger.info(f"Building the tiny backbones in {vision.parent} ({reason}); about two minutes.")
        built = build_tiny_backbones(vision.parent, pretrain=True)
        logger.info(f"Built tiny backbones in {vision.parent}: {', '.join(map(str, built.values()))}")
    wanted_clips = {"train": data_args.demo_num_train_clips, "val": data_args.demo_num_val_clips}
    found_clips = demo_corpus_size(Path(data_args.data_dir))
    if found_clips != wanted_clips:
        logger.info(f"Writing the demo corpus to {data_args.data_dir}: found {found_clips} clips, want {wanted_clips}")
        summary = generate_corpus(data_args.data_dir, num_train=wanted_clips["train"], num_val=wanted_clips["val"])
        logger.info(f"Wrote the demo corpus in {summary['seconds']} s.")


def demo_corpus_size(data_dir: Path) -> dict[str, int] | None:
    """Clips per split of the demo corpus in ``data_dir`` by its summary file (None when there is none)."""
    from kvcap.demo.corpus import SUMMARY_FILE

    summary = data_dir / SUMMARY_FILE
    if not summary.is_file():
        return None
    splits = json.loads(summary.read_text(encoding="utf-8"))["splits"]
    return {split: splits[split]["num_clips"] for split in ("train", "val")}


def build_model(model_args: ModelArguments, training_args: KVCapTrainingArguments):
    """kvcap composed from the backbones, LoRA on the language model, the projector trained in full."""
    dtype = model_dtype()
    quantization = kvcap_4bit_config(compute_dtype=dtype) if model_args.load_in_4bit else None
    device_map = None
    if quantization is not None and torch.cuda.is_available():
        device_map = {"": training_args.local_process_index}  # one full replica per DDP process
    model = KVCapForConditionalGeneration.from_pretrained_backbones(
        model_args.vision_model_name_or_path,
        model_args.text_model_name_or_path,
        projector_type=model_args.projector_type,
        quantization_config=quantization,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=model_args.attn_implementation,
        num_frames=model_args.num_frames,
        vision_feature_layer=model_args.vision_feature_layer,
        num_query_tokens=model_args.num_query_tokens,
    )
    if training_args.activation_checkpointing:
        training_args.activation_checkpointing_kwargs = training_args.activation_checkpointing_kwargs or {
            "use_reentrant": False
        }
    return get_peft_model(model, model_args.lora_config())


def build_processor(model_args: ModelArguments, data_args: DataArguments, config) -> KVCapProcessor:
    return KVCapProcessor.from_pretrained_backbones(
        model_args.vision_model_name_or_path,
        model_args.text_model_name_or_path,
        num_video_tokens=config.num_video_tokens,
        num_frames=config.num_frames,
        prompt=data_args.prompt,
    )


def load_split(data_args: DataArguments, split: str, limit: int | None):
    dataset = load_aihub(data_args.data_dir, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


@dataclass
class TrainingRun:
    """Everything `prepare_run` builds: train with `run.trainer.train()`, then `finish_run(run)`."""

    trainer: KVCapTrainer
    processor: KVCapProcessor
    eval_dataset: object
    model_args: ModelArguments
    data_args: DataArguments
    training_args: KVCapTrainingArguments
    push_to_hub: bool


def prepare_run(argv: list[str] | None = None) -> TrainingRun:
    """Parse arguments, build the model, the processor, the (cached) datasets and the trainer."""
    model_args, data_args, training_args = parse_arguments(argv)
    set_seed(training_args.seed)
    if data_args.demo_assets:
        with training_args.main_process_first(desc="demo assets"):
            ensure_demo_assets(model_args, data_args)

    model = build_model(model_args, training_args)
    processor = build_processor(model_args, data_args, model.get_base_model().config)
    train_dataset = load_split(data_args, data_args.train_split, data_args.max_train_samples)
    eval_dataset = load_split(data_args, data_args.eval_split, data_args.max_eval_samples)
    if data_args.use_feature_cache:
        from kvcap.training.feature_cache import cache_video_features

        encoder = model.get_base_model()
        train_dataset = cache_video_features(train_dataset, encoder, processor, cache_dir=data_args.feature_cache_dir)
        eval_dataset = cache_video_features(eval_dataset, encoder, processor, cache_dir=data_args.feature_cache_dir)

    from eval_hf import generate_captions

    def caption_fn(model, videos):
        return generate_captions(
            model,
            processor,
            videos,
            batch_size=training_args.per_device_eval_batch_size,
            max_new_tokens=training_args.generation_max_new_tokens,
        )

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
        data_collator=KVCapDataCollator(processor, max_length=data_args.max_length),
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


def finish_run(run: TrainingRun) -> dict:
    """Export `OUTPUT_DIR/final` (merged), evaluate it, write its model card, push it if asked.

    Returns the final metrics on the main process (an empty dict elsewhere).
    """
    trainer, training_args = run.trainer, run.training_args
    metrics: dict = {}
    final_dir = Path(training_args.output_dir) / "final"
    if trainer.is_world_process_zero():
        merged = export_merged_model(trainer.model, final_dir, run.processor, dtype=model_dtype())
        if training_args.final_eval:
            metrics = final_evaluation(merged, run.processor, run.eval_dataset, training_args, final_dir)
        write_model_card(final_dir, merged.config, training_args, metrics)
        logger.info(f"Final model: {final_dir}")
        if run.push_to_hub:
            url = push_folder(final_dir, training_args.hub_model_id, token=training_args.hub_token)
            logger.info(f"Pushed to {url}")
    trainer.accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """Train both stages, export `OUTPUT_DIR/final`, evaluate it; returns the final metrics."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run = prepare_run(argv)
    run.trainer.train(resume_from_checkpoint=run.training_args.resume_from_checkpoint)
    return finish_run(run)


def final_evaluation(model, processor, eval_dataset, training_args: KVCapTrainingArguments, final_dir: Path) -> dict:
    """Caption the validation clips with the exported model and print METEOR, its shuffled floor and diversity."""
    from eval_hf import generate_captions
    from metrics.caption_diversity.caption_diversity import diversity
    from metrics.korean_meteor.korean_meteor import KoreanMeteor

    predictions = generate_captions(
        model,
        processor,
        list(eval_dataset["video_path"]),
        batch_size=training_args.per_device_eval_batch_size,
        max_new_tokens=training_args.generation_max_new_tokens,
    )
    references = list(eval_dataset["caption"])
    meteor = KoreanMeteor().compute(predictions=predictions, references=references)
    spread = diversity(predictions)
    metrics = {
        "val_meteor": meteor["meteor"],
        "val_meteor_shuffled_floor": meteor["floor"],
        "val_unique_ratio": spread["unique_ratio"],
        "val_distinct_1": spread["distinct_1"],
        "val_distinct_2": spread["distinct_2"],
        "val_num_clips": len(predictions),
    }
    attributes = _labelled_attributes(eval_dataset)
    if attributes is not None:
        from kvcap.demo.corpus import attribute_report

        report = attribute_report(predictions, attributes, seed=training_args.seed)
        metrics.update({f"val_{key}": value for key, value in report.items()})
        print(
            "attributes named (chance in brackets): "
            + ", ".join(
                f"{key} {report[f'recall_{key}']:.0%} ({report[f'chance_{key}']:.0%})"
                for key in ("colour", "shape", "object", "motion", "motion_by_colour", "time_of_day", "category")
            )
            + f"; objects of held-out colour x shape pairs {report['held_out_object_recall']:.0%}"
            f" of {report['num_held_out_objects']}"
        )
    (final_dir / "eval_metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    with (final_dir / "eval_predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row, prediction in zip(eval_dataset, predictions, strict=True):
            record = {"video_id": row["video_id"], "prediction": prediction, "reference": row["caption"]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(
        f"val METEOR {metrics['val_meteor']:.4f} (shuffled-reference floor {metrics['val_meteor_shuffled_floor']:.4f}) "
        f"| unique captions {spread['num_unique']}/{len(predictions)} (ratio {spread['unique_ratio']:.2f}) "
        f"| distinct-2 {spread['distinct_2']:.3f}"
    )
    return metrics


def _labelled_attributes(eval_dataset) -> list[dict] | None:
    """Ground-truth visual attributes from the labels' metadata (the demo corpus has them), else None."""
    if "metadata" not in eval_dataset.column_names:
        return None
    attributes = []
    for metadata in eval_dataset["metadata"]:
        found = json.loads(metadata).get("attributes") if metadata else None
        if not isinstance(found, dict) or "objects" not in found:
            return None
        attributes.append(found)
    return attributes


if __name__ == "__main__":
    main(sys.argv[1:])
