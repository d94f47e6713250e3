#!/usr/bin/env python
"""Evaluate a kvcap checkpoint on an AI-Hub split, score saved predictions, or caption any video.

Evaluate (batched greedy generation with a KV cache, then every metric)::

    python eval_hf.py --model_name_or_path DIR_OR_HUB_ID --data_dir ROOT --split val --output_dir OUT \\
        [--siglip_model_name_or_path google/siglip2-so400m-patch14-384] [--max_samples N] [--batch_size B]

Score existing predictions without a model (reproduces the metrics of the run that wrote them)::

    python eval_hf.py --predictions OUT/predictions.jsonl --output_dir OUT2 [--siglip_model_name_or_path ...]

Caption videos (one line per video on stdout: path, tab, caption; ``kvcap-caption`` is the same)::

    python eval_hf.py --model_name_or_path DIR_OR_HUB_ID --video a.mp4 b.mp4
    python eval_hf.py --model_name_or_path DIR_OR_HUB_ID --video_dir ARCHIVE --output_dir OUT  # OUT/captions.jsonl

Captioning decodes in ``--num_workers`` DataLoader workers while the model generates; a file that cannot be read is
named and skipped. Every caption is appended to ``OUT/captions.jsonl`` (``--video_dir``) or, for an evaluation, to
``OUT/captions.partial.jsonl`` as it is made, and the same command resumes a killed job from there. A model folder
loads with this kvcap's own classes; its shipped code runs only with ``--trust_remote_code``.

An evaluation writes ``predictions.jsonl`` (one clip a line, with its scores), ``metrics.json`` (overall and per
category, the METEOR floor, diversity, and the seed's targets with pass/fail) and ``report.html`` (a self-contained
page: each clip's frames, caption, reference and scores, sortable; a collapse warning in the header).

Decoding follows the model's own ``generation_config`` (kvcap's: greedy, repetition penalty 1.2 on generated tokens
only, 768 new tokens; see ``modeling_kvcap.kvcap_generation_config``), exactly as a plain ``model.generate`` does;
``--max_new_tokens``, ``--repetition_penalty``, ``--do_sample`` and ``--num_beams`` override it. ``metrics.json``
records, with the model's own tokenizer, how many reference captions fit the bound and the share of generated captions
that hit it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from kvcap.captioning import VIDEO_EXTENSIONS, CaptionJournal, JournalMismatchError, caption_files, find_videos
from kvcap.corpus import EmptySplitError
from kvcap.cpu_threads import apply_cpu_threads, check_cpu_threads
from kvcap.evaluation import (
    EvaluationInputError,
    ScoringArguments,
    evaluate_model,
    headline,
    load_prediction_records,
    load_split_records,
    score_and_write,
)
from kvcap.evaluation.run import add_report_thumbnails
from kvcap.generation import (
    GenerationArguments,
    NotAModelFolderError,
    check_model_folder,
    load_model_and_processor,
)

logger = logging.getLogger("kvcap.eval")


class UsageError(Exception):
    """A command-line mistake: printed as one line naming what is wrong, exit status 2."""


# What describes the user's input (arguments, files, the corpus, a folder): one line and exit status 2, no traceback.
USER_MISTAKES = (
    UsageError,
    EvaluationInputError,
    EmptySplitError,
    JournalMismatchError,
    NotAModelFolderError,
    FileNotFoundError,
)


@dataclass
class EvalArguments:
    """What to evaluate and where the results go (with :class:`GenerationArguments` and :class:`ScoringArguments`)."""

    _argument_group_name = "what to evaluate or caption, and where results go"  # the heading of these options in --help

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "kvcap model folder (e.g. OUTPUT_DIR/final) or Hub id."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "AI-Hub corpus root (see processing.aihub)."})
    split: str = field(default="val", metadata={"help": "Split to evaluate: val, train, test (or AI-Hub names)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where predictions.jsonl, metrics.json and report.html are written."}
    )
    predictions: str | None = field(
        default=None, metadata={"help": "Score this predictions.jsonl instead of generating (no model needed)."}
    )
    video: list[str] | None = field(
        default=None, metadata={"help": "Caption these videos and print 'path<TAB>caption' per video."}
    )
    video_dir: str | None = field(
        default=None,
        metadata={
            "help": "Caption every video under this folder (recursively) into OUTPUT_DIR/captions.jsonl, "
            "resumable; also prints 'path<TAB>caption' per video."
        },
    )
    num_workers: int = field(
        default=2, metadata={"help": "DataLoader workers decoding videos while the model captions (0: in turn)."}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate this many clips, evenly spaced over the split."}
    )
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
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the Python code shipped in the model folder (needed where kvcap is not installed). Without "
            "it the folder loads with this kvcap's own classes and its code never runs."
        },
    )
    report_frame_height: int = field(default=60, metadata={"help": "Height in pixels of report.html thumbnails."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars (on stderr)."})
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Threads torch uses on CPU (default: torch's, one per physical core, or OMP_NUM_THREADS)."},
    )

    def __post_init__(self):
        check_cpu_threads(self.cpu_threads)


def caption_videos(args: EvalArguments, generation: GenerationArguments) -> int:
    """``--video`` / ``--video_dir``: caption files, printing ``path<TAB>caption`` per video as it is made.

    Videos are decoded in ``--num_workers`` DataLoader workers while the model generates. With ``--output_dir``
    every caption is also appended to ``captions.jsonl`` there, and a job killed midway resumes from it. A file
    that cannot be read (missing, a folder, not a video) is reported on stderr and skipped, not fatal.
    """
    paths = list(args.video or [])
    if args.video_dir:
        paths += find_videos(args.video_dir)
        if not paths:
            raise UsageError(f"--video_dir {args.video_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in it")
    model, processor = load_model_and_processor(
        args.model_name_or_path, args.device, args.dtype, args.load_in_4bit, args.trust_remote_code
    )
    journal = None
    if args.output_dir:
        identity = {
            "job": "captions",
            "model_name_or_path": args.model_name_or_path,
            "decoding": generation.decoding(model),
            "prompt": generation.prompt,
        }
        journal = CaptionJournal(Path(args.output_dir) / "captions.jsonl", identity)
        for row in journal.done.values():
            if row["video_path"] in paths:
                print(f"{row['video_path']}\t{' '.join(row['caption'].split())}", flush=True)

    def show(row: dict) -> None:
        if row.get("error"):
            print(f"{row['video_path']}\tERROR: {row['error']}", file=sys.stderr, flush=True)
        else:
            # One line per video: line breaks and tabs inside a caption print as spaces.
            print(f"{row['video_path']}\t{' '.join(row['caption'].split())}", flush=True)

    summary = caption_files(
        model,
        processor,
        paths,
        generation,
        journal=journal,
        num_workers=args.num_workers,
        progress=args.progress and len(paths) > generation.batch_size,
        on_result=show,
    )
    rate = f", {summary.clips_per_second:.2f} clips/s" if summary.clips_per_second else ""
    logger.info(
        f"captioned {summary.captioned} of {len(paths)} videos ({summary.resumed} done before{rate}); "
        f"{len(summary.failed)} unreadable or failed" + (f"; all in {journal.path}" if journal else "")
    )
    return 1 if summary.failed else 0


def evaluate_command(args: EvalArguments, generation: GenerationArguments, scoring: ScoringArguments) -> int:
    """Generate captions for a split (or read ``--predictions``), score them and write the three outputs."""
    source = {
        "model_name_or_path": args.model_name_or_path,
        "data_dir": args.data_dir,
        "split": args.split,
        "predictions_file": args.predictions,
        "max_samples": args.max_samples,
    }
    common = {
        "source": source,
        "title": f"kvcap · {args.model_name_or_path or args.predictions} · {args.split}",
        "frame_height": args.report_frame_height,
        "progress": args.progress,
    }
    try:
        if args.predictions:
            records = load_prediction_records(args.predictions, args.data_dir, args.split)
            for record in records:
                if record.video_path and not Path(record.video_path).is_file():
                    # The caption is still scored; only its frames and SigLIP score need the video.
                    record.video_error = f"video not found: {record.video_path}"
            add_report_thumbnails(records, args.report_frame_height)
            metrics, paths = score_and_write(records, args.output_dir, scoring, device=args.device, **common)
        else:
            records, scan = load_split_records(args.data_dir, args.split, args.max_samples)
            logger.info(f"{len(records)} clips from {args.data_dir} [{args.split}]")
            model, processor = load_model_and_processor(
                args.model_name_or_path, args.device, args.dtype, args.load_in_4bit, args.trust_remote_code
            )
            metrics, paths = evaluate_model(
                model,
                processor,
                records,
                args.output_dir,
                generation=generation,
                scoring=scoring,
                dataset_scan=scan,
                **common,
            )
    except (EvaluationInputError, JournalMismatchError):
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error
    for line in headline(metrics):
        logger.info(line)
    for path in paths.values():
        logger.info(f"wrote {path}")
    return 0


def parse_args(
    argv: Sequence[str] | None = None, captioning_only: bool = False
) -> tuple[EvalArguments, GenerationArguments, ScoringArguments]:
    """Parse and check the command line; mistakes raise :class:`UsageError`."""
    parser = HfArgumentParser((EvalArguments, GenerationArguments, ScoringArguments))
    try:
        args, generation, scoring = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    except ValueError as error:  # a dataclass's own check (e.g. batch_size < 1)
        raise UsageError(str(error)) from error
    if captioning_only and not (args.video or args.video_dir):
        raise UsageError(
            "give the videos to caption: --video PATH [PATH ...] or --video_dir DIR (kvcap-eval evaluates a split)"
        )
    if args.video or args.video_dir:
        if not args.model_name_or_path:
            raise UsageError("--video and --video_dir need --model_name_or_path")
        if args.video_dir and not args.output_dir:
            raise UsageError("--video_dir needs --output_dir (where captions.jsonl is written, and resumed from)")
        if args.num_workers < 0:
            raise UsageError(f"--num_workers must be 0 or more, got {args.num_workers}")
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
    if args.model_name_or_path:
        check_model_folder(args.model_name_or_path)  # before a split is scanned or anything loads
    return args, generation, scoring


def main(argv: Sequence[str] | None = None, captioning_only: bool = False) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some videos unreadable, 2 usage error)."""
    # The console commands (kvcap-eval, kvcap-caption) name themselves in errors; a call from Python is eval_hf.py.
    prog = Path(sys.argv[0]).name if argv is None else "eval_hf.py"
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args, generation, scoring = parse_args(argv, captioning_only)
        logger.info(apply_cpu_threads(args.cpu_threads))
        if args.video or args.video_dir:
            return caption_videos(args, generation)
        return evaluate_command(args, generation, scoring)
    except USER_MISTAKES as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


def caption_main(argv: Sequence[str] | None = None) -> int:
    """The `kvcap-caption` console command: `eval_hf.py --model_name_or_path M --video ...`, captioning only."""
    return main(argv, captioning_only=True)


if __name__ == "__main__":
    sys.exit(main())
