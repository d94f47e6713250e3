"""Scoring evaluated clips: METEOR and its shuffled floor, SigLIP, diversity, attribute recall, the seed's targets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvcap.metrics.caption_diversity.caption_diversity import COLLAPSE_THRESHOLD, REPEAT_ORDER, repeated_ngrams
from kvcap.metrics.siglip_score.siglip_score import DEFAULT_MODEL as DEFAULT_SIGLIP_MODEL

from .records import ClipRecord

# The seed system's goals: METEOR > 0.40, SigLIP2 > 0.10, Diversity (unique-caption ratio) > 0.50.
SEED_TARGETS: dict[str, dict[str, Any]] = {
    "meteor": {"target": 0.40, "metric": "overall.meteor"},
    "siglip_score": {"target": 0.10, "metric": "overall.siglip_score"},
    "diversity": {"target": 0.50, "metric": "overall.diversity.unique_ratio"},
}
# Frames SigLIP sees per clip: the seed scored its 8 sampled frames.
SIGLIP_FRAMES_PER_CLIP = 8


@dataclass
class ScoringArguments:
    """How captions are scored."""

    _argument_group_name = "scoring: METEOR, SigLIP, diversity"  # the heading of these options in --help

    siglip_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"SigLIP / SigLIP2 model for vision-text alignment (e.g. {DEFAULT_SIGLIP_MODEL}); "
            "SigLIP scoring is skipped, with a note in metrics.json, when not given."
        },
    )
    meteor_tokenizer: str = field(
        default="morpheme", metadata={"help": "korean_meteor tokenizer: morpheme, whitespace or nltk."}
    )
    siglip_per_sentence: bool = field(
        default=False, metadata={"help": "Score each sentence with SigLIP and average (captions exceed 64 tokens)."}
    )
    siglip_batch_size: int = field(default=32, metadata={"help": "Frames per SigLIP forward pass."})


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def siglip_clip_scores(
    records: Sequence[ClipRecord],
    model_name_or_path: str,
    *,
    num_frames: int = SIGLIP_FRAMES_PER_CLIP,
    per_sentence: bool = False,
    batch_size: int = 32,
    chunk_clips: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """SigLIP score, cosine and CLIP-style score per clip and the floor.

    Returns ``per_clip`` (index into ``records`` → ``(siglip_score, cosine, clip_score)``; clips without a prediction
    or whose video cannot be read are absent, and the latter get ``record.video_error``), ``floor`` and
    ``truncated_fraction`` (texts longer than SigLIP's 64 tokens).

    Frames are decoded at full resolution and resized by the SigLIP processor, as the metric's authors intended.
    Clips go through the metric ``chunk_clips`` at a time so that full-resolution frames of a whole split never sit
    in memory together; the floor (each clip against another clip's caption) pairs clips within a chunk and is the
    mean over all clips. Per-clip scores do not depend on the chunking.
    """
    from tqdm.auto import tqdm

    from kvcap.metrics.siglip_score.siglip_score import load_siglip, siglip_scores
    from processing.video_io import VideoReadError, read_video_frames

    bundle = load_siglip(model_name_or_path, device=device)
    scored = [
        (i, r)
        for i, r in enumerate(records)
        if r.video_path and r.error is None and r.video_error is None and r.prediction is not None
    ]
    per_clip: dict[int, tuple[float, float, float]] = {}
    floor_sum, floor_count, truncated_sum, text_count = 0.0, 0, 0.0, 0
    floor_per_clip: dict[int, float] = {}
    for chunk in tqdm(_chunks(scored, chunk_clips), desc="kvcap: siglip", unit="chunk", disable=not progress):
        videos, kept = [], []
        for index, record in chunk:
            try:
                videos.append(read_video_frames(record.video_path, num_frames=num_frames))
                kept.append((index, record))
            except (VideoReadError, OSError) as error:
                record.video_error = str(error)
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
            if out["floor_scores"]:
                floor_per_clip[index] = out["floor_scores"][position]
        if out["floor"] is not None:
            floor_sum += out["floor"] * len(kept)
            floor_count += len(kept)
        truncated_sum += out["truncated_fraction"] * out["num_texts"]
        text_count += out["num_texts"]
    return {
        "per_clip": per_clip,
        "floor": floor_sum / floor_count if floor_count else None,
        "floor_per_clip": floor_per_clip,
        "truncated_fraction": truncated_sum / text_count if text_count else 0.0,
    }


def score_records(
    records: Sequence[ClipRecord],
    *,
    meteor_tokenizer: str = "morpheme",
    siglip: dict[str, Any] | None = None,
) -> None:
    """Fill ``record.scores`` for every clip with a prediction: METEOR, its floor pair, SigLIP, attribute recall,
    and ``repeated_4grams`` (distinct word 4-grams occurring more than once in the caption: a loop)."""
    from kvcap.metrics.caption_attributes.caption_attributes import (
        attribute_facts,
        attribute_vocabulary,
        recall_of_facts,
    )
    from kvcap.metrics.korean_meteor.korean_meteor import meteor_scores

    indexed = [(i, r) for i, r in enumerate(records) if r.prediction is not None]
    with_prediction = [r for _, r in indexed]
    # Every label's colours and shapes: a phrase from them that is not in the clip is marked wrong in the report.
    vocabulary = attribute_vocabulary([r.attributes for r in with_prediction if r.attributes])
    meteor = meteor_scores(
        [r.prediction for r in with_prediction], [r.reference for r in with_prediction], tokenizer=meteor_tokenizer
    )
    floors = meteor["floor_scores"] or [None] * len(with_prediction)
    counts = Counter(" ".join(r.prediction.split()) for r in with_prediction)
    for position, (index, record) in enumerate(indexed):
        scores: dict[str, Any] = {
            "meteor": meteor["scores"][position],
            "meteor_floor": floors[position],
            "same_caption_count": counts[" ".join(record.prediction.split())],
            "prediction_chars": len(record.prediction),
            "repeated_4grams": len(repeated_ngrams(record.prediction, REPEAT_ORDER)),
        }
        if siglip is not None:
            values = siglip["per_clip"].get(index)
            scores["siglip_score"], scores["siglip_cosine"], scores["clip_score"] = values or (None, None, None)
            scores["siglip_floor"] = siglip.get("floor_per_clip", {}).get(index)
        if record.attributes:
            facts = attribute_facts(record.prediction, record.attributes, vocabulary)
            detail = recall_of_facts(facts)
            scores["attribute_recall"] = detail["all"]
            scores["attribute_recall_detail"] = detail
            scores["attribute_facts"] = facts
        record.scores = scores


def summarize(records: Sequence[ClipRecord]) -> dict[str, Any]:
    """Means of the per-clip scores, diversity of the captions, caption lengths and how captions ended.

    Of the captions whose ``finished`` is known: ``ended_at_end_of_turn`` (share that stopped at ``<|im_end|>``) and
    ``cut_at_max_new_tokens`` (share cut at the token limit), both ``None`` when no caption's is known (a
    ``predictions.jsonl`` without it), and their counts ``num_ended_at_end_of_turn`` and
    ``num_cut_at_max_new_tokens``.
    """
    from kvcap.metrics.caption_diversity.caption_diversity import diversity

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
    at_end = sum(bool(f) for f in ended)
    summary["ended_at_end_of_turn"] = at_end / len(ended) if ended else None
    summary["num_ended_at_end_of_turn"] = at_end
    summary["num_cut_at_max_new_tokens"] = len(ended) - at_end
    return summary


def above_floor(scores: Sequence[float], floors: Sequence[float], seed: int = 0, resamples: int = 2000) -> float | None:
    """The 95 % lower bound of ``mean(scores - floors)`` over clips (paired bootstrap); ``None`` with < 2 pairs.

    Above zero means the captions score clearly better on their own clips than on other clips: the score reflects
    the video, not shared phrasing.
    """
    differences = np.asarray(scores, dtype=float) - np.asarray(floors, dtype=float)
    if differences.size < 2:
        return None
    generator = np.random.default_rng(seed)
    means = differences[generator.integers(0, differences.size, (resamples, differences.size))].mean(axis=1)
    return float(np.quantile(means, 0.05))


def seed_targets(
    overall: dict[str, Any], siglip_note: str | None, records: Sequence[ClipRecord] = ()
) -> dict[str, Any]:
    """The seed's targets with this run's values and pass/fail (``None`` where the metric was not computed).

    A score with a shuffled floor (METEOR, SigLIP) passes only when it is above its target *and* clearly above its
    floor (:func:`above_floor` > 0): a value over the target that shared phrasing alone reaches is no pass.
    """
    values = {
        "meteor": overall.get("meteor"),
        "siglip_score": overall.get("siglip_score"),
        "diversity": overall["diversity"]["unique_ratio"],
    }
    floor_keys = {"meteor": "meteor_floor", "siglip_score": "siglip_floor"}
    targets = {}
    for name, spec in SEED_TARGETS.items():
        value = values[name]
        entry = {**spec, "value": value, "passed": None if value is None else bool(value > spec["target"])}
        if name in floor_keys and value is not None:
            pairs = [
                (r.scores[name], r.scores[floor_keys[name]])
                for r in records
                if r.scores.get(name) is not None and r.scores.get(floor_keys[name]) is not None
            ]
            bound = above_floor(*zip(*pairs, strict=True)) if len(pairs) >= 2 else None
            entry["floor"] = overall.get(floor_keys[name])
            entry["above_floor_lower_95"] = bound
            entry["clearly_above_floor"] = None if bound is None else bound > 0
            if entry["passed"] and bound is None:
                entry["passed"] = None  # nothing to say it is above shared phrasing: not judged, rather than passed
                entry["note"] = "no shuffled floor to compare with (fewer than 2 clips scored)"
            elif entry["passed"] and not entry["clearly_above_floor"]:
                entry["passed"] = False
                entry["note"] = (
                    f"above the target but not clearly above its shuffled floor ({_describe(entry['floor'])}; "
                    f"95 % lower bound of the margin {_describe(bound)})"
                )
        if name == "siglip_score" and value is None:
            entry["note"] = siglip_note
        targets[name] = entry
    return targets


def _describe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def attribute_summary(records: Sequence[ClipRecord], seed: int = 0) -> dict[str, float] | None:
    """How often captions name their clip's labelled attributes, against chance (labels without them: None)."""
    from kvcap.metrics.caption_attributes.caption_attributes import attribute_report

    labelled = [r for r in records if r.prediction is not None and r.attributes]
    if not labelled:
        return None
    return attribute_report([r.prediction for r in labelled], [r.attributes for r in labelled], seed=seed)


def compute_metrics(
    records: Sequence[ClipRecord],
    *,
    meteor_tokenizer: str = "morpheme",
    siglip: dict[str, Any] | None = None,
    siglip_note: str | None = None,
) -> dict[str, Any]:
    """Score every record and return ``overall``, ``per_category``, ``targets`` and, for labelled attributes,
    ``attributes`` (recall against chance)."""
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
    targets = seed_targets(overall, siglip_note, records)
    passed = [t["passed"] for t in targets.values()]
    metrics = {
        "overall": overall,
        "per_category": per_category,
        "targets": targets,
        "all_targets_passed": None if None in passed else all(passed),
    }
    attributes = attribute_summary(records)
    if attributes is not None:
        metrics["attributes"] = attributes
    return metrics


def evaluate_records(
    records: list[ClipRecord], scoring: ScoringArguments, *, device: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Metrics of records that hold predictions; SigLIP runs when ``scoring.siglip_model_name_or_path`` is set."""
    siglip, note = None, None
    if scoring.siglip_model_name_or_path:
        siglip = siglip_clip_scores(
            records,
            scoring.siglip_model_name_or_path,
            per_sentence=scoring.siglip_per_sentence,
            batch_size=scoring.siglip_batch_size,
            device=device,
            progress=progress,
        )
        siglip_info = {
            "skipped": False,
            "model": scoring.siglip_model_name_or_path,
            "per_sentence": scoring.siglip_per_sentence,
            "frames_per_clip": SIGLIP_FRAMES_PER_CLIP,
            "truncated_fraction": siglip["truncated_fraction"],
            "floor_pairing": "each clip against another clip's caption within chunks of 16 clips",
        }
    else:
        note = (
            "SigLIP scoring skipped: no --siglip_model_name_or_path given "
            f"(the seed used SigLIP2, e.g. {DEFAULT_SIGLIP_MODEL}, which needs Hub access or a local copy)"
        )
        siglip_info = {"skipped": True, "note": note}
    metrics = compute_metrics(records, meteor_tokenizer=scoring.meteor_tokenizer, siglip=siglip, siglip_note=note)
    metrics["siglip"] = siglip_info
    metrics["meteor"] = {
        "tokenizer": scoring.meteor_tokenizer,
        "floor_pairing": "each prediction against another clip's reference (fixed derangement)",
    }
    return metrics


def token_length_stats(texts: Sequence[str], tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    """Token counts of ``texts`` (each with its ``<|im_end|>``) and the share that fits ``max_new_tokens``."""
    from processing.aihub import length_stats

    lengths = [len(ids) + 1 for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    stats = length_stats(lengths)
    return {
        "tokens_with_end_of_turn": {"mean": stats["mean"], "p95": stats["p95"], "max": stats["max"]},
        "fraction_within_max_new_tokens": sum(n <= max_new_tokens for n in lengths) / len(lengths),
        "chars_per_token": sum(len(t) for t in texts) / max(1, sum(lengths) - len(lengths)),
    }
