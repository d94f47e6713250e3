"""One short training run of a real preset at real width on CPU, measured: the real-width test tier's unit of work.

The preset (``linear``, ``mlp_2l``, ``perceiver`` or ``c_abstractor``) runs through ``train_hf``'s own
``prepare_run`` on random real-width backbones (``kvcap.demo.real_width``): Qwen3's tokenizer, NF4 through
``kvcap_4bit_config``, LoRA r16, activation checkpointing, the feature cache of a real CLIP-ViT-L/14-336 tower, and
an AI-Hub-length caption (~450 Qwen3 tokens). Batch 1; one stage-1 step, then two stage-2 steps (the first moves the
LoRA B matrices off zero, so the second is the first in which the A matrices can have a gradient); an evaluation
(loss pass and the monitor's captioning, both eval-mode forwards without gradients) after every step, which is what
would switch bitsandbytes' CPU kernel to one without a backward if kvcap did not prevent it.

Prints one JSON line: per optimizer step the parameters whose gradient was missing or zero, the step's peak resident
memory, the memory before training, the sequence length, and the model's bytes by part::

    python -m kvcap.demo.real_width_run --projector linear --backbones DIR --corpus DIR --output_dir DIR
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

KIB = 1024


def resident_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def release_freed_heap() -> None:
    """Hand the heap that glibc keeps after ``free`` back to the system (``malloc_trim``), where glibc is the C
    library; a no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def reset_peak_resident() -> None:
    """Start ``VmHWM`` afresh at the current resident size (``clear_refs`` 5, Linux 4.0+)."""
    # Without the trim, the high-water mark starts from whatever freed heap the allocator happened to keep from
    # the previous step and evaluation, which is not the step's own and differs between runs.
    release_freed_heap()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


class StepGradients(TrainerCallback):
    """Before each optimizer step: which trainable parameters have no gradient or an all-zero one; the peak
    resident memory of each step (optimizer step included) and of each evaluation (loss pass and captioning)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.evaluation_peaks_gib: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        reset_peak_resident()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[-1]["peak_gib"] = resident_kib("VmHWM") / KIB**2
        reset_peak_resident()

    def on_evaluate(self, args, state, control, **kwargs):
        # Called after the monitor's own on_evaluate (callbacks run in the order added), so its captioning counts.
        self.evaluation_peaks_gib.append(resident_kib("VmHWM") / KIB**2)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        from kvcap.training.stages import LORA, PROJECTOR, stage_parameter_groups

        groups = stage_parameter_groups(model)

        def without_gradient(named):
            return [name for name, param in named if param.grad is None or not param.grad.abs().sum().item()]

        self.steps.append(
            {
                "step": state.global_step,
                "training_mode": model.training,
                "projector_without_gradient": without_gradient(groups[PROJECTOR]),
                "lora_trainable": sum(param.requires_grad for _, param in groups[LORA]),
                "lora_a_without_gradient": without_gradient([p for p in groups[LORA] if ".lora_A." in p[0]]),
                "lora_b_without_gradient": without_gradient([p for p in groups[LORA] if ".lora_B." in p[0]]),
                "num_lora": len(groups[LORA]),
            }
        )


def model_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers by part: 4-bit layers (packed weights and their scales), the rest of the
    language model, the vision tower, the projector (both PEFT copies), LoRA."""
    parts = {"language_model_4bit": 0, "language_model_other": 0, "vision_tower": 0, "projector": 0, "lora": 0}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        size = tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            size += state.absmax.numel() * state.absmax.element_size()
        if ".lora_" in name:
            parts["lora"] += size
        elif "multi_modal_projector" in name:
            parts["projector"] += size
        elif "vision_tower" in name:
            parts["vision_tower"] += size
        elif state is not None:
            parts["language_model_4bit"] += size
        else:
            parts["language_model_other"] += size
    return parts


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kvcap.training.run import finish_run, prepare_run

    argv = [
        args.projector,
        "--vision_model_name_or_path", str(args.backbones / "clip-vision"),
        "--text_model_name_or_path", str(args.backbones / "qwen3"),
        "--data_dir", str(args.corpus),
        "--output_dir", str(args.output_dir),
        "--overwrite_output_dir", "true",
        "--feature_cache_dir", str(args.feature_cache_dir or args.output_dir.parent / "feature-cache"),
        "--dtype", args.dtype,
        "--bf16", str(args.dtype == "bfloat16").lower(),
        "--use_cpu", "true",  # with --bf16, mixed precision then runs as CPU autocast
        "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1",
        "--per_device_eval_batch_size", "1",
        "--stage1_epochs", "1",
        "--stage2_epochs", "2",
        "--eval_strategy", "steps",
        "--eval_steps", "1",
        "--save_strategy", "no",
        "--diversity_num_samples", "1",
        "--generation_max_new_tokens", str(args.max_new_tokens),
        "--dataloader_num_workers", "0",
        "--dataloader_pin_memory", "false",
        "--logging_steps", "1",
        "--report_to", "none",
        "--final_eval", str(args.finish).lower(),
        "--disable_tqdm", "true",
        "--cpu_threads", str(args.threads),
    ]  # fmt: skip
    started = time.perf_counter()
    run = prepare_run(argv)
    prepared = time.perf_counter()
    recorder = StepGradients()
    run.trainer.add_callback(recorder)
    before_training = resident_kib("VmRSS") / KIB**2
    run.trainer.train()
    trained = time.perf_counter()
    sample = run.trainer.data_collator([run.trainer.train_dataset[0]])
    result = {
        "projector": args.projector,
        "positions": int(sample["input_ids"].shape[1]),
        "supervised": int((sample["labels"] != -100).sum()),
        "model_bytes": model_bytes(run.trainer.model),
        "trainable_parameters": sum(param.numel() for param in run.trainer.model.parameters() if param.requires_grad),
        "resident_before_training_gib": before_training,
        "steps": recorder.steps,
        "evaluation_peaks_gib": recorder.evaluation_peaks_gib,
        "losses": [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry],
        "seconds": {"prepare": prepared - started, "train": trained - prepared},
    }
    if args.finish:
        metrics = finish_run(run)
        result["final"] = {
            "num_clips": metrics["overall"]["num_clips"],
            "source": metrics["source"],
            "folder": sorted(path.name for path in (args.output_dir / "final").iterdir()),
        }
        result["seconds"]["finish"] = time.perf_counter() - trained
    return result


def run_in_subprocess(
    projector: str,
    backbones: Path,
    corpus: Path,
    output_dir: Path,
    feature_cache_dir: Path,
    *extra: str,
    timeout: float = 3600,
) -> dict[str, Any]:
    """This module's run in a process of its own (so its peak memory is its own); returns its JSON result."""
    command = [sys.executable, "-m", __name__, "--projector", projector, "--backbones", str(backbones)]
    command += ["--corpus", str(corpus), "--output_dir", str(output_dir)]
    command += ["--feature_cache_dir", str(feature_cache_dir), *extra]
    repository = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repository, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{projector} at real width failed: {done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projector", required=True, choices=["linear", "mlp_2l", "perceiver", "c_abstractor"])
    parser.add_argument("--backbones", type=Path, required=True, help="from kvcap.demo.real_width")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--feature_cache_dir", type=Path, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="bfloat16 (the presets' precision) or float32, for CPUs whose bf16 matrix products are not accelerated",
    )
    parser.add_argument("--finish", action="store_true", help="also export, evaluate (4-bit, on CPU) and card")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
