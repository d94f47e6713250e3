"""Benchmark kvcap training steps: cached features vs decoding + encoding on the fly vs the seed's padded loop.

Every path runs the training step of ``train_hf.py``: kvcap with PEFT LoRA (r 16, alpha 32, dropout 0.05 on the
language model's attention and MLP projections, ``modules_to_save=["multi_modal_projector"]``), AdamW over kvcap's
two parameter groups, gradient clipping at 1.0; a step is batch assembly (the collator), forward, backward and the
optimizer step. ``--stages`` picks what learns: stage 1 the projector only (lr 1e-3), stage 2 the projector and LoRA
(lr 5e-5, the default on the CPU shape). Three input paths, same batch size, same clips in the same order, same
number of steps:

* **cached**: ``cache_video_features`` encodes every clip once (float16 Arrow, as ``train_hf.py`` does);
  ``KVCapDataCollator`` stacks the ``video_features`` rows and the vision tower never runs in training;
* **on the fly**: ``KVCapDataCollator`` gets ``video_path`` rows: every step decodes the clips
  (``read_video_frames``), preprocesses them and runs the frozen vision tower;
* **seed**: the seed's loop on the same cached features: per sample, the prompt's text embeddings, the projected
  video tokens and the caption's embeddings are concatenated in Python (``torch.cat``), every sample is padded to
  one fixed ``max_length`` (pad-token embeddings, attention mask 0, labels -100) and the batch goes to the model as
  ``inputs_embeds``. The seed's own ``max_length`` is not recorded; the default is the longest sequence of the
  training split (prompt with its video tokens + the longest caption), the shortest fixed length that cuts no
  caption, so any value the seed may have used is at least as slow; ``--seed-caption-tokens N`` pads to the prompt
  + N instead. The projector runs once on the batch (the generous reading: only the concatenation and padding are
  per sample).

Each path is measured ``--repeats`` times (interleaved), each time ``--warmup`` untimed then ``--steps`` timed
steps; the table gives medians. Throughput counts non-pad tokens (prompt, video and caption tokens); every path
sees the same ones, so the ratios against the seed are the same for steps/s, samples/s and tokens/s.

Memory. On the CPU each measurement runs in its own process, so the peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) is that measurement's alone: model, optimizer, activations, decoder buffers
and memory-mapped cache pages it read. ``tracemalloc`` is not used: it sees Python's allocator only, not tensors. On
CUDA it is ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (weights included), reset before each
measurement's steps.

MFU (model FLOPs utilisation) counts useful work only: ``kvcap.demo.benchmarking.TrainingFlops`` gives the formula
(frozen base weights 2 FLOPs per weight and token forward + 2 backward for input gradients, LoRA 6 in stage 2 and 4
in stage 1, ``lm_head`` only at the supervised positions, PaLM's attention count, the projector's forward and
backward counted by ``torch.utils.flop_counter``, the vision tower's forward on the on-the-fly path only).
Activation-checkpointing recomputation and padding are not model FLOPs. MFU = model FLOPs per second divided by the
GPU's dense bf16 peak (detected from its name, or ``--peak-tflops``); on the CPU only the achieved rate is given.

Shapes:

* default (CPU): ``kvcap.demo.benchmarking``'s random CLIP 128 wide x 4 layers on 96 px frames in 8 px patches
  (144 patches, 1,152 video tokens per clip for linear / mlp_2l, 64 for perceiver / c_abstractor) and Qwen3 256 wide
  x 4 layers, float32, with the shipped tiny Korean tokenizer and a 64-clip demo corpus (``generate_corpus``),
  batch 8, activation checkpointing off (as the demo preset);
* ``--real-shape``: the presets' setting. CLIP-ViT-L/14-336 + Qwen3-8B randomly initialised on the device
  (``kvcap.demo.benchmarking.real_width_model``: bf16, the language model's linear layers in 4-bit NF4 per
  ``kvcap_4bit_config``, the projector in float32), LoRA r / alpha / dropout, learning rates and the per-device batch
  from ``kvcap/configs/{projector}.yaml`` (linear / mlp_2l 2, perceiver / c_abstractor 8), bf16 autocast,
  activation checkpointing on; Qwen3's real tokenizer, and every clip's caption an AI-Hub-length paragraph
  (``aihub_like_caption``: ~575 characters, ~450 Qwen3 tokens); the cached path only and stages 1 and 2 unless
  ``--paths`` / ``--stages`` say otherwise. ``--text-layers`` (alias ``--lm-layers``) / ``--vision-layers`` shrink
  it; ``--no-load-in-4bit`` keeps the language model in bf16.

Run from the repository root::

    python bench/bench_train.py --threads 1
    python bench/bench_train.py --real-shape --device cuda
    python bench/bench_train.py --real-shape --device cpu --text-layers 2 --projectors perceiver c_abstractor \\
        --batch-size 1 --warmup 0 --steps 1 --repeats 1 --num-train 2 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from torch.utils.data import DataLoader  # noqa: E402

from kvcap.demo.benchmarking import (  # noqa: E402
    TrainingFlops,
    bench_model,
    machine_description,
    make_processor,
    peak_bf16_tflops,
    peak_memory,
    preset_values,
    training_flops,
    training_model,
    write_result,
)
from kvcap.demo.corpus import generate_corpus  # noqa: E402
from kvcap.demo.qwen3_tokenizer import aihub_like_caption, load_qwen3_tokenizer  # noqa: E402
from kvcap.demo.tiny_backbones import load_tokenizer  # noqa: E402
from kvcap.training.collator import KVCapDataCollator  # noqa: E402
from kvcap.training.feature_cache import cache_video_features  # noqa: E402
from kvcap.training.stages import StageSchedule, apply_stage, build_stage_optimizer, stage_parameter_groups  # noqa: E402
from modeling_kvcap import PROJECTOR_TYPES  # noqa: E402
from processing.aihub import load_aihub  # noqa: E402
from processing.processing_kvcap import KVCapProcessor  # noqa: E402

PATHS = ("cached", "on_the_fly", "seed")
PATH_LABELS = {"cached": "cached features", "on_the_fly": "on the fly (decode + encode)", "seed": "seed loop"}
RESULT_MARKER = "KVCAP_BENCH_TRAIN_RESULT "
CPU_SHAPE_BATCH_SIZE = 8


@dataclass
class Setup:
    """Everything one projector's measurements share: model, processor, datasets and the seed's prompt pieces."""

    model: Any
    processor: KVCapProcessor
    videos: Any
    cached: Any
    device: torch.device
    autocast_dtype: torch.dtype | None
    batch_size: int
    learning_rates: dict[int, float]
    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor
    seed_max_length: int
    flops: TrainingFlops
    info: dict[str, Any]
    initial_weights: dict[str, torch.Tensor]


# --- model and data ------------------------------------------------------------------------------------------


def preset_for(projector_type: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The projector's training preset at real shape (batch, LoRA, learning rates); the CPU shape uses defaults."""
    return preset_values(projector_type) if args.real_shape else None


def batch_size_for(projector_type: str, args: argparse.Namespace) -> int:
    if args.batch_size:
        return args.batch_size
    preset = preset_for(projector_type, args)
    return int(preset["per_device_train_batch_size"]) if preset else CPU_SHAPE_BATCH_SIZE


def bench_tokenizer(args: argparse.Namespace) -> Any:
    """Qwen3's tokenizer at real shape (real prompt and caption lengths), the shipped tiny one on the CPU shape."""
    return load_qwen3_tokenizer() if args.real_shape else load_tokenizer()


def build_lora_model(projector_type: str, tokenizer: Any, args: argparse.Namespace) -> Any:
    """Random kvcap at the chosen shape with ``kvcap.training.run.build_model``'s LoRA wrapping, in train mode."""
    model = bench_model(projector_type, tokenizer, args)
    # from_pretrained_backbones keeps the trainable projector in float32 whatever the backbones' dtype.
    model.model.multi_modal_projector.float()
    preset = preset_for(projector_type, args)
    return training_model(model, preset, stage=2, gradient_checkpointing=args.gradient_checkpointing)


def prepare_corpus(work_dir: Path, args: argparse.Namespace) -> Path:
    """The synthetic demo corpus in the AI-Hub layout (written once per run, reused by every worker)."""
    corpus = work_dir / "corpus"
    if not (corpus / "train").exists():
        generate_corpus(corpus, num_train=args.num_train, num_val=1, seed=args.seed, size=args.clip_size)
    return corpus


def training_videos(work_dir: Path, args: argparse.Namespace) -> Any:
    """The corpus' training split; at real shape each caption is replaced by an AI-Hub-length paragraph."""
    videos = load_aihub(work_dir / "corpus", split="train")
    if args.real_shape:
        captions = [aihub_like_caption(args.seed + index) for index in range(len(videos))]
        videos = videos.remove_columns("caption").add_column("caption", captions)
    return videos


def make_setup(projector_type: str, args: argparse.Namespace, work_dir: Path, encode: bool = True) -> Setup:
    """Build model, processor and both datasets; ``encode=False`` requires the feature cache to be complete."""
    tokenizer = bench_tokenizer(args)
    model = build_lora_model(projector_type, tokenizer, args)
    base = model.get_base_model()
    processor = make_processor(tokenizer, base.config)
    videos = training_videos(work_dir, args)
    batch_size = batch_size_for(projector_type, args)
    cached = cache_video_features(
        videos,
        base,
        processor,
        cache_dir=work_dir / "feature-cache",
        batch_size=batch_size,
        max_shards=None if encode else 0,
        progress=False,
    )
    prompt = torch.tensor(processor.prompt_ids())
    video_positions = (prompt == processor.video_token_id).nonzero().flatten()
    caption_lengths = [len(processor.caption_ids(caption)) for caption in videos["caption"]]
    seed_max_length = len(prompt) + (args.seed_caption_tokens or max(caption_lengths))
    device = torch.device(args.device)
    flops = training_flops(model, count_vision="on_the_fly" in args.paths)
    preset = preset_for(projector_type, args) or {}
    schedule = StageSchedule(0, 0)  # the stages' default learning rates, as the presets set them
    trainable = {name for group in stage_parameter_groups(model).values() for name, _ in group}
    return Setup(
        model=model,
        processor=processor,
        videos=videos,
        cached=cached,
        device=device,
        autocast_dtype=torch.bfloat16 if args.real_shape else None,
        batch_size=batch_size,
        learning_rates={
            1: float(preset.get("stage1_learning_rate", schedule.stage1_learning_rate)),
            2: float(preset.get("stage2_learning_rate", schedule.stage2_learning_rate)),
        },
        prefix_ids=prompt[: video_positions[0]].to(device),
        suffix_ids=prompt[video_positions[-1] + 1 :].to(device),
        seed_max_length=seed_max_length,
        flops=flops,
        info={
            **flops.as_dict(),
            "video_tokens": base.config.num_video_tokens,
            "prompt_tokens": len(prompt),
            "caption_tokens": statistics.mean(caption_lengths),
            "batch_size": batch_size,
            "seed_max_length": seed_max_length,
        },
        # Both stages' trainable weights (LoRA too), so every measurement starts from the same ones.
        initial_weights={name: param.detach().clone() for name, param in model.named_parameters() if name in trainable},
    )


class SeedCollator:
    """The seed's dataset side: the rows' cached features stacked, each caption's token ids (unpadded)."""

    def __init__(self, processor: KVCapProcessor):
        self.processor = processor

    def __call__(self, rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[list[int]]]:
        features = torch.stack([torch.as_tensor(row["video_features"]) for row in rows])
        return features, [self.processor.caption_ids(row["caption"]) for row in rows]


def seed_inputs(model, batch: tuple[torch.Tensor, list[list[int]]], setup: Setup) -> dict[str, torch.Tensor]:
    """The seed's step: per sample ``torch.cat`` of text, video and caption embeddings, padded to ``max_length``."""
    base = model.get_base_model()
    embed = base.get_input_embeddings()
    device, max_length = setup.device, setup.seed_max_length
    features, captions = batch
    video = base.get_video_features(video_features=features.to(device))
    pad = embed(torch.tensor([setup.processor.tokenizer.pad_token_id], device=device))
    embeds, masks, labels = [], [], []
    for index, caption in enumerate(captions):
        caption_ids = torch.tensor(caption, device=device)
        text_before, text_after, caption_embeds = embed(setup.prefix_ids), embed(setup.suffix_ids), embed(caption_ids)
        sequence = torch.cat([text_before, video[index].to(text_before.dtype), text_after, caption_embeds])
        label = torch.cat([torch.full((len(sequence) - len(caption_ids),), -100, device=device), caption_ids])
        sequence, label = sequence[:max_length], label[:max_length]
        length = len(sequence)
        embeds.append(torch.cat([sequence, pad.expand(max_length - length, -1)]))
        masks.append(torch.cat([torch.ones(length, device=device), torch.zeros(max_length - length, device=device)]))
        labels.append(torch.cat([label, torch.full((max_length - length,), -100, device=device)]))
    return {
        "inputs_embeds": torch.stack(embeds),
        "attention_mask": torch.stack(masks).long(),
        "labels": torch.stack(labels).long(),
    }


# --- measuring -----------------------------------------------------------------------------------------------


def batches(setup: Setup, path: str, args: argparse.Namespace) -> Iterator[Any]:
    """Endless batches in the same shuffled order for every path (a fresh epoch when one runs out)."""
    if path == "on_the_fly":
        dataset, collate = setup.videos, KVCapDataCollator(setup.processor)
    elif path == "cached":
        dataset, collate = setup.cached, KVCapDataCollator(setup.processor)
    else:
        dataset, collate = setup.cached, SeedCollator(setup.processor)
    for epoch in itertools.count():
        loader = DataLoader(
            dataset,
            batch_size=setup.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate,
            num_workers=args.num_workers,
            generator=torch.Generator().manual_seed(args.seed + epoch),
        )
        yield from loader


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward(model, batch: Any, path: str, setup: Setup) -> tuple[Any, dict[str, torch.Tensor]]:
    """Model outputs (with the loss) and the inputs the language model saw (attention mask, labels)."""
    autocast = (
        torch.autocast(setup.device.type, dtype=setup.autocast_dtype)
        if setup.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        inputs = seed_inputs(model, batch, setup) if path == "seed" else batch.to(setup.device)
        return model(**inputs), inputs


def measure(setup: Setup, path: str, stage: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up then timed training steps of ``stage`` on one input path; throughput, memory, the first loss."""
    model, device = setup.model, setup.device
    # Every measurement starts from the same weights (in one process, earlier ones have trained them).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in setup.initial_weights:
                param.copy_(setup.initial_weights[name])
    apply_stage(model, stage)
    torch.manual_seed(args.seed)  # LoRA dropout draws the same way in every measurement
    optimizer = build_stage_optimizer(model)
    for group in optimizer.param_groups:
        group["lr"] = setup.learning_rates[stage]
    trainable = [param for param in model.parameters() if param.requires_grad]
    stream = batches(setup, path, args)
    first = next(stream)
    # Dropout off and no graph: the same number from every path shows they train on the same sequences. This batch
    # is not trained on: the timed steps start from the next one, collation included.
    model.eval()
    with torch.no_grad():
        initial_loss = forward(model, first, path, setup)[0].loss.item()
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mib()
    seconds, tokens, padded, model_flops = [], [], [], []
    for step in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        batch = next(stream)
        outputs, inputs = forward(model, batch, path, setup)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
            mask = inputs["attention_mask"]
            lengths = mask.sum(dim=1).tolist()
            supervised = (inputs["labels"] != -100).sum(dim=1).tolist()
            tokens.append(sum(lengths))
            padded.append(mask.numel())
            model_flops.append(setup.flops.step(lengths, supervised, stage, encode=path == "on_the_fly"))
    total = sum(seconds)
    result = {
        "path": path,
        "stage": stage,
        "steps_per_s": len(seconds) / total,
        "step_s": total / len(seconds),
        "samples_per_s": len(seconds) * setup.batch_size / total,
        "tokens_per_s": sum(tokens) / total,
        "tokens_per_step": sum(tokens) / len(tokens),
        "padded_per_step": sum(padded) / len(padded),
        "model_flops_per_s": sum(model_flops) / total,
        "initial_loss": initial_loss,
        "rss_before_mib": rss_before,
        **{f"peak_{key}": value for key, value in peak_memory(device).items()},
    }
    del optimizer
    model.zero_grad(set_to_none=True)
    return result


def current_rss_mib() -> float:
    with open("/proc/self/statm", encoding="utf-8") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- orchestration -------------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """One measurement in this (fresh) process; prints its result as one JSON line."""
    projector_type, path, stage = args.worker.split(":")
    setup = make_setup(projector_type, args, args.work_dir, encode=False)
    result = {"projector": projector_type, **measure(setup, path, int(stage), args), "info": setup.info}
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def measure_in_subprocess(projector_type: str, path: str, stage: int, argv: list[str], work_dir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", f"{projector_type}:{path}:{stage}"]
    command += ["--work-dir", str(work_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(f"The {projector_type} {path} stage-{stage} measurement failed:\n{completed.stderr[-4000:]}")


def fill_feature_cache(args: argparse.Namespace, work_dir: Path) -> None:
    """Encode the training clips once (not timed) for the workers, which find the cache complete.

    Every projector's model is built from the same seed and its vision tower comes first, so the frozen encoder,
    and with it the cache key, is the same for all of them: one model builds the cache for the whole run.
    """
    setup = make_setup(args.projectors[0], args, work_dir)
    del setup
    gc.collect()


def run(args: argparse.Namespace, argv: list[str]) -> str:
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="kvcap-bench-train-"))
    isolate = args.device == "cpu" and not args.in_process
    try:
        prepare_corpus(work_dir, args)
        if isolate:
            fill_feature_cache(args, work_dir)
        rows, infos = [], {}
        for projector_type in args.projectors:
            # In one process, the model is built once per projector (filling the cache if needed, not timed).
            setup = None if isolate else make_setup(projector_type, args, work_dir)
            for stage in args.stages:
                results: dict[str, list[dict[str, Any]]] = {path: [] for path in args.paths}
                for repeat in range(args.repeats):
                    for path in args.paths:
                        if setup is None:
                            result = measure_in_subprocess(projector_type, path, stage, argv, work_dir)
                            infos[projector_type] = result.pop("info")
                        else:
                            result = measure(setup, path, stage, args)
                            infos[projector_type] = setup.info
                        results[path].append(result)
                        print(
                            f"{projector_type} stage {stage} {path} run {repeat + 1}/{args.repeats}: "
                            f"{result['step_s']:.2f} s/step, {result['tokens_per_s']:.0f} tokens/s, "
                            f"loss {result['initial_loss']:.4f}",
                            file=sys.stderr,
                            flush=True,
                        )
                rows += summarise(projector_type, stage, results, infos[projector_type])
            del setup  # before the next projector's model is built
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        return format_table(rows, infos, args)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


def summarise(
    projector_type: str, stage: int, results: dict[str, list[dict[str, Any]]], info: dict[str, Any]
) -> list[dict[str, Any]]:
    """Medians over repeats per path, with the ratio against the seed loop."""
    rows = []
    for path, runs in results.items():
        row = {"projector": projector_type, "stage": stage, "path": path, **info}
        for key in runs[0]:
            if isinstance(runs[0][key], float):
                row[key] = statistics.median(run[key] for run in runs)
        row["repeats"] = len(runs)
        rows.append(row)
    seed = next((row for row in rows if row["path"] == "seed"), None)
    for row in rows:
        row["vs_seed"] = row["tokens_per_s"] / seed["tokens_per_s"] if seed else None
    return rows


def describe_shape(args: argparse.Namespace) -> str:
    if not args.real_shape:
        return "CPU bench shape"
    weights = "language model NF4 (kvcap_4bit_config), bf16 compute" if args.load_in_4bit else "bf16 weights"
    shape = f"real shape (CLIP-ViT-L/14-336 + Qwen3-8B width, random; {weights}; Qwen3 tokenizer"
    shape += ", AI-Hub-length captions)"
    if args.text_layers or args.vision_layers:
        shape += f", {args.text_layers or 36} text layers, {args.vision_layers or 24} vision layers"
    return shape


def format_table(rows: list[dict[str, Any]], infos: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    peak = args.peak_tflops or (peak_bf16_tflops(torch.cuda.get_device_name(0)) if cuda else None)
    batches = ", ".join(f"{name} {info['batch_size']}" for name, info in infos.items())
    lines = [
        f"{describe_shape(args)}; batch (clips per step): {batches}; {args.warmup} warm-up + {args.steps} timed "
        f"steps, median of {args.repeats} runs; activation checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {args.num_train} training clips of {args.clip_size} px; "
        f"{machine_description(args.device)}",
        "",
    ]
    for projector_type, info in infos.items():
        lines.append(
            f"- {projector_type}: {info['video_tokens']:,} video tokens / clip, {info['prompt_tokens']:,} prompt "
            f"tokens / clip (video included), captions {info['caption_tokens']:.0f} tokens on average (end of turn "
            f"included); parameters: vision tower {info['vision_weights']:,} (frozen), projector "
            f"{info['projector_weights']:,} (trained), language-model linear layers {info['decoder_weights']:,} and "
            f"lm_head {info['head_weights']:,} (frozen), LoRA {info['lora_weights']:,} (trained in stage 2)"
        )
    header = (
        "| projector | stage | input path | s / step | samples/s | tokens/s (non-pad) | ÷ seed | LM tokens / step "
        "(non-pad / with padding) | "
    )
    if cuda:
        header += "peak GPU GiB (allocated / reserved) | model TFLOP/s | MFU |"
    else:
        header += "peak RSS MiB (before steps) | model GFLOP/s |"
    lines += ["", header, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for row in rows:
        path = PATH_LABELS[row["path"]]
        if row["path"] == "seed":
            path += f" (pad to {row['seed_max_length']:,})"
        ratio = f"**{row['vs_seed']:.2f}×**" if row["vs_seed"] is not None else "–"
        line = (
            f"| {row['projector']} | {row['stage']} | {path} | {row['step_s']:.2f} | {row['samples_per_s']:.2f} "
            f"| {row['tokens_per_s']:,.0f} | {ratio} | {row['tokens_per_step']:,.0f} / {row['padded_per_step']:,.0f} | "
        )
        if cuda:
            achieved = row["model_flops_per_s"] / 1e12
            mfu = f"{100 * achieved / peak:.1f} %" if peak else "– (unknown GPU: --peak-tflops)"
            line += f"{row['peak_allocated_gib']:.1f} / {row['peak_reserved_gib']:.1f} | {achieved:.1f} | {mfu} |"
        else:
            achieved = row["model_flops_per_s"] / 1e9
            line += f"{row['peak_rss_gib'] * 1024:,.0f} ({row['rss_before_mib']:,.0f}) | {achieved:.1f} |"
        lines.append(line)
    losses = ", ".join(f"{row['projector']} s{row['stage']} {row['path']} {row['initial_loss']:.6f}" for row in rows)
    lines += ["", f"First-batch loss before training (eval mode): {losses}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch-size", type=int, default=None, help="clips per step (default 8; at real shape the preset's)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path, interleaved (median reported)")
    parser.add_argument("--paths", nargs="+", default=None, choices=PATHS, help="default: all; at real shape cached")
    parser.add_argument(
        "--stages", nargs="+", type=int, default=None, choices=(1, 2), help="default: 2; at real shape 1 2"
    )
    parser.add_argument("--projectors", nargs="+", default=["mlp_2l"], choices=PROJECTOR_TYPES)
    parser.add_argument("--num-train", type=int, default=64, help="clips in the generated training split")
    parser.add_argument("--clip-size", type=int, default=96, help="side of the generated clips in px")
    parser.add_argument(
        "--seed-caption-tokens", type=int, default=None, help="seed loop: pad to prompt + N (default: longest caption)"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: collate in the step)")
    parser.add_argument("--image-size", type=int, default=96, help="CPU shape: frame side (8 px patches)")
    parser.add_argument("--num-query-tokens", type=int, default=64, help="CPU shape: perceiver / c_abstractor")
    parser.add_argument("--real-shape", action="store_true", help="CLIP-ViT-L/14-336 + Qwen3-8B as the presets")
    parser.add_argument("--text-layers", "--lm-layers", type=int, default=None, help="language-model layers")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision-tower layers")
    parser.add_argument(
        "--load-in-4bit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="real shape: the language model in NF4 as the presets (--no-load-in-4bit: bf16)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on with --real-shape (as the presets), off on the CPU shape (as the demo preset)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="GPU dense bf16 peak for MFU (default: from the GPU's name)"
    )
    parser.add_argument("--device", default=None, help="default: cuda with --real-shape when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1: stable on shared CPUs)")
    parser.add_argument("--in-process", action="store_true", help="CPU: measure in this process (no per-path RSS)")
    parser.add_argument("--work-dir", type=Path, default=None, help="corpus and feature cache (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if args.real_shape and torch.cuda.is_available() else "cpu"
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.real_shape
    if args.paths is None:
        args.paths = ["cached"] if args.real_shape else list(PATHS)
    if args.stages is None:
        args.stages = [1, 2] if args.real_shape else [2]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return run_worker(args)
    write_result("python bench/bench_train.py " + " ".join(argv), run(args, argv), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
