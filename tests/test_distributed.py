"""Sharded training (FSDP2) on two CPU processes through train_hf.py, and 4-bit weights held in a floating dtype.

Every distributed run here is a real `accelerate launch` of two processes joined over gloo, on the tiny backbones.
A small launcher runs `train_hf.main` with one added observer callback that records, on each rank, how the model
was sharded, so a launch that silently fell back to replicas (what accelerate does with FSDP on CPU by itself)
fails here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kvcap.demo.corpus import generate_corpus
from kvcap.training.arguments import parse_arguments
from kvcap.training.run import build_model
from modeling_kvcap import kvcap_4bit_config

from .conftest import REPO_ROOT, random_clips, run_argv, video_prompt_batch

CPU_FSDP = "kvcap/configs/accelerate/cpu_fsdp.yaml"
CPU_DDP = "kvcap/configs/accelerate/cpu_ddp.yaml"
# FSDP's bf16 mixed precision casts the forward's outputs, the loss among them, to bf16: near 7 a bf16 number is a
# multiple of 2**-5, so its logged losses sit up to half that from the one-process ones, and the two trainings' own
# bf16 roundings (fp32 master copies against bf16 weights) add about as much again (measured: 0.032 at step 2).
BF16_LOSS_TOLERANCE = 2.0**-4

# train_hf.main, plus a callback that writes what each rank holds once the Trainer has wrapped the model, and the
# loss log at the end. It observes only; the run is train_hf.py's.
OBSERVED_TRAINING = r"""
import json, os, sys

sys.path.insert(0, os.getcwd())  # the repository root, as for `python train_hf.py`
from transformers import TrainerCallback

import train_hf


class RecordSharding(TrainerCallback):
    def __init__(self):
        self.record = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        def local(param):
            return param.to_local() if isinstance(param, DTensor) else param

        params = dict(model.named_parameters())
        # bitsandbytes' own layers (PEFT's LoRA wrappers around them share the class name).
        quantized = [
            module.weight
            for module in model.modules()
            if type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")
        ]
        self.record = {
            "root_is_sharded": isinstance(model, FSDPModule),
            "units": sorted({type(module).__name__ for module in model.modules() if isinstance(module, FSDPModule)}),
            "num_params": len(params),
            "replicated": [name for name, param in params.items() if not isinstance(param, DTensor)],
            "local_numel": sum(local(param).numel() for param in params.values()),
            "full_numel": sum(param.numel() for param in params.values()),
            "quantized": {
                "count": len(quantized),
                "sharded": all(isinstance(weight, DTensor) for weight in quantized),
                "dtypes": sorted({str(weight.dtype) for weight in quantized}),
                "local_numel": sum(local(weight).numel() for weight in quantized),
                "full_numel": sum(weight.numel() for weight in quantized),
            },
        }

    def on_train_end(self, args, state, control, **kwargs):
        self.record["losses"] = [entry["loss"] for entry in state.log_history if "loss" in entry]
        folder = os.environ["KVCAP_RECORD_DIR"]
        with open(os.path.join(folder, f"rank{args.process_index}.json"), "w") as handle:
            json.dump(self.record, handle)


prepare_run = train_hf.prepare_run


def prepare_observed_run(argv):
    run = prepare_run(argv)
    run.trainer.add_callback(RecordSharding())
    return run


train_hf.prepare_run = prepare_observed_run
train_hf.main(sys.argv[1:])

import torch.distributed as dist

# Left to interpreter shutdown, gloo's worker threads can abort a finished process ("terminate called without an
# active exception", pytorch/pytorch#190489), which would fail a run that did everything right.
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_train=16, num_val=4, seed=0)
    return root


def train(argv: list[str], tmp_path: Path, name: str, accelerate_config: str | None = None) -> dict[str, Any]:
    """Run `train_hf.main` (under `accelerate launch` when a config is given); returns the log and each rank's
    record (`ranks`, by process index)."""
    script = tmp_path / "observed_training.py"
    script.write_text(OBSERVED_TRAINING)
    records = tmp_path / f"records-{name}"
    records.mkdir()
    launcher = [sys.executable]
    if accelerate_config is not None:
        launcher += ["-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "KVCAP_RECORD_DIR": str(records)}
    completed = subprocess.run(
        [*launcher, str(script), *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    ranks = [json.loads(path.read_text()) for path in sorted(records.glob("rank*.json"))]
    return {"log": completed.stderr + completed.stdout, "ranks": ranks}


def assert_sharded_over_two_ranks(ranks: list[dict[str, Any]]) -> None:
    """Every parameter a DTensor, each rank holding about half of every one, the decoder layers FSDP units."""
    assert len(ranks) == 2
    for record in ranks:
        assert record["root_is_sharded"], "the Trainer's model is an FSDP2 module"
        assert {"FSDPQwen3DecoderLayer", "FSDPCLIPEncoderLayer"} <= set(record["units"]), record["units"]
        assert record["replicated"] == [], f"parameters left whole on a rank: {record['replicated'][:5]}"
    assert ranks[0]["full_numel"] == ranks[1]["full_numel"]
    # Shard(0) over 2 ranks: each holds ceil(rows / 2) or the rest of every parameter.
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == ranks[0]["full_numel"]
    assert max(record["local_numel"] for record in ranks) < 0.51 * ranks[0]["full_numel"]


def trained_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_with_two_cpu_processes_matches_one_process_with_the_global_batch(
    tiny_backbones, corpus, tmp_path, precision
):
    # fp32: no mixed precision. bf16: the GPU recipe of fsdp.yaml, a bf16 base with bf16 mixed precision.
    options = {} if precision == "fp32" else {"dtype": "bfloat16", "bf16": True}
    single_dir, fsdp_dir = tmp_path / "single", tmp_path / "fsdp"
    # One process asks for the CPU itself (bf16 is refused otherwise); a CPU launch of two gets it from train_hf.
    single = train(run_argv(tiny_backbones, corpus, single_dir, use_cpu=True, **options), tmp_path, "single")
    # Checkpoints as fsdp.yaml writes them (sharded, one file per rank); saving does not change the training.
    argv = run_argv(
        tiny_backbones, corpus, fsdp_dir, per_device_train_batch_size=2, save_strategy="steps", save_steps=4, **options
    )
    sharded = train(argv, tmp_path, "fsdp", accelerate_config=CPU_FSDP)

    assert "kvcap training on 2 process(es): global batch 2 x 2 x 1 (accumulation) = 4 clips" in sharded["log"]
    assert_sharded_over_two_ranks(sharded["ranks"])
    for step in (4, 8):
        checkpoint = fsdp_dir / f"checkpoint-{step}"
        assert (checkpoint / "trainer_state.json").is_file()
        assert sorted(path.name for path in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]

    single_weights, fsdp_weights = trained_weights(single_dir), trained_weights(fsdp_dir)
    assert single_weights.keys() == fsdp_weights.keys()
    initial = load_file(Path(tiny_backbones["qwen3"]) / "model.safetensors")
    moved = single_weights["model.language_model.layers.0.self_attn.q_proj.weight"].float()
    movement = (moved - initial["model.layers.0.self_attn.q_proj.weight"].float()).abs()
    assert movement.max() > 1e-3, "training moved the weights, so equality is not trivial"
    single_losses, fsdp_losses = single["ranks"][0]["losses"], sharded["ranks"][0]["losses"]
    assert len(fsdp_losses) == 8
    if precision == "fp32":
        # Same global batches, same steps: only the order of float reductions differs (measured here: < 1e-6).
        for name in single_weights:
            torch.testing.assert_close(fsdp_weights[name], single_weights[name], rtol=0, atol=1e-5, msg=name)
        assert fsdp_losses == pytest.approx(single_losses, abs=1e-4)
        return
    # bf16 is not bit-comparable: FSDP keeps fp32 master copies of the trained weights and reduces gradients in
    # bf16, the single process trains the bf16 weights themselves, each rounding every update to 8 significant
    # bits. The bound is what bf16 itself does to this run: one process trained in bf16 lands up to 10 % of the
    # training's movement away from one trained in fp32 (measured); FSDP must land at least that close to one
    # process in bf16 (measured: 6 %).
    assert fsdp_losses == pytest.approx(single_losses, abs=BF16_LOSS_TOLERANCE)
    for name in single_weights:
        a, b = single_weights[name].float(), fsdp_weights[name].float()
        start = initial.get(name.replace("model.language_model.", "model.", 1))
        if "multi_modal_projector" in name and name.endswith(".bias"):
            # Biases start at zero, so their norm is the training's movement: the same 10 % bound as for LoRA
            # (measured: 0.2 % on a CPU with bf16 kernels, 3.6 % on an AVX2-only one, whose bf16 rounds elsewhere).
            assert (a - b).norm() <= 0.1 * a.norm(), name
        elif "multi_modal_projector" in name:  # trained from its (seeded, so shared) initialization
            assert (a - b).norm() <= 0.01 * a.norm(), name  # measured: 0.2 %
        elif start is not None and not torch.equal(a, start.float()):  # a weight LoRA was merged into
            assert (a - b).norm() <= 0.1 * (a - start.float()).norm(), name
        else:
            assert torch.equal(a, b), f"{name} is frozen"


@pytest.mark.slow
def test_fsdp_trains_a_4bit_base_held_in_bf16_on_two_cpu_processes(tiny_backbones, corpus, tmp_path):
    # The presets' recipe: 4-bit base, bf16 mixed precision (so the 4-bit bytes are held in bf16), checkpointing.
    options = {"load_in_4bit": True, "bf16": True, "activation_checkpointing": True}
    single_dir, fsdp_dir = tmp_path / "single", tmp_path / "fsdp"
    single = train(run_argv(tiny_backbones, corpus, single_dir, use_cpu=True, **options), tmp_path, "single")
    argv = run_argv(tiny_backbones, corpus, fsdp_dir, per_device_train_batch_size=2, **options)
    sharded = train(argv, tmp_path, "fsdp", accelerate_config=CPU_FSDP)

    assert_sharded_over_two_ranks(sharded["ranks"])
    quantized = [record["quantized"] for record in sharded["ranks"]]
    for record in quantized:
        assert record["count"] == 14, "q, k, v, o, gate, up, down of both decoder layers are 4-bit"
        assert record["sharded"] and record["dtypes"] == ["torch.bfloat16"]
    assert quantized[0]["local_numel"] + quantized[1]["local_numel"] == quantized[0]["full_numel"]

    losses = sharded["ranks"][0]["losses"]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    # The same model and batches as one process trains with the 4-bit bytes in uint8: bytes that FSDP had
    # converted rather than carried would not give these losses (they do not even dequantize).
    assert losses == pytest.approx(single["ranks"][0]["losses"], abs=BF16_LOSS_TOLERANCE)

    final = fsdp_dir / "final"
    assert (final / "model.safetensors").is_file() and (final / "adapter" / "adapter_model.safetensors").is_file()
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().max() > 0 for tensor in lora_b), "every LoRA B moved from its zero start"
    merged = trained_weights(fsdp_dir)
    assert not any("absmax" in key or "quant" in key for key in merged), "exported unquantized"
    base = load_file(Path(tiny_backbones["qwen3"]) / "model.safetensors")
    delta = merged["model.language_model.layers.0.self_attn.q_proj.weight"].float()
    delta -= base["model.layers.0.self_attn.q_proj.weight"].float()
    assert 1e-5 < delta.abs().max() < 0.5, "the LoRA update is merged into the original weights"


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_the_4bit_base_as_one_process_does(tiny_backbones, corpus, tmp_path):
    options = {"load_in_4bit": True}
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = train(run_argv(tiny_backbones, corpus, single_dir, use_cpu=True, **options), tmp_path, "single")
    argv = run_argv(tiny_backbones, corpus, ddp_dir, per_device_train_batch_size=2, **options)
    replicas = train(argv, tmp_path, "ddp", accelerate_config=CPU_DDP)

    assert "kvcap training on 2 process(es): global batch 2 x 2 x 1 (accumulation) = 4 clips" in replicas["log"]
    for record in replicas["ranks"]:
        # Each rank holds the whole model, its 4-bit weights in bitsandbytes' own uint8.
        assert not record["root_is_sharded"] and len(record["replicated"]) == record["num_params"]
        assert record["quantized"]["count"] == 14 and record["quantized"]["dtypes"] == ["torch.uint8"]
    assert replicas["ranks"][0]["losses"] == pytest.approx(single["ranks"][0]["losses"], abs=1e-4)
    single_weights, ddp_weights = trained_weights(single_dir), trained_weights(ddp_dir)
    assert single_weights.keys() == ddp_weights.keys()
    for name in single_weights:  # fp32, so only the order of float reductions differs
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("sharded", "bf16", "storage"),
    [(False, False, torch.uint8), (True, False, torch.float32), (True, True, torch.bfloat16)],
)
def test_a_sharded_run_holds_4bit_weights_in_the_dtype_fsdp_gathers_in(
    tiny_backbones, tmp_path, monkeypatch, sharded, bf16, storage
):
    pytest.importorskip("bitsandbytes")
    argv = run_argv(tiny_backbones, tmp_path / "corpus", tmp_path / "run", load_in_4bit=True, bf16=bf16, use_cpu=True)
    model_args, _, training_args = parse_arguments(argv)
    # What `accelerate launch` with an FSDP config sets in every process.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true" if sharded else "false")
    model = build_model(model_args, training_args)
    weight = model.get_base_model().language_model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(weight).__name__ == "Params4bit" and weight.dtype == storage


def test_4bit_weights_held_in_bf16_are_the_same_bytes_and_give_the_same_forward(make_tiny_model, tiny_tokenizer):
    bnb = pytest.importorskip("bitsandbytes")
    assert kvcap_4bit_config().bnb_4bit_quant_storage == torch.uint8, "the default is bitsandbytes' own"
    as_bytes = make_tiny_model(quantization_config=kvcap_4bit_config(compute_dtype=torch.float32)).eval()
    config = kvcap_4bit_config(compute_dtype=torch.float32, quant_storage=torch.bfloat16)
    as_bf16 = make_tiny_model(quantization_config=config).eval()

    pairs = [
        (module, dict(as_bf16.named_modules())[name])
        for name, module in as_bytes.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    ]
    assert len(pairs) == 14
    for packed, held in pairs:
        assert packed.weight.dtype == torch.uint8 and held.weight.dtype == torch.bfloat16
        assert held.weight.numel() * 2 == packed.weight.numel(), "two bytes per bf16 element"
        assert torch.equal(held.weight.data.view(torch.uint8).flatten(), packed.weight.data.flatten())
        assert torch.equal(held.weight.quant_state.absmax, packed.weight.quant_state.absmax)

    batch = video_prompt_batch(tiny_tokenizer, as_bytes.config, ["설명"] * 2, padding_side="left")
    clips = random_clips(as_bytes.config, 2)
    with torch.no_grad():
        expected = as_bytes(**batch, pixel_values_videos=clips).logits
        got = as_bf16(**batch, pixel_values_videos=clips).logits
    assert torch.equal(got, expected)
