"""Memory of every real preset on one 24 GB card: measured at real width on CPU, plus the arithmetic for 36 layers.

Each projector's preset trains through ``train_hf``'s own code (``kvcap.demo.real_width_run``: random real-width
CLIP-ViT-L/14-336 with 24 layers, Qwen3-8B's width with ``--text-layers`` decoder layers in NF4, LoRA r16,
activation checkpointing, an AI-Hub-length caption of 449 Qwen3 tokens, batch 1, one stage-1 and two stage-2 steps,
an evaluation after each). Measured per projector: the model's bytes by part (exact, from its tensors), the peak
resident memory of each step and evaluation. Then, for Qwen3-8B's 36 layers at the preset's batch:

* **weights** = the measured non-layer parts + 36 × the measured bytes of one NF4 decoder layer (and its LoRA);
* **optimizer** = 3 × the trainable bytes at 36 layers (gradients + AdamW's two moments, all in the parameters'
  dtype, as ``torch.optim.AdamW`` keeps them);
* **activations** = batch × (the measured step peak above the memory before training, less the optimizer's share at
  2 layers, + 34 × positions × 4,096 × 2 bytes: with activation checkpointing each further layer keeps its input);
* **captioning** (the monitor, at the preset's evaluation batch and 768 new tokens) = weights + optimizer + the
  cache of keys and values (36 layers × 2 × 8 heads × 128 × 2 bytes per position) + the measured evaluation peak
  above the memory before training, × batch.

CPU resident memory also holds what a GPU run keeps in host memory (Python, torch, the feature cache's pages), so
the activation terms are upper bounds. Run from the repository root::

    python bench/bench_memory.py --out bench/results/memory.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 2**30
HIDDEN, KV_HEADS, HEAD_DIM, LAYERS = 4096, 8, 128, 36
CARD_GIB = 24.0
CUDA_CONTEXT_GIB = 0.6  # the CUDA context and cuBLAS workspace, outside torch's allocator
MAX_NEW_TOKENS = 768
PROJECTORS = ["linear", "mlp_2l", "perceiver", "c_abstractor"]


def measure(projector: str, work: Path, backbones: Path, corpus: Path, threads: int) -> dict:
    from kvcap.demo.real_width_run import run_in_subprocess

    return run_in_subprocess(
        projector, backbones, corpus, work / projector, work / "feature-cache", "--threads", str(threads)
    )


def at_full_depth(result: dict, text_layers: int, train_batch: int, eval_batch: int) -> dict[str, float]:
    """The arithmetic of the module docstring: GiB per term at 36 layers and the preset's batches."""
    parts = result["model_bytes"]
    per_layer_4bit = parts["language_model_4bit"] / text_layers
    per_layer_lora = parts["lora"] / text_layers
    fixed = parts["language_model_other"] + parts["vision_tower"] + parts["projector"]
    weights = fixed + LAYERS * (per_layer_4bit + per_layer_lora)
    # The projector's trained copy is half of its bytes (PEFT keeps the original beside it).
    trainable = parts["projector"] / 2 + LAYERS * per_layer_lora
    trainable_measured = parts["projector"] / 2 + parts["lora"]
    optimizer = 3 * trainable
    positions = result["positions"]
    stage2_peak = max(step["peak_gib"] for step in result["steps"][1:]) * GIB
    before = result["resident_before_training_gib"] * GIB
    activation_measured = max(0.0, stage2_peak - before - 3 * trainable_measured)
    activation = activation_measured + (LAYERS - text_layers) * positions * HIDDEN * 2
    training = weights + optimizer + train_batch * activation
    evaluation_excess = max(0.0, max(result["evaluation_peaks_gib"]) * GIB - before)
    kv_cache = LAYERS * 2 * KV_HEADS * HEAD_DIM * 2 * (positions - result["supervised"] + MAX_NEW_TOKENS)
    captioning = weights + optimizer + eval_batch * (kv_cache + evaluation_excess)
    return {
        "weights": weights / GIB,
        "optimizer": optimizer / GIB,
        "activation_per_clip": activation / GIB,
        "training": training / GIB + CUDA_CONTEXT_GIB,
        "kv_cache_per_clip": kv_cache / GIB,
        "captioning": captioning / GIB + CUDA_CONTEXT_GIB,
    }


def table(results: dict[str, dict], text_layers: int) -> str:
    from kvcap.training.arguments import preset_path, read_preset

    lines = [
        f"Measured at real width on CPU ({text_layers} NF4 decoder layers, batch 1): peak resident memory per step and "
        "evaluation. Arithmetic: Qwen3-8B's 36 layers at the preset's batch on one GPU, with "
        f"{CUDA_CONTEXT_GIB} GiB for the CUDA context (see the script's docstring for every term).",
        "",
        "| preset | positions (supervised) | measured: stage 1 / stage 2 step, evaluation (GiB) | 36 layers: weights "
        "| optimizer | activations per clip | **training** at batch | **captioning** at eval batch | fits 24 GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for projector, result in results.items():
        preset = read_preset(preset_path(projector))
        train_batch, eval_batch = preset["per_device_train_batch_size"], preset["per_device_eval_batch_size"]
        full = at_full_depth(result, text_layers, train_batch, eval_batch)
        steps = result["steps"]
        fits = full["training"] < CARD_GIB and full["captioning"] < CARD_GIB
        lines.append(
            f"| {projector} | {result['positions']:,} ({result['supervised']}) | {steps[0]['peak_gib']:.2f} / "
            f"{max(step['peak_gib'] for step in steps[1:]):.2f}, {max(result['evaluation_peaks_gib']):.2f} | "
            f"{full['weights']:.2f} | {full['optimizer']:.2f} | {full['activation_per_clip']:.2f} | "
            f"**{full['training']:.1f}** at {train_batch} | **{full['captioning']:.1f}** at {eval_batch} | "
            f"{'yes' if fits else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projectors", nargs="+", default=PROJECTORS, choices=PROJECTORS)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None, help="backbones and runs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="redo only the arithmetic, from measurements saved by --json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kvcap.demo.benchmarking import write_result
    from kvcap.demo.real_width import save_real_width_backbones, write_aihub_length_corpus

    if args.from_json:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            work = args.work_dir or Path(temporary)
            save_real_width_backbones(work / "backbones", text_layers=args.text_layers)
            corpus = work / "corpus"
            if not corpus.is_dir():
                write_aihub_length_corpus(corpus)
            results = {name: measure(name, work, work / "backbones", corpus, args.threads) for name in args.projectors}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    command = "python bench/bench_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(command, table(results, args.text_layers), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
