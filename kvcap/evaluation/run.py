"""The one evaluation: caption records, score them, write ``predictions.jsonl``, ``metrics.json`` and ``report.html``.

``eval_hf.py`` runs it on a split (or on saved predictions), and training runs it on the validation split with
the exported model, so both write the same files with the same schema.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..captioning import GENERATION_FAILED, CaptionJournal, caption_decoded
from ..disk import naming_a_full_disk
from ..generation import GenerationArguments, input_device
from .records import ClipRecord
from .report import frames_to_data_uris, opens_alike, write_report
from .scoring import ScoringArguments, evaluate_records, token_length_stats

logger = logging.getLogger(__name__)

METRICS_SCHEMA_VERSION = 2
OUTPUT_FILES = ("predictions.jsonl", "metrics.json", "report.html")
# Captions appended as an evaluation makes them, until its outputs are written: what a killed run resumes from.
PARTIAL_CAPTIONS = "captions.partial.jsonl"


def video_read_error(processor: Any) -> type[Exception]:
    """The error the processor's `load_frames` raises for an unreadable clip.

    A processor loaded with trust_remote_code reads video with its own copy of video_io, whose VideoReadError is
    another class than `processing.video_io`'s; processors saved before they named it raise a RuntimeError.
    """
    return getattr(processor, "VideoReadError", RuntimeError)


def caption_records(
    records: Sequence[ClipRecord],
    model: torch.nn.Module,
    processor: Any,
    generation: GenerationArguments,
    *,
    frame_height: int = 60,
    progress: bool = True,
    journal: CaptionJournal | None = None,
) -> dict[str, Any]:
    """Decode, thumbnail and caption every record in place; returns the generation settings and timing.

    A clip that cannot be decoded gets ``record.error`` and no prediction; the others are captioned in batches of
    ``generation.batch_size`` with the model's generation config and ``generation``'s overrides. When a batch fails
    to generate, its clips are captioned one at a time, and a clip that fails alone gets ``record.error`` too.
    With a ``journal`` (keyed by ``video_id``), each batch's captions are appended to it as they are made, and the
    clips it already holds captions for are taken from it instead of generated again (a killed run resumes).
    """
    from tqdm.auto import tqdm

    kwargs = generation.generate_kwargs()
    read_error = video_read_error(processor)
    started = time.perf_counter()
    generated_clips = 0
    resumed = [record for record in records if journal is not None and record.video_id in journal.done]
    for record in resumed:
        row = journal.done[record.video_id]
        record.prediction, record.num_tokens, record.finished = row["prediction"], row["num_tokens"], row["finished"]
    add_report_thumbnails(resumed, frame_height)
    todo = [record for record in records if record.prediction is None]
    with tqdm(
        total=len(records), initial=len(resumed), desc="kvcap: captioning", unit="clip", disable=not progress
    ) as bar:
        for start in range(0, len(todo), generation.batch_size):
            batch = todo[start : start + generation.batch_size]
            frames, ready = [], []
            for record in batch:
                try:
                    # Exactly what the processor does with a path: the same pixels as `--video` and training.
                    clip = processor.load_frames(record.video_path)
                except read_error as error:
                    record.error = str(error)
                    continue
                record.thumbnails = frames_to_data_uris(clip, height=frame_height)
                frames.append(clip)
                ready.append(record)
            if ready:
                generated_clips += _caption_batch(ready, frames, model, processor, generation.prompt, kwargs)
            if journal is not None:
                journal.append([_journal_row(record) for record in batch])
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    policy = {**model.generation_config.to_dict(), **kwargs}
    settings = {
        **{
            key: policy.get(key)
            for key in ("do_sample", "num_beams", "max_new_tokens", "repetition_penalty", "suppress_tokens")
        },
        "repetition_penalty_applies_to": "generated tokens only (the model's generate)",
        "batch_size": generation.batch_size,
        "prompt": generation.prompt if generation.prompt is not None else processor.prompt,
        "device": str(input_device(model)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": round(seconds, 3),
        "captions_per_second": round(generated_clips / seconds, 4) if seconds > 0 else None,
    }
    max_new_tokens = settings["max_new_tokens"]
    if max_new_tokens is not None and records:
        references = [r.reference for r in records]
        settings["reference_tokens"] = token_length_stats(references, processor.tokenizer, max_new_tokens)
        covered = settings["reference_tokens"]["fraction_within_max_new_tokens"]
        if covered < 0.95:
            logger.warning(
                f"only {100 * covered:.1f}% of the reference captions fit in max_new_tokens={max_new_tokens} "
                "tokens of this model's tokenizer; longer captions will be cut"
            )
    return settings


def _journal_row(record: ClipRecord) -> dict[str, Any]:
    if record.prediction is None:
        return {"video_id": record.video_id, "video_path": record.video_path, "error": record.error}
    return {
        "video_id": record.video_id,
        "video_path": record.video_path,
        "prediction": record.prediction,
        "num_tokens": record.num_tokens,
        "finished": record.finished,
    }


def _caption_batch(
    records: Sequence[ClipRecord],
    frames: Sequence[Any],
    model: torch.nn.Module,
    processor: Any,
    prompt: str | None,
    kwargs: dict[str, Any],
) -> int:
    """Caption ``records`` (their decoded ``frames``) as :func:`kvcap.captioning.caption_decoded` does; returns
    how many were captioned."""
    rows = caption_decoded(
        [(record.video_path, clip) for record, clip in zip(records, frames, strict=True)],
        model,
        processor,
        prompt,
        kwargs,
    )
    for record, row in zip(records, rows, strict=True):
        if row.get("error"):
            record.error = row["error"]
        else:
            record.prediction, record.num_tokens, record.finished = row["caption"], row["num_tokens"], row["finished"]
    return sum(not row.get("error") for row in rows)


def add_report_thumbnails(records: Sequence[ClipRecord], height: int, num_frames: int = 8) -> None:
    """Thumbnails for records that have none yet (scoring saved predictions).

    A video that cannot be read sets ``record.video_error``: its caption is still scored, without frames or SigLIP.
    """
    from processing.video_io import VideoReadError, read_video_frames

    for record in records:
        if record.thumbnails or record.error is not None or record.video_error is not None:
            continue
        if not record.video_path:
            record.video_error = "no video_path"
            continue
        try:
            record.thumbnails = frames_to_data_uris(read_video_frames(record.video_path, num_frames=num_frames), height)
        except (VideoReadError, OSError) as error:
            record.video_error = str(error)


def unreadable(records: Sequence[ClipRecord]) -> list[dict[str, Any]]:
    """The clips that could not be read, with why."""
    return [
        {"video_id": r.video_id, "video_path": r.video_path, "error": r.error} for r in records if r.error is not None
    ]


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
        "video_error": record.video_error,
        "frames": record.thumbnails,
    }


def write_predictions(output_dir: str | Path, records: Sequence[ClipRecord]) -> Path:
    """``predictions.jsonl``: one line per captioned clip (with its scores once scored); returns its path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / OUTPUT_FILES[0]
    # Written whole to a side file, then renamed: a kill mid-write leaves the previous file intact.
    partial = path.with_suffix(".jsonl.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            if record.prediction is not None:
                handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def write_outputs(
    output_dir: str | Path,
    records: Sequence[ClipRecord],
    metrics: dict[str, Any],
    title: str,
    frame_height: int = 60,
) -> dict[str, Path]:
    """Write ``predictions.jsonl``, ``metrics.json`` and ``report.html``; returns their paths."""
    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in OUTPUT_FILES}
    with naming_a_full_disk(output_dir, "the evaluation's outputs", catch=OSError):
        write_predictions(output_dir, records)
        paths["metrics.json"].write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        rows = [_report_row(r) for r in records if r.prediction is not None]
        write_report(paths["report.html"], metrics, rows, title=title, frame_height=frame_height)
    return paths


def score_and_write(
    records: list[ClipRecord],
    output_dir: str | Path,
    scoring: ScoringArguments,
    *,
    source: dict[str, Any],
    generation: dict[str, Any] | None = None,
    dataset_scan: dict[str, Any] | None = None,
    title: str = "kvcap",
    frame_height: int = 60,
    device: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score captioned records and write the three outputs; returns ``(metrics, paths)``.

    The captions are written to ``predictions.jsonl`` before scoring starts, so a scorer that fails (a SigLIP model
    that cannot be loaded, out of memory) loses no generation: score them again with ``eval_hf.py --predictions``.
    Raises ``ValueError`` when no record holds a prediction (every video was unreadable).
    """
    failed = unreadable(records)
    if failed:
        logger.warning(f"{len(failed)} clips without a caption, unreadable or failed to generate (in metrics.json):")
        for entry in failed:
            logger.warning(f"  {entry['video_path']}: {entry['error']}")
    if not any(r.prediction is not None for r in records):
        raise ValueError("no clip could be captioned: every video was unreadable or failed to generate")
    predictions = write_predictions(output_dir, records)
    metrics: dict[str, Any] = {"schema_version": METRICS_SCHEMA_VERSION}
    try:
        metrics.update(evaluate_records(records, scoring, device=device, progress=progress))
    except Exception:
        logger.error(
            f"Scoring failed; the captions are kept in {predictions}: score them again with "
            f"`python eval_hf.py --predictions {predictions} --output_dir DIR`."
        )
        raise
    metrics["source"] = source
    metrics["generation"] = generation
    metrics["num_unreadable"] = len(failed)
    metrics["num_generation_failed"] = sum(entry["error"].startswith(GENERATION_FAILED) for entry in failed)
    metrics["unreadable_videos"] = failed
    not_read = [
        {"video_id": r.video_id, "video_path": r.video_path, "error": r.video_error}
        for r in records
        if r.video_error is not None
    ]
    metrics["num_videos_not_read"] = len(not_read)
    metrics["videos_not_read"] = not_read
    if not_read:
        logger.warning(
            f"{len(not_read)} captioned clips whose video could not be read (scored, without frames in the report "
            f"or SigLIP), e.g. {not_read[0]['video_path']}: {not_read[0]['error']}"
        )
    metrics["dataset_scan"] = dataset_scan
    paths = write_outputs(output_dir, records, metrics, title, frame_height)
    return metrics, paths


def evaluate_model(
    model: torch.nn.Module,
    processor: Any,
    records: list[ClipRecord],
    output_dir: str | Path,
    *,
    generation: GenerationArguments | None = None,
    scoring: ScoringArguments | None = None,
    source: dict[str, Any] | None = None,
    dataset_scan: dict[str, Any] | None = None,
    title: str = "kvcap",
    frame_height: int = 60,
    progress: bool = True,
    resume: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Caption ``records`` with ``model`` and score and write them: the whole evaluation in one call.

    Captions are appended to ``OUTPUT_DIR/captions.partial.jsonl`` as they are made; a run of the same model,
    source and decoding that was killed (or whose scoring failed) resumes from it, generating only what is
    missing. It is removed once ``predictions.jsonl``, ``metrics.json`` and ``report.html`` are written.
    ``resume=False`` starts afresh, for a caller whose model may differ under the same name (training's end).
    """
    generation = generation or GenerationArguments()
    identity = {
        "job": "evaluation",
        "source": source or {},
        "decoding": generation.decoding(model),
        "prompt": generation.prompt,
    }
    journal = CaptionJournal(Path(output_dir) / PARTIAL_CAPTIONS, identity, key="video_id", resume=resume)
    settings = caption_records(
        records, model, processor, generation, frame_height=frame_height, progress=progress, journal=journal
    )
    result = score_and_write(
        records,
        output_dir,
        scoring or ScoringArguments(),
        source=source or {},
        generation=settings,
        dataset_scan=dataset_scan,
        title=title,
        frame_height=frame_height,
        device=str(input_device(model)),
        progress=progress,
    )
    journal.remove()
    return result


def headline(metrics: dict[str, Any]) -> list[str]:
    """The lines a run prints about its evaluation: attributes against chance (when labelled), the scores, then how
    captions ended and how many repeat a word 4-gram, e.g.

    ``caption endings: 57/60 at <|im_end|> (95%), 3 cut at the token limit | captions repeating a 4-gram: 2/60
    (most repeats of one 4-gram: 3)``

    (``, N unknown`` after the cut count when some clips' ``finished`` is unknown; ``caption endings unknown
    (predictions without finished)`` when all are; no brackets when no caption repeats a 4-gram).
    """
    overall = metrics["overall"]
    lines = []
    attributes = metrics.get("attributes")
    if attributes:
        parts = [
            f"{key} {attributes[f'recall_{key}']:.0%} ({attributes[f'chance_{key}']:.0%})"
            for key in ("colour", "shape", "object", "motion", "motion_by_colour", "time_of_day", "category")
            if f"recall_{key}" in attributes
        ]
        held_out = attributes["num_held_out_objects"]
        lines.append(
            "attributes named (chance in brackets): "
            + ", ".join(parts)
            + (
                f"; objects of held-out colour x shape pairs {attributes['held_out_object_recall']:.0%} of {held_out}"
                if held_out
                else "; no objects of held-out colour x shape pairs (a split without them, e.g. train)"
            )
        )

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    diversity = overall["diversity"]
    parts = [
        f"clips {overall['num_clips']}",
        f"METEOR {fmt(overall['meteor'])} (shuffled-reference floor {fmt(overall['meteor_floor'])})",
    ]
    if "siglip_score" in overall:
        parts.append(f"SigLIP {fmt(overall['siglip_score'])} (floor {fmt(overall.get('siglip_floor'))})")
    parts.append(
        f"unique captions {diversity['num_unique']}/{diversity['num_captions']} "
        f"(ratio {diversity['unique_ratio']:.2f}) | distinct-2 {diversity['distinct_2']:.3f}"
    )
    lines.append(" | ".join(parts))

    def percent(count: int, total: int) -> str:  # whole when exact, else one decimal: 94.6 % is not shown as 95 %
        share = 100 * count / total
        return f"{share:.0f}%" if share == int(share) else f"{share:.1f}%"

    at_end = overall.get("num_ended_at_end_of_turn", 0)
    cut = overall.get("num_cut_at_max_new_tokens", 0)
    known = at_end + cut
    if known:
        endings = f"caption endings: {at_end}/{known} at <|im_end|> ({percent(at_end, known)}), {cut} cut at the "
        endings += "token limit" + (f", {overall['num_clips'] - known} unknown" if known < overall["num_clips"] else "")
    else:
        endings = "caption endings unknown (predictions without finished)"
    repeating = diversity.get("num_repeating_4gram")
    if repeating is not None:  # absent from metrics written before it existed
        endings += f" | captions repeating a 4-gram: {repeating}/{diversity['num_captions']}"
        endings += f" (most repeats of one 4-gram: {diversity['max_4gram_repeats']})" if repeating else ""
    lines.append(endings)
    if opens_alike(diversity):
        shared = round(diversity["top_opening_share"] * diversity["num_captions"])
        lines.append(
            f"WARNING: shared opening: {shared}/{diversity['num_captions']} captions begin "
            f'"{diversity["top_opening"]}" (the language model\'s prior, not the video, writes it)'
        )
    if diversity["collapsed"]:
        lines.append(
            f"WARNING: mode collapse: {diversity['num_unique']} unique captions for {diversity['num_captions']} clips"
        )
    return lines
