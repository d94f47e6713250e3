"""Benchmark one training step's peak memory at real width: logits only where a label follows, against all positions.

A random kvcap with Qwen3-8B's width, heads and 151,936-token vocabulary (``--text-layers`` of them, default 2) and
a ``linear`` or ``mlp_2l`` projector takes cached CLIP-ViT-L/14-336 features (8 frames × 576 patches, so 4,608
video tokens) and a ``--caption-tokens`` caption (default 448, a 575-character AI-Hub caption). Each path runs one
forward and backward in its own process, so its peak resident memory is its own:

* **supervised logits** (kvcap's default): ``lm_head`` runs only at the ~449 positions followed by a label;
* **full logits** (``return_full_logits=True``, what the model did before): ``lm_head`` and the float32 loss over
  every one of the ~5,080 positions.

Both must give the same loss; the script checks it. Run from the repository root::

    python bench/bench_loss_memory.py --text-layers 2 --out bench/results/loss_memory.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def one_step(args: argparse.Namespace) -> dict:
    """In this process: build the model, run one step, report loss, seconds and peak resident memory."""
    import torch

    from kvcap.demo.benchmarking import build, real_shape_config
    from kvcap.demo.tiny_backbones import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    config = real_shape_config(args.projector, tokenizer, text_layers=args.text_layers, vision_layers=1)
    model = build(config, "cpu", torch.bfloat16, seed=0).train()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.full((1, config.num_video_tokens), config.video_token_id)
    caption = torch.randint(10, 30_000, (1, args.caption_tokens), generator=generator)
    input_ids = torch.cat([torch.tensor([[1, 2, 3]]), prompt, torch.tensor([[4, 5]]), caption], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -args.caption_tokens :] = caption
    features = torch.randn(
        1, config.num_frames, config.num_patches, config.vision_config.hidden_size, generator=generator
    ).to(torch.bfloat16)
    started = time.perf_counter()
    output = model(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        video_features=features,
        labels=labels,
        return_full_logits=args.mode == "full",
    )
    output.loss.backward()
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    positions = input_ids.shape[1]
    return {"loss": output.loss.item(), "seconds": seconds, "peak_gib": peak_kib / 2**20, "positions": positions}


def run(args: argparse.Namespace) -> str:
    results = {}
    for mode in ("supervised", "full"):
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
        if completed.returncode != 0:
            raise RuntimeError(f"{mode} step failed: {completed.stderr[-3000:]}")
        results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
    supervised, full = results["supervised"], results["full"]
    same = abs(supervised["loss"] - full["loss"]) <= 1e-2 * abs(full["loss"])
    lines = [
        f"Qwen3-8B width, {args.text_layers} layers, random, bf16 on CPU ({args.threads} threads); {args.projector} "
        f"projector on cached CLIP-L/336 features; {supervised['positions']:,} positions of which "
        f"{args.caption_tokens + 1} are followed by a label; one forward + backward per process",
        "",
        "| logits computed | peak resident memory | step time | loss |",
        "|---|---:|---:|---:|",
        f"| where a label follows (default) | {supervised['peak_gib']:.2f} GiB | {supervised['seconds']:.1f} s | "
        f"{supervised['loss']:.4f} |",
        f"| at every position (`return_full_logits=True`) | {full['peak_gib']:.2f} GiB | {full['seconds']:.1f} s | "
        f"{full['loss']:.4f} |",
        "",
        f"Saved: {full['peak_gib'] - supervised['peak_gib']:.2f} GiB of peak memory "
        f"({full['seconds'] / supervised['seconds']:.2f}x the step time with full logits); "
        f"losses {'equal within bf16 rounding' if same else 'DIFFER'}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--projector", default="linear", choices=["linear", "mlp_2l"])
    parser.add_argument("--caption-tokens", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--child", choices=["supervised", "full"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(one_step(args)))
        return 0
    from kvcap.demo.benchmarking import write_result

    command = "python bench/bench_loss_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(command, run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
