"""Benchmark kvcap training steps: cached features vs decoding + encoding on the fly vs the seed's padded loop.

Every path runs the same training step as ``train_hf.py``'s stage 2 (projector + LoRA learning): kvcap with PEFT
LoRA (r 16, alpha 32, dropout 0.05 on the language model's attention and MLP projections,
``modules_to_save=["multi_modal_projector"]``), AdamW over kvcap's two parameter groups, gradient clipping at 1.0;
a step is batch assembly (the collator), forward, backward and the optimizer step. Three input paths, same batch
size, same clips in the same order, same number of steps:

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
(``getrusage(RUSAGE_SELF).ru_maxrss``) is that path's alone: model, optimizer, activations, decoder buffers and
memory-mapped cache pages it read. ``tracemalloc`` is not used: it sees Python's allocator only, not tensors. On
CUDA it is ``torch.cuda.max_memory_allocated`` (weights included), reset before each measurement.

MFU (model FLOPs utilisation) counts useful work only, per sample of ``n`` non-pad tokens:

* language model: ``(4 * N_frozen + 6 * N_lora) * n + 12 * layers * heads * head_dim * n**2``. The frozen base
  (every linear weight of the decoder layers and ``lm_head``, embeddings excluded) costs 2 FLOPs per weight and
  token forward and 2 backward (input gradients: they must reach the projector through every layer) but no weight
  gradients; LoRA weights train: 6. Attention is PaLM's count (4 forward, 8 backward, no causal discount);
* projector: forward + backward of one clip counted by ``torch.utils.flop_counter.FlopCounterMode`` (math SDPA);
* vision tower (on-the-fly path only): its forward on one clip, counted the same way.

Gradient-checkpointing recomputation and padding are not model FLOPs. MFU = model FLOPs per second divided by
``--peak-tflops`` (default 989: H100 SXM dense bf16); on the CPU only the achieved rate is given.

Shapes:

* default (CPU): ``kvcap.demo.benchmarking``'s random CLIP 128 wide x 4 layers on 96 px frames in 8 px patches
  (144 patches, 1,152 video tokens per clip for linear / mlp_2l, 64 for perceiver / c_abstractor) and Qwen3 256 wide
  x 4 layers, float32, with the shipped tiny Korean tokenizer and a 64-clip demo corpus (``generate_corpus``);
* ``--real-shape``: CLIP-ViT-L/14-336 + Qwen3-8B (``KVCapConfig()`` defaults) randomly initialised on the device in
  bfloat16 (nothing downloaded), projector and LoRA in float32 under bf16 autocast as the Trainer runs them,
  gradient checkpointing on; ``--text-layers`` (alias ``--lm-layers``) / ``--vision-layers`` shrink it. 4-bit NF4
  is not used: the bf16 weights (about 17 GB) fit an 80 GB GPU, and dequantisation is not model work.

Run from the repository root::

    python bench/bench_train.py --threads 1
    python bench/bench_train.py --real-shape --device cuda --batch-size 2
    python bench/bench_train.py --real-shape --device cpu --text-layers 1 --vision-layers 1 --projectors perceiver \\
        --batch-size 1 --warmup 0 --steps 1 --repeats 1 --num-train 2   # code-path check only
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import resource
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

from peft import get_peft_model  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from kvcap.demo.benchmarking import bench_model, machine_description, make_processor, write_result  # noqa: E402
from kvcap.demo.corpus import generate_corpus  # noqa: E402
from kvcap.demo.tiny_backbones import load_tokenizer  # noqa: E402
from kvcap.training.arguments import ModelArguments  # noqa: E402
from kvcap.training.collator import KVCapDataCollator  # noqa: E402
from kvcap.training.feature_cache import cache_video_features  # noqa: E402
from kvcap.training.stages import apply_stage, build_stage_optimizer  # noqa: E402
from modeling_kvcap import PROJECTOR_TYPES  # noqa: E402
from processing.aihub import load_aihub  # noqa: E402
from processing.processing_kvcap import KVCapProcessor  # noqa: E402

PATHS = ("cached", "on_the_fly", "seed")
PATH_LABELS = {"cached": "cached features", "on_the_fly": "on the fly (decode + encode)", "seed": "seed loop"}
RESULT_MARKER = "KVCAP_BENCH_TRAIN_RESULT "
STAGE2_LEARNING_RATE = 5e-5


@dataclass
class Setup:
    """Everything one projector's measurements share: model, processor, datasets and the seed's prompt pieces."""

    model: Any
    processor: KVCapProcessor
    videos: Any
    cached: Any
    device: torch.device
    autocast_dtype: torch.dtype | None
    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor
    seed_max_length: int
    flops: dict[str, float]
    initial_weights: dict[str, torch.Tensor]


# --- model and data ------------------------------------------------------------------------------------------


def build_lora_model(projector_type: str, tokenizer, args: argparse.Namespace) -> Any:
    """Random kvcap at the chosen shape with ``kvcap.training.run.build_model``'s LoRA wrapping, set to stage 2."""
    model = bench_model(projector_type, tokenizer, args)
    # from_pretrained_backbones keeps the trainable projector in float32 whatever the backbones' dtype.
    model.model.multi_modal_projector.float()
    model = get_peft_model(model, ModelArguments().lora_config())  # the recipe train_hf.py uses
    apply_stage(model, 2)
    if args.gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def prepare_corpus(work_dir: Path, args: argparse.Namespace) -> Path:
    """The synthetic demo corpus in the AI-Hub layout (written once per run, reused by every worker)."""
    corpus = work_dir / "corpus"
    if not (corpus / "train").exists():
        generate_corpus(corpus, num_train=args.num_train, num_val=1, seed=args.seed, size=args.clip_size)
    return corpus


def make_setup(projector_type: str, args: argparse.Namespace, work_dir: Path, encode: bool = True) -> Setup:
    """Build model, processor and both datasets; ``encode=False`` requires the feature cache to be complete."""
    tokenizer = load_tokenizer()
    model = build_lora_model(projector_type, tokenizer, args)
    base = model.get_base_model()
    processor = make_processor(tokenizer, base.config)
    videos = load_aihub(work_dir / "corpus", split="train")
    cached = cache_video_features(
        videos,
        base,
        processor,
        cache_dir=work_dir / "feature-cache",
        batch_size=args.batch_size,
        max_shards=None if encode else 0,
        progress=False,
    )
    prompt = torch.tensor(processor.prompt_ids())
    video_positions = (prompt == processor.video_token_id).nonzero().flatten()
    longest_caption = max(len(processor.caption_ids(caption)) for caption in videos["caption"])
    device = torch.device(args.device)
    return Setup(
        model=model,
        processor=processor,
        videos=videos,
        cached=cached,
        device=device,
        autocast_dtype=torch.bfloat16 if args.real_shape else None,
        prefix_ids=prompt[: video_positions[0]].to(device),
        suffix_ids=prompt[video_positions[-1] + 1 :].to(device),
        seed_max_length=len(prompt) + (args.seed_caption_tokens or longest_caption),
        flops=count_flops(model, processor, device),
        initial_weights={n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
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


# --- FLOPs ---------------------------------------------------------------------------------------------------


def counted_flops(fn) -> int:
    """FLOPs of ``fn()`` by ``FlopCounterMode``; math SDPA so attention decomposes into counted matmuls."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_flops(model, processor: KVCapProcessor, device: torch.device) -> dict[str, float]:
    """Per-token language-model coefficients and per-clip projector / vision-tower FLOPs (see the docstring)."""
    base = model.get_base_model()
    config = base.config
    text = config.text_config
    language_model = base.model.language_model
    frozen = sum(p.numel() for n, p in language_model.named_parameters() if "lora_" not in n and "embed" not in n)
    frozen += base.lm_head.weight.numel()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    vision = config.vision_config
    size, frames = vision.image_size, config.num_frames
    features = torch.zeros(1, frames, config.num_patches, vision.hidden_size, device=device)
    pixels = torch.zeros(1, frames, 3, size, size, device=device)

    def projector_step() -> None:
        base.get_video_features(video_features=features).float().sum().backward()

    projector = counted_flops(projector_step)
    model.zero_grad(set_to_none=True)
    encoder = counted_flops(lambda: base.model.get_vision_tower_features(pixels))
    projector_params = sum(p.numel() for p in base.model.multi_modal_projector.parameters() if p.requires_grad)
    return {
        "per_token": 4 * frozen + 6 * lora,
        "per_token_squared": 12 * text.num_hidden_layers * text.num_attention_heads * text.head_dim,
        "projector_per_clip": projector,
        "vision_per_clip": encoder,
        "params_frozen_lm": frozen,
        "params_lora": lora,
        "params_projector": projector_params,
        "params_vision": sum(p.numel() for p in base.model.vision_tower.parameters()),
        "video_tokens": config.num_video_tokens,
        "prompt_tokens": len(processor.prompt_ids()),
    }


def step_model_flops(lengths: Sequence[int], path: str, flops: dict[str, float]) -> float:
    """Model FLOPs of one step whose samples have ``lengths`` non-pad tokens."""
    language = sum(flops["per_token"] * n + flops["per_token_squared"] * n * n for n in lengths)
    clips = len(lengths)
    vision = flops["vision_per_clip"] * clips if path == "on_the_fly" else 0.0
    return language + flops["projector_per_clip"] * clips + vision


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
            batch_size=args.batch_size,
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


def forward(model, batch: Any, path: str, setup: Setup) -> tuple[Any, torch.Tensor]:
    """Model outputs (with the loss) and the attention mask the language model saw."""
    autocast = (
        torch.autocast(setup.device.type, dtype=setup.autocast_dtype)
        if setup.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        inputs = seed_inputs(model, batch, setup) if path == "seed" else batch.to(setup.device)
        return model(**inputs), inputs["attention_mask"]


def measure(setup: Setup, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up then timed training steps on one input path; throughput, memory and the first batch's loss."""
    model, device = setup.model, setup.device
    # Every measurement starts from the same weights (in one process, earlier ones have trained them).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in setup.initial_weights:
                param.copy_(setup.initial_weights[name])
    torch.manual_seed(args.seed)  # LoRA dropout draws the same way in every measurement
    optimizer = build_stage_optimizer(model)
    for group in optimizer.param_groups:
        group["lr"] = STAGE2_LEARNING_RATE
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
        outputs, mask = forward(model, batch, path, setup)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
            lengths = mask.sum(dim=1).tolist()
            tokens.append(sum(lengths))
            padded.append(mask.numel())
            model_flops.append(step_model_flops(lengths, path, setup.flops))
    total = sum(seconds)
    result = {
        "path": path,
        "steps_per_s": len(seconds) / total,
        "samples_per_s": len(seconds) * args.batch_size / total,
        "tokens_per_s": sum(tokens) / total,
        "tokens_per_step": sum(tokens) / len(tokens),
        "padded_per_step": sum(padded) / len(padded),
        "model_flops_per_s": sum(model_flops) / total,
        "initial_loss": initial_loss,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del optimizer
    return result


def current_rss_mib() -> float:
    with open("/proc/self/statm", encoding="utf-8") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- orchestration -------------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """One measurement in this (fresh) process; prints its result as one JSON line."""
    projector_type, path = args.worker.split(":")
    setup = make_setup(projector_type, args, args.work_dir, encode=False)
    result = {"projector": projector_type, **measure(setup, path, args)}
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def measure_in_subprocess(projector_type: str, path: str, argv: list[str], work_dir: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", f"{projector_type}:{path}"]
    command += ["--work-dir", str(work_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(f"The {path} measurement failed:\n{completed.stderr[-4000:]}")


def run(args: argparse.Namespace, argv: list[str]) -> str:
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="kvcap-bench-train-"))
    isolate = args.device == "cpu" and not args.in_process
    try:
        prepare_corpus(work_dir, args)
        rows, setups = [], {}
        for projector_type in args.projectors:
            # Builds the model and fills the feature cache (not timed); workers rebuild it and find the cache.
            setup = make_setup(projector_type, args, work_dir)
            results: dict[str, list[dict[str, Any]]] = {path: [] for path in args.paths}
            for repeat in range(args.repeats):
                for path in args.paths:
                    if isolate:
                        result = measure_in_subprocess(projector_type, path, argv, work_dir)
                    else:
                        result = measure(setup, path, args)
                    results[path].append(result)
                    print(
                        f"{projector_type} {path} run {repeat + 1}/{args.repeats}: {result['steps_per_s']:.3f} "
                        f"steps/s, {result['tokens_per_s']:.0f} tokens/s, loss {result['initial_loss']:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
            rows += summarise(projector_type, results, setup)
            setups[projector_type] = setup.flops
            del setup  # before the next projector's model is built
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        return format_table(rows, setups, args)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


def summarise(projector_type: str, results: dict[str, list[dict[str, Any]]], setup: Setup) -> list[dict[str, Any]]:
    """Medians over repeats per path, with the ratio against the seed loop."""
    rows = []
    for path, runs in results.items():
        row = {"projector": projector_type, "path": path, "seed_max_length": setup.seed_max_length}
        for key in runs[0]:
            if isinstance(runs[0][key], float):
                row[key] = statistics.median(run[key] for run in runs)
        row["repeats"] = len(runs)
        rows.append(row)
    seed = next((row for row in rows if row["path"] == "seed"), None)
    for row in rows:
        row["vs_seed"] = row["tokens_per_s"] / seed["tokens_per_s"] if seed else None
    return rows


def format_table(rows: list[dict[str, Any]], flops: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    shape = "real shape (CLIP-ViT-L/14-336 + Qwen3-8B, random bf16)" if args.real_shape else "CPU bench shape"
    if args.real_shape and (args.text_layers or args.vision_layers):
        shape += f", {args.text_layers or 36} text layers, {args.vision_layers or 24} vision layers"
    cuda = args.device.startswith("cuda")
    lines = [
        f"{shape}; batch {args.batch_size} clips; {args.warmup} warm-up + {args.steps} timed steps, median of "
        f"{args.repeats} runs; gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
        f"{args.num_train} training clips of {args.clip_size} px; {machine_description(args.device)}",
        "",
    ]
    for projector_type, counts in flops.items():
        lines.append(
            f"- {projector_type}: {counts['video_tokens']:,} video tokens / clip, {counts['prompt_tokens']:,} prompt "
            f"tokens / clip (video included); parameters: vision tower {counts['params_vision']:,} (frozen), "
            f"projector {counts['params_projector']:,} (trained), language model + head {counts['params_frozen_lm']:,} "
            f"(frozen, embeddings excluded), LoRA {counts['params_lora']:,} (trained)"
        )
    header = (
        "| projector | input path | steps/s | samples/s | tokens/s (non-pad) | ÷ seed | LM tokens / step (non-pad "
        "/ with padding) | "
    )
    header += "peak GPU memory GiB | model TFLOP/s | MFU |" if cuda else "peak RSS MiB (before steps) | model GFLOP/s |"
    lines += ["", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for row in rows:
        path = PATH_LABELS[row["path"]]
        if row["path"] == "seed":
            path += f" (pad to {row['seed_max_length']:,})"
        ratio = f"**{row['vs_seed']:.2f}×**" if row["vs_seed"] is not None else "–"
        line = (
            f"| {row['projector']} | {path} | {row['steps_per_s']:.3f} | {row['samples_per_s']:.2f} "
            f"| {row['tokens_per_s']:,.0f} | {ratio} | {row['tokens_per_step']:,.0f} / {row['padded_per_step']:,.0f} | "
        )
        if cuda:
            achieved = row["model_flops_per_s"] / 1e12
            line += f"{row['peak_gpu_gib']:.1f} | {achieved:.1f} | {100 * achieved / args.peak_tflops:.1f} % |"
        else:
            achieved = row["model_flops_per_s"] / 1e9
            line += f"{row['peak_rss_mib']:,.0f} ({row['rss_before_mib']:,.0f}) | {achieved:.1f} |"
        lines.append(line)
    losses = ", ".join(f"{row['projector']} {row['path']} {row['initial_loss']:.6f}" for row in rows)
    lines += ["", f"First-batch loss before training (eval mode): {losses}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default 8; 2 at real shape)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path, interleaved (median reported)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--projectors", nargs="+", default=["mlp_2l"], choices=PROJECTOR_TYPES)
    parser.add_argument("--num-train", type=int, default=64, help="clips in the generated training split")
    parser.add_argument("--clip-size", type=int, default=96, help="side of the generated clips in px")
    parser.add_argument(
        "--seed-caption-tokens", type=int, default=None, help="seed loop: pad to prompt + N (default: longest caption)"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: collate in the step)")
    parser.add_argument("--image-size", type=int, default=96, help="CPU shape: frame side (8 px patches)")
    parser.add_argument("--num-query-tokens", type=int, default=64, help="CPU shape: perceiver / c_abstractor")
    parser.add_argument("--real-shape", action="store_true", help="CLIP-ViT-L/14-336 + Qwen3-8B, random, bf16")
    parser.add_argument("--text-layers", "--lm-layers", type=int, default=None, help="language-model layers")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision-tower layers")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on with --real-shape (as train_hf.py), off on the CPU shape (as the demo preset)",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak dense bf16 TFLOP/s for MFU")
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
    if args.batch_size is None:
        args.batch_size = 2 if args.real_shape else 8
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.real_shape
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
