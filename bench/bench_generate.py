"""Benchmark kvcap caption generation: one batched ``generate`` call vs the seed's per-sample loop.

For each projector it times, in one process and interleaved run by run:

* **batched**: ``model.generate(input_ids, attention_mask, pixel_values_videos=B clips)``, one call for B clips:
  left-padded prompts, the video encoded once at prefill, KV cache (``kvcap.generation.generate_captions``, with the
  model's own decoding policy);
* **seed loop**: the seed's way, one clip at a time: CLIP features and the projector run by hand, the prompt's text
  embeddings are concatenated around the projected video tokens, and the language model's
  ``Qwen3ForCausalLM.generate(inputs_embeds=...)`` is called per clip (HF's KV cache inside each call, batch size 1).
  The ``Qwen3ForCausalLM`` shares kvcap's language-model and head weights, so both paths run the same network.

Both decode greedily with the seed's repetition penalty 1.2 on the generated tokens (kvcap's path takes it from the
model's ``generation_config``, the seed loop passes it) and exactly ``--max-new-tokens`` tokens
(``min_new_tokens`` = ``max_new_tokens``), so they do the same work per caption; the script checks that both give
the same tokens. linear / mlp_2l put ``T × P`` video tokens per clip in the prompt, perceiver / c_abstractor
``num_query_tokens``.

Shapes (``kvcap.demo.benchmarking``):

* default (CPU): randomly initialised CLIP and Qwen3 larger than the test suite's tiny ones, so that model work, not
  Python overhead, dominates: 96 px frames in 8 px patches (12 × 12 = 144 patches, 8 × 144 = 1,152 video tokens for
  linear / mlp_2l against 64 query tokens; real size is 4,608 against 64), CLIP 128 wide × 4 layers, Qwen3 256 wide
  × 4 layers, the shipped tiny Korean tokenizer;
* ``--real-shape``: the presets' model: CLIP-ViT-L/14-336 and Qwen3-8B randomly initialised on the device
  (``kvcap.demo.benchmarking.real_width_model``: bf16, the language model's linear layers in 4-bit NF4 per
  ``kvcap_4bit_config``, the projector in float32, the decoding policy ``from_pretrained_backbones`` gives), nothing
  downloaded, with Qwen3's real tokenizer, so prompts have their real length; ``--text-layers`` / ``--vision-layers``
  shrink it to fit or to go faster, ``--no-load-in-4bit`` keeps the language model in bf16. AI-Hub's captions are
  ~450 Qwen3 tokens (``kvcap.demo.qwen3_tokenizer.aihub_like_caption``): ``--max-new-tokens 448`` generates
  real-length captions.

Run from the repository root::

    python bench/bench_generate.py --batch-size 8 --max-new-tokens 64 --runs 3 --threads 1
    python bench/bench_generate.py --real-shape --device cuda --batch-size 8 --max-new-tokens 448 --runs 3
    python bench/bench_generate.py --real-shape --device cpu --text-layers 2 --vision-layers 2 --batch-size 2 \\
        --max-new-tokens 8 --runs 1 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from transformers import Qwen3ForCausalLM  # noqa: E402

from kvcap.demo.benchmarking import bench_model, machine_description, make_processor, write_result  # noqa: E402
from kvcap.demo.qwen3_tokenizer import load_qwen3_tokenizer  # noqa: E402
from kvcap.demo.tiny_backbones import load_tokenizer  # noqa: E402
from kvcap.generation import generate_captions  # noqa: E402
from modeling_kvcap import PROJECTOR_TYPES, KVCapForConditionalGeneration  # noqa: E402
from processing.processing_kvcap import KVCapProcessor  # noqa: E402

# The seed's decoding: greedy with this repetition penalty on the generated tokens (kvcap's default policy too).
SEED_REPETITION_PENALTY = 1.2


def generation_kwargs(tokens: int, pad_token_id: int) -> dict[str, Any]:
    """Greedy decoding of exactly ``tokens`` new tokens, for both paths.

    A fixed length makes both methods do the same work whatever a random model emits. The repetition penalty is not
    among them: kvcap's path takes the model's own (its ``generation_config``, applied by its ``generate`` to the
    generated tokens only); the seed loop passes the seed's :data:`SEED_REPETITION_PENALTY`.
    """
    return {"do_sample": False, "max_new_tokens": tokens, "min_new_tokens": tokens, "pad_token_id": pad_token_id}


def batched_generate(
    model: KVCapForConditionalGeneration, processor: KVCapProcessor, frames: np.ndarray, gen: dict[str, Any]
) -> list[str]:
    """kvcap's path: ``kvcap.generation.generate_captions`` on all clips in one batch (one ``generate`` call)."""
    return generate_captions(model, processor, list(frames), batch_size=len(frames), **gen)


def seed_causal_lm(model: KVCapForConditionalGeneration) -> Qwen3ForCausalLM:
    """The seed's language model object: a ``Qwen3ForCausalLM`` sharing kvcap's language model and head weights."""
    with torch.device("meta"):
        causal_lm = Qwen3ForCausalLM(model.config.text_config)
    causal_lm.model = model.language_model
    causal_lm.lm_head = model.lm_head
    causal_lm.generation_config = model.generation_config
    return causal_lm.eval()


@torch.inference_mode()
def seed_loop_generate(
    model: KVCapForConditionalGeneration, processor: KVCapProcessor, frames: np.ndarray, gen: dict[str, Any]
) -> list[str]:
    """The seed's loop: per clip, preprocessing, vision tower and projector by hand, text embeddings concatenated
    around the video tokens, then ``Qwen3ForCausalLM.generate(inputs_embeds=...)``."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor(processor.prompt_ids(), device=device)
    video_positions = (ids == processor.video_token_id).nonzero().flatten()
    before, after = ids[: video_positions[0]], ids[video_positions[-1] + 1 :]
    embed = model.get_input_embeddings()
    causal_lm = seed_causal_lm(model)
    projector_dtype = next(model.multi_modal_projector.parameters()).dtype
    captions = []
    for clip in frames:
        pixel_values = processor.process_videos([clip]).to(device)
        features = model.model.get_vision_tower_features(pixel_values)
        video = model.multi_modal_projector(features.to(projector_dtype))
        text_before, text_after = embed(before)[None], embed(after)[None]
        inputs_embeds = torch.cat([text_before, video.to(text_before.dtype), text_after], dim=1)
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device)
        # With only inputs_embeds, generate returns just the new tokens (and penalises only those).
        new_tokens = causal_lm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            repetition_penalty=SEED_REPETITION_PENALTY,
            **gen,
        )
        captions.append(processor.batch_decode(new_tokens)[0])
    return captions


def timed(fn: Callable[..., list[str]], *args, device: str) -> tuple[float, list[str]]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run(args: argparse.Namespace) -> str:
    # Qwen3's own tokenizer at real shape: prompts (and decoded captions) have their real length.
    tokenizer = load_qwen3_tokenizer() if args.real_shape else load_tokenizer()
    rows = []
    for projector_type in args.projectors:
        model = bench_model(projector_type, tokenizer, args)
        config = model.config
        processor = make_processor(tokenizer, config)
        size = config.vision_config.image_size
        generator = torch.Generator().manual_seed(args.seed)
        # uint8 frames at the model's size, as read_video_frames(path, size=...) returns them.
        clips = torch.randint(0, 256, (args.batch_size, config.num_frames, size, size, 3), generator=generator)
        clips = clips.to(torch.uint8).numpy()
        gen = generation_kwargs(args.max_new_tokens, tokenizer.pad_token_id)

        # Warm-up on two clips: first calls allocate and pick kernels.
        batched_generate(model, processor, clips[:2], {**gen, "max_new_tokens": 2, "min_new_tokens": 2})
        seed_loop_generate(model, processor, clips[:2], {**gen, "max_new_tokens": 2, "min_new_tokens": 2})
        batched_times, seed_times = [], []
        for _ in range(args.runs):
            seconds, batched_captions = timed(batched_generate, model, processor, clips, gen, device=args.device)
            batched_times.append(seconds)
            seconds, seed_captions = timed(seed_loop_generate, model, processor, clips, gen, device=args.device)
            seed_times.append(seconds)
        same = sum(a == b for a, b in zip(batched_captions, seed_captions, strict=True))
        batched_s, seed_s = statistics.median(batched_times), statistics.median(seed_times)
        prompt_tokens = len(processor.prompt_ids())
        rows.append(
            {
                "projector": projector_type,
                "video_tokens": config.num_video_tokens,
                "prompt_tokens": prompt_tokens,
                "batched": args.batch_size / batched_s,
                "seed": args.batch_size / seed_s,
                "ratio": seed_s / batched_s,
                "batched_s": batched_s,
                "seed_s": seed_s,
                "same": same,
            }
        )
        print(
            f"{projector_type:>12}: batched {rows[-1]['batched']:.3f} captions/s, seed loop {rows[-1]['seed']:.3f} "
            f"captions/s, x{rows[-1]['ratio']:.2f}; identical captions {same}/{args.batch_size}",
            file=sys.stderr,
            flush=True,
        )
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return format_table(rows, args)


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    shape = "CPU bench shape"
    if args.real_shape:
        weights = "language model NF4 (kvcap_4bit_config), bf16 compute" if args.load_in_4bit else "bf16 weights"
        shape = f"real shape (CLIP-ViT-L/14-336 + Qwen3-8B width, random; {weights}; Qwen3 tokenizer)"
    if args.real_shape and (args.text_layers or args.vision_layers):
        shape += f", {args.text_layers or 36} text layers, {args.vision_layers or 24} vision layers"
    lines = [
        f"{shape}; batch {args.batch_size} clips; {args.max_new_tokens} new tokens per caption (greedy, "
        f"repetition penalty {SEED_REPETITION_PENALTY} on generated tokens); median of {args.runs} runs; "
        f"{machine_description(args.device)}",
        "",
        "| projector | video tokens / clip | prompt tokens / clip | batched captions/s | seed loop captions/s "
        "| batched ÷ seed | batched s / batch | seed s / batch | identical captions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['projector']} | {row['video_tokens']:,} | {row['prompt_tokens']:,} | {row['batched']:.3f} "
            f"| {row['seed']:.3f} | **{row['ratio']:.2f}×** | {row['batched_s']:.2f} | {row['seed_s']:.2f} "
            f"| {row['same']}/{args.batch_size} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch (B)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per caption")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per method (median reported)")
    parser.add_argument("--projectors", nargs="+", default=list(PROJECTOR_TYPES), choices=PROJECTOR_TYPES)
    parser.add_argument("--image-size", type=int, default=96, help="CPU shape: frame side (8 px patches)")
    parser.add_argument("--num-query-tokens", type=int, default=64, help="CPU shape: perceiver / c_abstractor")
    parser.add_argument("--real-shape", action="store_true", help="CLIP-ViT-L/14-336 + Qwen3-8B as the presets")
    parser.add_argument("--text-layers", type=int, default=None, help="language-model layers (default: full)")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision-tower layers (default: full)")
    parser.add_argument(
        "--load-in-4bit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="real shape: the language model in NF4 as the presets (--no-load-in-4bit: bf16)",
    )
    parser.add_argument("--device", default=None, help="default: cuda with --real-shape when available, else cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 keeps timings stable on a shared CPU)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if args.real_shape and torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python bench/bench_generate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(command, run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
