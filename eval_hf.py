#!/usr/bin/env python
"""Evaluate a kvcap checkpoint on an AI-Hub split, score saved predictions, or caption any video.

Evaluate (batched greedy generation with a KV cache, then every metric)::

    python eval_hf.py --model_name_or_path DIR_OR_HUB_ID --data_dir ROOT --split val --output_dir OUT \\
        [--siglip_model_name_or_path google/siglip2-so400m-patch14-384] [--max_samples N] [--batch_size B]

Score existing predictions without a model (reproduces the metrics of the run that wrote them)::

    python eval_hf.py --predictions OUT/predictions.jsonl --output_dir OUT2 [--siglip_model_name_or_path ...]

Caption videos (one line per video on stdout: path, tab, caption)::

    python eval_hf.py --model_name_or_path DIR_OR_HUB_ID --video a.mp4 b.mp4

An evaluation writes ``predictions.jsonl`` (one clip a line, with its scores), ``metrics.json`` (overall and per
category, the METEOR floor, diversity, and the seed's targets with pass/fail) and ``report.html`` (a self-contained
page: each clip's frames, caption, reference and scores, sortable; a collapse warning in the header).

Generation follows the seed: greedy decoding, repetition penalty 1.2, and ``max_new_tokens=768``. The seed's
captions average ~575 characters; Qwen3's byte-level BPE (the 151,643-token vocabulary it shares with Qwen-1/2)
writes Korean descriptive prose at 1.29 characters per token (measured on ``assets/korean_text.txt``; 1.40 on the
demo corpus' captions), so an average caption is ~450 tokens. 512 would leave only ~14 % headroom above the
*mean* and cut the longer captions (METEOR counts recall), while 768 covers ~990 characters. Greedy decoding stops
at ``<|im_end|>``, so the bound only costs time on runaway generations. ``metrics.json`` records, with the model's
own tokenizer, how many reference captions fit the bound and the share of generated captions that hit it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser

from kvcap.evaluation.report import frames_to_data_uris, write_report

DEFAULT_SIGLIP_MODEL = "google/siglip2-so400m-patch14-384"
DEFAULT_MAX_NEW_TOKENS = 768
# The seed's decoding: greedy with a repetition penalty, long enough for its ~575-character captions.
SEED_GENERATION_KWARGS: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "repetition_penalty": 1.2,
}
# The seed system's goals: METEOR > 0.40, SigLIP2 > 0.10, Diversity (unique-caption ratio) > 0.50.
SEED_TARGETS: dict[str, dict[str, Any]] = {
    "meteor": {"target": 0.40, "metric": "overall.meteor"},
    "siglip_score": {"target": 0.10, "metric": "overall.siglip_score"},
    "diversity": {"target": 0.50, "metric": "overall.diversity.unique_ratio"},
}
COLLAPSE_THRESHOLD = 0.5
METRICS_SCHEMA_VERSION = 1
# A processor loaded with trust_remote_code raises the VideoReadError of its own copy of video_io, a different class
# from processing.video_io's; both derive from RuntimeError, so that is what decoding through a processor catches.
PROCESSOR_READ_ERRORS: tuple[type[Exception], ...] = (RuntimeError, OSError)


class UsageError(Exception):
    """A command-line mistake: printed as one line naming what is wrong, exit status 2."""


@dataclass
class EvalArguments:
    """Arguments of ``eval_hf.py`` (parsed with ``HfArgumentParser``)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "kvcap checkpoint folder or Hub id (loaded with trust_remote_code)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "AI-Hub corpus root (see processing.aihub)."})
    split: str = field(default="val", metadata={"help": "Split to evaluate: val, train, test (or AI-Hub names)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where predictions.jsonl, metrics.json and report.html are written."}
    )
    predictions: str | None = field(
        default=None,
        metadata={"help": "Score this predictions.jsonl instead of generating (no model needed)."},
    )
    video: list[str] | None = field(
        default=None, metadata={"help": "Caption these videos and print 'path<TAB>caption' per video."}
    )
    siglip_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"SigLIP / SigLIP2 model for vision-text alignment (e.g. {DEFAULT_SIGLIP_MODEL}); "
            "SigLIP scoring is skipped, with a note in metrics.json, when not given."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate this many clips, evenly spaced over the split."}
    )
    batch_size: int = field(default=8, metadata={"help": "Clips per generate() call."})
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Longest caption in tokens."})
    repetition_penalty: float = field(default=1.2, metadata={"help": "As the seed: 1.2."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy)."})
    prompt: str | None = field(default=None, metadata={"help": "Instruction; the processor's default otherwise."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)."})
    dtype: str = field(
        default="auto", metadata={"help": "Model dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float32."}
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "Load the language model in 4-bit NF4 (bitsandbytes), as in training: Qwen3-8B then needs about "
            "6 GB instead of 16. A folder saved already quantized loads so without it."
        },
    )
    meteor_tokenizer: str = field(
        default="morpheme", metadata={"help": "korean_meteor tokenizer: morpheme, whitespace or nltk."}
    )
    siglip_per_sentence: bool = field(
        default=False, metadata={"help": "Score each sentence with SigLIP and average (captions exceed 64 tokens)."}
    )
    siglip_batch_size: int = field(default=32, metadata={"help": "Frames per SigLIP forward pass."})
    report_frame_height: int = field(default=60, metadata={"help": "Height in pixels of report.html thumbnails."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars (on stderr)."})


@dataclass
class GeneratedCaption:
    """One generated caption with how it ended."""

    caption: str
    num_tokens: int  # generated tokens, the end-of-turn token included when it was reached
    finished: bool  # False when generation stopped at max_new_tokens: the caption is cut


@dataclass
class ClipRecord:
    """One evaluated clip; the fields written to ``predictions.jsonl`` (thumbnails go to the report only)."""

    video_id: str
    video_path: str | None
    category: str | None
    reference: str
    prediction: str | None = None
    attributes: dict[str, Any] | None = None
    num_tokens: int | None = None
    finished: bool | None = None
    error: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    thumbnails: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("thumbnails")
        if row["attributes"] is None:
            row.pop("attributes")
        if row["error"] is None:
            row.pop("error")
        return row


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------
def _input_device(model: torch.nn.Module) -> torch.device:
    # The embedding's device is where inputs go, also for quantized or device-mapped models.
    return model.get_input_embeddings().weight.device


def _eos_ids(model: torch.nn.Module, generation_kwargs: dict[str, Any]) -> set[int]:
    eos = generation_kwargs.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def penalize_generated_tokens_only(generation_kwargs: dict[str, Any], prompt_length: int) -> dict[str, Any]:
    """``generate`` kwargs whose repetition penalty counts generated tokens only, as in the seed.

    The seed called ``generate(inputs_embeds=...)``, where transformers penalises only new tokens. Given
    ``input_ids``, transformers also penalises every prompt token, and the chat prompt holds ``<|im_end|>`` (the end
    of the user turn), the very token that ends a caption: a penalty of 1.2 on it makes captions run on. So the
    penalty moves into a ``RepetitionPenaltyLogitsProcessor`` that skips the (left-padded) prompt columns.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    kwargs = dict(generation_kwargs)
    penalty = kwargs.get("repetition_penalty")
    if penalty is None or penalty == 1.0:
        return kwargs
    # 1.0 also overrides a penalty the checkpoint's generation_config may set, so only ours applies.
    kwargs["repetition_penalty"] = 1.0
    processors = LogitsProcessorList(kwargs.get("logits_processor") or [])
    processors.append(RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_length))
    kwargs["logits_processor"] = processors
    return kwargs


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
    kwargs = {**SEED_GENERATION_KWARGS, **generation_kwargs}
    kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    eos_ids = _eos_ids(model, kwargs)
    device = _input_device(model)

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
                generated = model.generate(**inputs, **penalize_generated_tokens_only(kwargs, prompt_length))
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
        generation_kwargs: passed to ``generate`` over ``SEED_GENERATION_KWARGS`` (greedy, 768 new tokens,
            repetition penalty 1.2); ``pad_token_id`` defaults to the tokenizer's. The repetition penalty counts
            generated tokens only, as in the seed (see :func:`penalize_generated_tokens_only`).

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


def generation_kwargs_from(args: EvalArguments) -> dict[str, Any]:
    """``generate`` keyword arguments chosen on the command line."""
    return {
        "do_sample": args.do_sample,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty,
    }


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def _looks_like_local_path(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything else (absolute, relative, deeper) can only be a folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise UsageError(f"--dtype must be auto, bfloat16, float16 or float32, got {dtype!r}")
    return resolved


def load_model_and_processor(
    model_name_or_path: str, device: str | None = None, dtype: str = "auto", load_in_4bit: bool = False
) -> tuple[torch.nn.Module, Any]:
    """A saved kvcap folder (or Hub id) as ``(model, processor)``, the model in eval mode on ``device``.

    ``load_in_4bit`` quantizes the language model to NF4 on loading; a folder saved quantized stays quantized.
    """
    from transformers import AutoConfig, AutoModel, AutoProcessor

    if not Path(model_name_or_path).expanduser().exists() and _looks_like_local_path(model_name_or_path):
        raise FileNotFoundError(f"model folder not found: {model_name_or_path}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
    # Read once: it says whether the folder was saved quantized, and the model load reuses it.
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=True)
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": True, "dtype": _resolve_dtype(dtype, device)}
    if load_in_4bit:
        from modeling_kvcap import kvcap_4bit_config

        kwargs["quantization_config"] = kvcap_4bit_config(compute_dtype=kwargs["dtype"])
    saved_quantized = getattr(config, "quantization_config", None)
    if load_in_4bit or saved_quantized is not None:
        # Quantized weights cannot be moved after loading; they are placed on the device as they load.
        model = AutoModel.from_pretrained(model_name_or_path, device_map={"": device}, **kwargs)
        return model.eval(), processor
    model = AutoModel.from_pretrained(model_name_or_path, **kwargs)
    return model.to(device).eval(), processor


def _select_evenly(count: int, max_samples: int | None) -> list[int]:
    if max_samples is None or max_samples >= count:
        return list(range(count))
    if max_samples < 1:
        raise UsageError(f"--max_samples must be at least 1, got {max_samples}")
    # Evenly spaced rather than the first N: ids are often grouped by category, and a subset should keep the mix.
    return sorted({int(i) for i in np.linspace(0, count - 1, max_samples).round()})


def _attributes_of(metadata: str | None) -> dict[str, Any] | None:
    if not metadata:
        return None
    try:
        parsed = json.loads(metadata)
    except json.JSONDecodeError:
        return None
    attributes = parsed.get("attributes") if isinstance(parsed, dict) else None
    return attributes if isinstance(attributes, dict) and "objects" in attributes else None


def load_split_records(
    data_dir: str, split: str, max_samples: int | None = None
) -> tuple[list[ClipRecord], dict[str, Any]]:
    """Clips of one AI-Hub split as records, and what the corpus scan skipped (counts and paths)."""
    from processing.aihub import load_aihub

    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    dataset, report = load_aihub(data_dir, split=split, decode_video=False, return_report=True)
    split_report = next(iter(report.splits.values()))
    if len(dataset) == 0:
        where = ", ".join(split_report.split_dirs) or "no split folder"
        raise UsageError(f"no usable clips for split {split!r} under {data_dir} ({where})")
    records = []
    for index in _select_evenly(len(dataset), max_samples):
        row = dataset[index]
        records.append(
            ClipRecord(
                video_id=row["video_id"],
                video_path=row["video_path"],
                category=row["category"],
                reference=row["caption"],
                attributes=_attributes_of(row["metadata"]),
            )
        )
    scan = {
        "root": str(data_dir),
        "split": split_report.split,
        "num_usable": split_report.num_usable,
        "skipped": split_report.counts(),
        "skipped_paths": {reason: paths for reason, paths in split_report.skipped.items() if paths},
        "skipped_details": split_report.details,
    }
    return records, scan


def load_prediction_records(path: str, data_dir: str | None = None, split: str = "val") -> list[ClipRecord]:
    """Records from a ``predictions.jsonl``; with ``data_dir``, paths, categories and labels come from the corpus."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    corpus: dict[str, ClipRecord] = {}
    if data_dir is not None:
        corpus = {record.video_id: record for record in load_split_records(data_dir, split)[0]}
    records = []
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{line_number}: not JSON ({error.msg})") from error
            missing = [key for key in ("video_id", "prediction") if key not in row]
            known = corpus.get(row.get("video_id"))
            if "reference" not in row and known is None:
                missing.append("reference")
            if missing:
                raise UsageError(f"{path}:{line_number}: missing {', '.join(missing)}")
            records.append(
                ClipRecord(
                    video_id=row["video_id"],
                    video_path=known.video_path if known else row.get("video_path"),
                    category=known.category if known else row.get("category"),
                    reference=row.get("reference", known.reference if known else ""),
                    prediction=row["prediction"],
                    attributes=known.attributes if known else row.get("attributes"),
                    num_tokens=row.get("num_tokens"),
                    finished=row.get("finished"),
                )
            )
    if not records:
        raise UsageError(f"{path} holds no predictions")
    return records


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def siglip_clip_scores(
    records: Sequence[ClipRecord],
    model_name_or_path: str,
    *,
    num_frames: int = 8,
    per_sentence: bool = False,
    batch_size: int = 32,
    chunk_clips: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """SigLIP score, cosine and CLIP-style score per clip and the floor.

    Returns ``per_clip`` (index into ``records`` → ``(siglip_score, cosine, clip_score)``; clips without a prediction
    or whose video cannot be read are absent, and the latter get ``record.error``), ``floor`` and
    ``truncated_fraction`` (texts longer than SigLIP's 64 tokens).

    Frames are decoded at full resolution and resized by the SigLIP processor, as the metric's authors intended.
    Clips go through the metric ``chunk_clips`` at a time so that full-resolution frames of a whole split never sit
    in memory together; the floor (each clip against another clip's caption) pairs clips within a chunk and is the
    mean over all clips. Per-clip scores do not depend on the chunking.
    """
    from tqdm.auto import tqdm

    from metrics.siglip_score.siglip_score import load_siglip, siglip_scores
    from processing.video_io import VideoReadError, read_video_frames

    bundle = load_siglip(model_name_or_path, device=device)
    scored = [(i, r) for i, r in enumerate(records) if r.video_path and r.error is None and r.prediction is not None]
    per_clip: dict[int, tuple[float, float, float]] = {}
    floor_sum, floor_count, truncated_sum, text_count = 0.0, 0, 0.0, 0
    for chunk in tqdm(_batched(scored, chunk_clips), desc="kvcap: siglip", unit="chunk", disable=not progress):
        videos, kept = [], []
        for index, record in chunk:
            try:
                videos.append(read_video_frames(record.video_path, num_frames=num_frames))
                kept.append((index, record))
            except (VideoReadError, OSError) as error:
                record.error = str(error)
        if not kept:
            continue
        out = siglip_scores(
            bundle,
            [record.prediction for _, record in kept],
            videos,
            per_sentence=per_sentence,
            batch_size=batch_size,
            progress=False,
        )
        for position, (index, _) in enumerate(kept):
            per_clip[index] = (out["scores"][position], out["cosines"][position], out["clip_scores"][position])
        if out["floor"] is not None:
            floor_sum += out["floor"] * len(kept)
            floor_count += len(kept)
        truncated_sum += out["truncated_fraction"] * out["num_texts"]
        text_count += out["num_texts"]
    return {
        "per_clip": per_clip,
        "floor": floor_sum / floor_count if floor_count else None,
        "truncated_fraction": truncated_sum / text_count if text_count else 0.0,
    }


def score_records(
    records: Sequence[ClipRecord],
    *,
    meteor_tokenizer: str = "morpheme",
    siglip: dict[str, Any] | None = None,
) -> None:
    """Fill ``record.scores`` for every clip with a prediction: METEOR, its floor pair, SigLIP, attribute recall."""
    from metrics.korean_meteor.korean_meteor import meteor_scores

    indexed = [(i, r) for i, r in enumerate(records) if r.prediction is not None]
    with_prediction = [r for _, r in indexed]
    meteor = meteor_scores(
        [r.prediction for r in with_prediction], [r.reference for r in with_prediction], tokenizer=meteor_tokenizer
    )
    floors = meteor["floor_scores"] or [None] * len(with_prediction)
    counts = Counter(" ".join(r.prediction.split()) for r in with_prediction)
    recall = _attribute_recall_fn() if any(r.attributes for r in with_prediction) else None
    for position, (index, record) in enumerate(indexed):
        scores: dict[str, Any] = {
            "meteor": meteor["scores"][position],
            "meteor_floor": floors[position],
            "same_caption_count": counts[" ".join(record.prediction.split())],
            "prediction_chars": len(record.prediction),
        }
        if siglip is not None:
            values = siglip["per_clip"].get(index)
            scores["siglip_score"], scores["siglip_cosine"], scores["clip_score"] = values or (None, None, None)
        if recall is not None and record.attributes:
            detail = recall(record.prediction, record.attributes)
            scores["attribute_recall"] = detail["all"]
            scores["attribute_recall_detail"] = detail
        record.scores = scores


def _attribute_recall_fn() -> Any:
    # Only the demo corpus' labels carry attributes; its checker lives with the corpus generator, in the repository's
    # scripts/ (not part of an installed kvcap), so without it the score is left out rather than failing the run.
    try:
        from kvcap.demo.corpus import attribute_recall
    except ImportError:
        _log("attribute recall skipped: kvcap.demo.corpus is not importable (run from the kvcap repository)")
        return None
    return attribute_recall


def summarize(records: Sequence[ClipRecord]) -> dict[str, Any]:
    """Means of the per-clip scores, diversity of the captions and caption lengths over ``records``."""
    from metrics.caption_diversity.caption_diversity import diversity

    scored = [r for r in records if r.prediction is not None]
    summary: dict[str, Any] = {
        "num_clips": len(scored),
        "meteor": _mean([r.scores.get("meteor") for r in scored]),
        "meteor_floor": _mean([r.scores.get("meteor_floor") for r in scored]),
    }
    if summary["meteor"] is not None and summary["meteor_floor"] is not None:
        summary["meteor_above_floor"] = summary["meteor"] - summary["meteor_floor"]
    if any("siglip_score" in r.scores for r in scored):
        summary["siglip_score"] = _mean([r.scores.get("siglip_score") for r in scored])
        summary["siglip_cosine"] = _mean([r.scores.get("siglip_cosine") for r in scored])
        summary["clip_score"] = _mean([r.scores.get("clip_score") for r in scored])
    details = [r.scores["attribute_recall_detail"] for r in scored if "attribute_recall_detail" in r.scores]
    if details:
        summary["attribute_recall"] = {key: float(np.mean([d[key] for d in details])) for key in details[0]}
    summary["diversity"] = diversity([r.prediction for r in scored], collapse_threshold=COLLAPSE_THRESHOLD)
    summary["prediction_chars"] = _mean([len(r.prediction) for r in scored])
    summary["reference_chars"] = _mean([len(r.reference) for r in scored])
    ended = [r.finished for r in scored if r.finished is not None]
    summary["cut_at_max_new_tokens"] = (sum(not f for f in ended) / len(ended)) if ended else None
    return summary


def seed_targets(overall: dict[str, Any], siglip_note: str | None) -> dict[str, Any]:
    """The seed's targets with this run's values and pass/fail (``None`` where the metric was not computed)."""
    values = {
        "meteor": overall.get("meteor"),
        "siglip_score": overall.get("siglip_score"),
        "diversity": overall["diversity"]["unique_ratio"],
    }
    targets = {}
    for name, spec in SEED_TARGETS.items():
        value = values[name]
        entry = {**spec, "value": value, "passed": None if value is None else bool(value > spec["target"])}
        if name == "siglip_score" and value is None:
            entry["note"] = siglip_note
        targets[name] = entry
    return targets


def compute_metrics(
    records: Sequence[ClipRecord],
    *,
    meteor_tokenizer: str = "morpheme",
    siglip: dict[str, Any] | None = None,
    siglip_note: str | None = None,
) -> dict[str, Any]:
    """Score every record and return ``overall``, ``per_category`` and ``targets``."""
    score_records(records, meteor_tokenizer=meteor_tokenizer, siglip=siglip)
    overall = summarize(records)
    if siglip is not None:
        overall["siglip_floor"] = siglip["floor"]
        if overall.get("siglip_score") is not None and siglip["floor"] is not None:
            overall["siglip_above_floor"] = overall["siglip_score"] - siglip["floor"]
    categories = sorted({r.category or "(none)" for r in records if r.prediction is not None})
    per_category = {
        category: summarize([r for r in records if (r.category or "(none)") == category]) for category in categories
    }
    targets = seed_targets(overall, siglip_note)
    passed = [t["passed"] for t in targets.values()]
    return {
        "overall": overall,
        "per_category": per_category,
        "targets": targets,
        "all_targets_passed": None if None in passed else all(passed),
    }


def _token_length_stats(texts: Sequence[str], tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    lengths = [len(ids) + 1 for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]  # + <|im_end|>
    ordered = sorted(lengths)
    return {
        "tokens_with_end_of_turn": {
            "mean": float(np.mean(ordered)),
            "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
            "max": ordered[-1],
        },
        "fraction_within_max_new_tokens": sum(n <= max_new_tokens for n in lengths) / len(lengths),
        "chars_per_token": sum(len(t) for t in texts) / max(1, sum(lengths) - len(lengths)),
    }


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"[kvcap eval] {message}", file=sys.stderr, flush=True)


def caption_videos(args: EvalArguments) -> int:
    """``--video``: print ``path<TAB>caption`` per video on stdout; unreadable videos are reported on stderr."""
    missing = [path for path in args.video if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"video not found: {', '.join(missing)}")
    model, processor = load_model_and_processor(args.model_name_or_path, args.device, args.dtype, args.load_in_4bit)
    frames, readable, failed = [], [], 0
    for path in args.video:
        try:
            frames.append(processor.load_frames(path))
            readable.append(path)
        except PROCESSOR_READ_ERRORS as error:
            print(f"{path}\tERROR: {error}", file=sys.stderr)
            failed += 1
    if readable:
        captions = generate_captions(
            model,
            processor,
            frames,
            args.batch_size,
            prompt=args.prompt,
            progress=args.progress and len(frames) > args.batch_size,
            **generation_kwargs_from(args),
        )
        for path, caption in zip(readable, captions, strict=True):
            # One line per video: line breaks and tabs inside a caption print as spaces.
            print(f"{path}\t{' '.join(caption.split())}", flush=True)
    return 1 if failed else 0


def _thumbnails(frames: np.ndarray, height: int) -> list[str]:
    return frames_to_data_uris(frames, height=height)


def run_generation(records: list[ClipRecord], args: EvalArguments) -> dict[str, Any]:
    """Decode, thumbnail and caption every record in place; returns the generation settings and timing."""
    from tqdm.auto import tqdm

    model, processor = load_model_and_processor(args.model_name_or_path, args.device, args.dtype, args.load_in_4bit)
    kwargs = generation_kwargs_from(args)
    started = time.perf_counter()
    generated_clips = 0
    with tqdm(total=len(records), desc="kvcap: captioning", unit="clip", disable=not args.progress) as bar:
        for batch in _batched(records, args.batch_size):
            frames, ready = [], []
            for record in batch:
                try:
                    # Exactly what the processor does with a path: the same pixels as `--video` and training.
                    clip = processor.load_frames(record.video_path)
                except PROCESSOR_READ_ERRORS as error:
                    record.error = str(error)
                    continue
                record.thumbnails = _thumbnails(clip, args.report_frame_height)
                frames.append(clip)
                ready.append(record)
            if ready:
                results = generate_captions_detailed(
                    model, processor, frames, len(frames), prompt=args.prompt, **kwargs
                )
                for record, result in zip(ready, results, strict=True):
                    record.prediction = result.caption
                    record.num_tokens = result.num_tokens
                    record.finished = result.finished
                generated_clips += len(ready)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    settings = {
        **SEED_GENERATION_KWARGS,
        **kwargs,
        "repetition_penalty_applies_to": "generated tokens only (as the seed's generate(inputs_embeds=...))",
        "batch_size": args.batch_size,
        "prompt": args.prompt if args.prompt is not None else processor.prompt,
        "device": str(_input_device(model)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": round(seconds, 3),
        "captions_per_second": round(generated_clips / seconds, 4) if seconds > 0 else None,
    }
    references = [r.reference for r in records]
    settings["reference_tokens"] = _token_length_stats(references, processor.tokenizer, args.max_new_tokens)
    covered = settings["reference_tokens"]["fraction_within_max_new_tokens"]
    if covered < 0.95:
        _log(
            f"WARNING: only {100 * covered:.1f}% of the reference captions fit in max_new_tokens={args.max_new_tokens} "
            "tokens of this model's tokenizer; longer captions will be cut"
        )
    return settings


def add_report_thumbnails(records: Sequence[ClipRecord], height: int) -> None:
    """Thumbnails for records that have none yet (scoring saved predictions); unreadable videos get an error."""
    from processing.video_io import VideoReadError, read_video_frames

    for record in records:
        if record.thumbnails or record.error is not None:
            continue
        if not record.video_path:
            record.error = "no video_path"
            continue
        try:
            record.thumbnails = _thumbnails(read_video_frames(record.video_path, num_frames=8), height)
        except (VideoReadError, OSError) as error:
            record.error = str(error)


def evaluate_records(records: list[ClipRecord], args: EvalArguments, num_frames: int = 8) -> dict[str, Any]:
    """Metrics of records that hold predictions; SigLIP runs when ``args.siglip_model_name_or_path`` is set."""
    siglip, siglip_info = None, None
    if args.siglip_model_name_or_path:
        siglip = siglip_clip_scores(
            records,
            args.siglip_model_name_or_path,
            num_frames=num_frames,
            per_sentence=args.siglip_per_sentence,
            batch_size=args.siglip_batch_size,
            device=args.device,
            progress=args.progress,
        )
        siglip_info = {
            "skipped": False,
            "model": args.siglip_model_name_or_path,
            "per_sentence": args.siglip_per_sentence,
            "frames_per_clip": num_frames,
            "truncated_fraction": siglip["truncated_fraction"],
            "floor_pairing": "each clip against another clip's caption within chunks of 16 clips",
        }
        note = None
    else:
        note = (
            "SigLIP scoring skipped: no --siglip_model_name_or_path given "
            f"(the seed used SigLIP2, e.g. {DEFAULT_SIGLIP_MODEL}, which needs Hub access or a local copy)"
        )
        siglip_info = {"skipped": True, "note": note}
    metrics = compute_metrics(records, meteor_tokenizer=args.meteor_tokenizer, siglip=siglip, siglip_note=note)
    metrics["siglip"] = siglip_info
    metrics["meteor"] = {
        "tokenizer": args.meteor_tokenizer,
        "floor_pairing": "each prediction against another clip's reference (fixed derangement)",
    }
    return metrics


def _unreadable(records: Sequence[ClipRecord]) -> list[dict[str, Any]]:
    return [
        {"video_id": r.video_id, "video_path": r.video_path, "error": r.error} for r in records if r.error is not None
    ]


def write_outputs(
    output_dir: Path, records: Sequence[ClipRecord], metrics: dict[str, Any], title: str, frame_height: int = 60
) -> dict[str, Path]:
    """Write ``predictions.jsonl``, ``metrics.json`` and ``report.html``; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in ("predictions.jsonl", "metrics.json", "report.html")}
    with paths["predictions.jsonl"].open("w", encoding="utf-8") as handle:
        for record in records:
            if record.prediction is not None:
                handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    paths["metrics.json"].write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    rows = [_report_row(r) for r in records if r.prediction is not None]
    write_report(paths["report.html"], metrics, rows, title=title, frame_height=frame_height)
    return paths


def _report_row(record: ClipRecord) -> dict[str, Any]:
    return {
        "video_id": record.video_id,
        "category": record.category,
        "prediction": record.prediction,
        "reference": record.reference,
        "scores": record.scores,
        "num_tokens": record.num_tokens,
        "finished": record.finished,
        "error": record.error,
        "frames": record.thumbnails,
    }


def evaluate_command(args: EvalArguments) -> int:
    """Generate captions for a split (or read ``--predictions``), score them and write the three outputs."""
    output_dir = Path(args.output_dir)
    if args.predictions:
        records = load_prediction_records(args.predictions, args.data_dir, args.split)
        generation, scan = None, None
        for record in records:
            if record.video_path and not Path(record.video_path).is_file():
                record.error = f"video not found: {record.video_path}"
        add_report_thumbnails(records, args.report_frame_height)
    else:
        records, scan = load_split_records(args.data_dir, args.split, args.max_samples)
        _log(f"{len(records)} clips from {args.data_dir} [{args.split}]")
        generation = run_generation(records, args)
    unreadable = _unreadable(records)
    if unreadable:
        _log(f"{len(unreadable)} unreadable videos (listed in metrics.json):")
        for entry in unreadable:
            _log(f"  {entry['video_path']}: {entry['error']}")
    if not any(r.prediction is not None for r in records):
        raise UsageError("no clip could be captioned: every video was unreadable")

    metrics: dict[str, Any] = {"schema_version": METRICS_SCHEMA_VERSION}
    metrics.update(evaluate_records(records, args))
    metrics["source"] = {
        "model_name_or_path": args.model_name_or_path,
        "data_dir": args.data_dir,
        "split": args.split,
        "predictions_file": args.predictions,
        "max_samples": args.max_samples,
    }
    metrics["generation"] = generation
    metrics["num_unreadable"] = len(unreadable)
    metrics["unreadable_videos"] = unreadable
    metrics["dataset_scan"] = scan
    title = f"kvcap · {args.model_name_or_path or args.predictions} · {args.split}"
    paths = write_outputs(output_dir, records, metrics, title, args.report_frame_height)

    overall = metrics["overall"]
    _log(_headline(overall))
    if overall["diversity"]["collapsed"]:
        _log(
            f"WARNING: mode collapse: {overall['diversity']['num_unique']} unique captions "
            f"for {overall['diversity']['num_captions']} clips"
        )
    for path in paths.values():
        _log(f"wrote {path}")
    return 0


def _headline(overall: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    parts = [
        f"clips {overall['num_clips']}",
        f"METEOR {fmt(overall['meteor'])} (floor {fmt(overall['meteor_floor'])})",
    ]
    if "siglip_score" in overall:
        parts.append(f"SigLIP {fmt(overall['siglip_score'])} (floor {fmt(overall.get('siglip_floor'))})")
    parts.append(f"unique ratio {fmt(overall['diversity']['unique_ratio'])}")
    return ", ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> EvalArguments:
    """Parse and check the command line; mistakes raise :class:`UsageError`."""
    parser = HfArgumentParser(EvalArguments)
    (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    if args.video:
        if not args.model_name_or_path:
            raise UsageError("--video needs --model_name_or_path")
    elif args.predictions:
        if args.model_name_or_path:
            raise UsageError("--predictions scores existing captions; drop --model_name_or_path")
        if not args.output_dir:
            raise UsageError("--predictions needs --output_dir")
    else:
        missing = [name for name in ("model_name_or_path", "data_dir", "output_dir") if not getattr(args, name)]
        if missing:
            raise UsageError(
                f"missing {', '.join('--' + m for m in missing)} (or use --predictions FILE, or --video PATH ...)"
            )
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some videos unreadable, 2 usage error)."""
    try:
        args = parse_args(argv)
        if args.video:
            return caption_videos(args)
        return evaluate_command(args)
    except (UsageError, FileNotFoundError) as error:
        print(f"eval_hf.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
