"""Benchmark bulk captioning of a folder: ``kvcap.captioning.caption_files`` against one clip at a time.

Both caption the same files with the same model, in one process, interleaved run by run:

* **one at a time** (the baseline): per file, decode it (``processor.load_frames``) and then caption it alone
  (``generate_captions`` with batch size 1): the decoder and the model take turns, one clip each;
* **caption_files**: what ``kvcap-caption --video_dir`` runs: ``--num_workers`` DataLoader workers decode while the
  model captions batches of ``--batch-size``, each caption appended to a journal as it is made.

Every caption is exactly ``--max-new-tokens`` tokens (the model's ``generation_config`` asks for that many as
minimum and maximum), so both paths do the same model work; the script checks that they write the same captions.
The clips are H.264 files of ``--width`` x ``--height`` and ``--frames`` frames, so decoding costs what it costs on
real footage; the model is the benchmarks' random CPU-shape kvcap (``kvcap.demo.benchmarking``).

Run from the repository root::

    python bench/bench_caption.py --clips 32 --batch-size 8 --workers 2 --runs 3 --out bench/results/caption.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kvcap.captioning import CaptionJournal, caption_files  # noqa: E402
from kvcap.demo.benchmarking import bench_model, machine_description, make_processor, write_result  # noqa: E402
from kvcap.demo.tiny_backbones import load_tokenizer  # noqa: E402
from kvcap.demo.video_clips import make_clip  # noqa: E402
from kvcap.generation import GenerationArguments, generate_captions  # noqa: E402


def one_at_a_time(model, processor, paths: list[str]) -> list[str]:
    """The baseline: decode a file, caption it alone, next file."""
    return [generate_captions(model, processor, [processor.load_frames(path)], batch_size=1)[0] for path in paths]


def with_caption_files(model, processor, paths: list[str], args: argparse.Namespace, journal_dir: Path) -> list[str]:
    """``caption_files`` with a fresh journal, as ``kvcap-caption --video_dir`` runs it."""
    journal = CaptionJournal(journal_dir / f"captions-{time.perf_counter_ns()}.jsonl", {"job": "bench"})
    rows = []
    caption_files(
        model,
        processor,
        paths,
        GenerationArguments(batch_size=args.batch_size),
        journal=journal,
        num_workers=args.workers,
        progress=False,
        on_result=rows.append,
    )
    return [row["caption"] for row in rows]


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kvcap-bench-caption-"))
    paths = [
        str(make_clip(work / f"clip_{index:03d}.mp4", width=args.width, height=args.height, num_frames=args.frames))
        for index in range(args.clips)
    ]
    tokenizer = load_tokenizer()
    model = bench_model(args.projector, tokenizer, args)
    model.generation_config.max_new_tokens = args.max_new_tokens
    model.generation_config.min_new_tokens = args.max_new_tokens  # equal work per caption on both paths
    processor = make_processor(tokenizer, model.config)
    one_at_a_time(model, processor, paths[:2])  # warm-up: first-call costs out of the timings

    times: dict[str, list[float]] = {"one at a time": [], "caption_files": []}
    captions: dict[str, list[str]] = {}
    for _ in range(args.runs):
        for name in times:
            started = time.perf_counter()
            if name == "one at a time":
                captions[name] = one_at_a_time(model, processor, paths)
            else:
                captions[name] = with_caption_files(model, processor, paths, args, work)
            times[name].append(time.perf_counter() - started)
    same = sum(a == b for a, b in zip(captions["one at a time"], captions["caption_files"], strict=True))
    baseline = statistics.median(times["one at a time"])
    lines = [
        f"{machine_description(args.device)}; {args.clips} H.264 clips of {args.width}x{args.height}, "
        f"{args.frames} frames; random CPU-shape kvcap ({args.projector}), {args.max_new_tokens} tokens per caption; "
        f"median of {args.runs} runs",
        "",
        "| path | seconds | clips/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, measured in times.items():
        seconds = statistics.median(measured)
        label = name if name == "one at a time" else f"caption_files (batch {args.batch_size}, {args.workers} workers)"
        lines.append(f"| {label} | {seconds:.2f} | {args.clips / seconds:.2f} | {baseline / seconds:.2f}x |")
    lines += ["", f"Captions identical on both paths: {same}/{args.clips}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32, help="files to caption")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--frames", type=int, default=90, help="frames per clip (3 s at 30 fps)")
    parser.add_argument("--batch-size", type=int, default=8, help="caption_files: clips per generate call")
    parser.add_argument("--workers", type=int, default=2, help="caption_files: DataLoader decoding workers")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per caption")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per path (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    parser.add_argument("--projector", default="perceiver", help="projector of the random model")
    parser.add_argument("--image-size", type=int, default=96, help="CPU shape: frame side (8 px patches)")
    parser.add_argument("--num-query-tokens", type=int, default=64, help="CPU shape: perceiver / c_abstractor")
    parser.add_argument("--text-layers", type=int, default=None)
    parser.add_argument("--vision-layers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    args.real_shape = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/bench_caption.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(command, run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
