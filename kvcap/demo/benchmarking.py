"""Synthetic models, training-step FLOPs and result writing for `bench/`.

Randomly initialised kvcap models (nothing downloaded) at the CPU bench shape (CLIP 128 wide x 4 layers, Qwen3 256
wide x 4 layers, the shipped tiny tokenizer) or the real shape (CLIP-ViT-L/14-336 + Qwen3-8B, fewer layers where
asked) with the presets' setting: the language model's linear layers in 4-bit NF4 as ``kvcap_4bit_config`` describes
them, the projector in float32, LoRA from the preset (:func:`real_width_model`, :func:`training_model`). Also their
processor, the presets' values (:func:`preset_values`), the model FLOPs of a training step (:class:`TrainingFlops`),
peak memory, a one-line machine description and the Markdown result writer that the benchmark scripts share.

Why NF4 is applied in memory (:func:`quantize_language_model`) rather than by saving random backbones and loading
them with ``from_pretrained_backbones(quantization_config=kvcap_4bit_config())``: a random Qwen3-8B is 16 GB on disk
and each projector would load it again. The conversion does what transformers' bitsandbytes loader does with the
same config (``replace_with_bnb_linear``, then ``Params4bit(weight).to(device)`` per layer), on the language model
only, as ``from_pretrained_backbones`` applies it; the result has the same modules, packed weights and quantization
state as the loaded model (checked on the CPU against the real load path, see ``bench/results/train_real_shape.md``).
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, Qwen3Config

from modeling_kvcap import KVCapConfig, KVCapForConditionalGeneration, kvcap_4bit_config
from modeling_kvcap.configuration_kvcap import MODEL_SETTINGS
from modeling_kvcap.modeling_kvcap import kvcap_generation_config
from processing.processing_kvcap import KVCapProcessor

from .real_width import random_model, real_width_configs


def cpu_bench_config(
    projector_type: str,
    tokenizer: Any,
    *,
    image_size: int = 96,
    num_query_tokens: int = 64,
    text_layers: int | None = None,
    vision_layers: int | None = None,
) -> KVCapConfig:
    """Random CLIP + Qwen3 a notch above the test suite's tiny ones (see the module docstring).

    ``image_size`` is the frame side (8 px patches); ``text_layers`` / ``vision_layers`` default to 4.
    """
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        projection_dim=64,
        num_hidden_layers=vision_layers or 4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
    )
    text = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=text_layers or 4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return KVCapConfig(
        vision_config=vision,
        text_config=text,
        projector_type=projector_type,
        num_query_tokens=num_query_tokens,
        perceiver_depth=2,
        perceiver_num_heads=4,
        abstractor_depth=1,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )


def real_shape_config(
    projector_type: str,
    tokenizer: Any,
    *,
    text_layers: int | None = None,
    vision_layers: int | None = None,
    **settings: Any,
) -> KVCapConfig:
    """CLIP-ViT-L/14-336 + Qwen3-8B as ``KVCapConfig()`` describes them, optionally with fewer layers.

    ``tokenizer``: Qwen3's (``kvcap.demo.qwen3_tokenizer.load_qwen3_tokenizer``) for real prompt and caption lengths;
    the tiny tokenizer's ids also lie inside Qwen3's vocabulary. ``text_layers`` / ``vision_layers`` default to the
    full 36 / 24; ``settings`` are further ``KVCapConfig`` fields (a preset's ``num_query_tokens``, ...).
    """
    vision, text = real_width_configs(text_layers or 36, vision_layers or 24, pad_token_id=tokenizer.pad_token_id)
    return KVCapConfig(
        vision_config=vision,
        text_config=text,
        projector_type=projector_type,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        **settings,
    )


def bench_model(projector_type: str, tokenizer: Any, args: Any) -> KVCapForConditionalGeneration:
    """The benchmarks' random kvcap from their shared flags (``real_shape``, ``image_size``, ``num_query_tokens``,
    ``text_layers``, ``vision_layers``, ``device``, ``seed``, optionally ``load_in_4bit``, default on): real widths
    as :func:`real_width_model` builds them, or the CPU shape in fp32."""
    if args.real_shape:
        return real_width_model(
            projector_type,
            tokenizer,
            text_layers=args.text_layers,
            vision_layers=args.vision_layers,
            device=args.device,
            seed=args.seed,
            load_in_4bit=getattr(args, "load_in_4bit", True),
        )
    config = cpu_bench_config(
        projector_type,
        tokenizer,
        image_size=args.image_size,
        num_query_tokens=args.num_query_tokens,
        text_layers=args.text_layers,
        vision_layers=args.vision_layers,
    )
    return build(config, args.device, torch.float32, args.seed)


def build(config: KVCapConfig, device: str, dtype: torch.dtype, seed: int) -> KVCapForConditionalGeneration:
    """A randomly initialised kvcap model (seeded), built directly on ``device`` in ``dtype``, in eval mode."""
    return random_model(KVCapForConditionalGeneration, config, dtype, seed, device).eval()


def real_width_model(
    projector_type: str,
    tokenizer: Any,
    *,
    text_layers: int | None = None,
    vision_layers: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    load_in_4bit: bool = True,
    **settings: Any,
) -> KVCapForConditionalGeneration:
    """Random CLIP-ViT-L/14-336 + Qwen3-8B kvcap as a preset trains it, built on ``device``, in eval mode.

    bf16 backbones, the projector in float32 (``from_pretrained_backbones``' ``projector_dtype``), the language
    model's linear layers in NF4 (``kvcap_4bit_config(compute_dtype=torch.bfloat16)``) unless ``load_in_4bit`` is
    false, and the decoding policy ``from_pretrained_backbones`` gives (Qwen3's special tokens suppressed).
    """
    config = real_shape_config(
        projector_type, tokenizer, text_layers=text_layers, vision_layers=vision_layers, **settings
    )
    model = build(config, device, torch.bfloat16, seed)
    model.model.multi_modal_projector.float()
    if load_in_4bit:
        quantize_language_model(model, kvcap_4bit_config(compute_dtype=torch.bfloat16))
    special = [index for index, token in tokenizer.added_tokens_decoder.items() if token.special]
    model.generation_config = kvcap_generation_config(config, None, special)
    return model


def quantize_language_model(model: KVCapForConditionalGeneration, quantization_config: Any) -> int:
    """Replace the language model's ``nn.Linear`` layers by bitsandbytes ``Linear4bit`` quantized per
    ``quantization_config``, on the device the weights are on; returns how many were replaced.

    The same two steps as transformers' loader (``replace_with_bnb_linear`` builds the layers from the config, each
    weight becomes ``Params4bit(...).to(device)``, which quantizes it), on ``model.model.language_model`` only: the
    vision tower, the projector and ``lm_head`` stay as they are, as in ``from_pretrained_backbones``. The model is
    then marked as transformers marks a 4-bit model, which peft reads to wrap these layers with its 4-bit LoRA.
    """
    import bitsandbytes as bnb
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    language_model = model.model.language_model
    # replace_with_bnb_linear leaves empty (meta) layers: the weights are taken out first, and freed one by one.
    weights = {
        name: (module.weight.data, module.bias)
        for name, module in language_model.named_modules()
        if type(module) is nn.Linear
    }
    replace_with_bnb_linear(
        language_model,
        modules_to_not_convert=list(quantization_config.llm_int8_skip_modules or []),
        quantization_config=quantization_config,
    )
    replaced = 0
    for name in list(weights):
        weight, bias = weights.pop(name)
        layer = language_model.get_submodule(name)
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, **layer.weight.__dict__).to(weight.device)
        if bias is not None:
            layer.bias = nn.Parameter(bias.data, requires_grad=False)
        del weight
        replaced += 1
    # New layers start in training mode; they take the model's, as loaded ones do (it decides bitsandbytes' kernel).
    language_model.train(model.training)
    model.is_loaded_in_4bit = True
    model.config.text_config.quantization_config = quantization_config.to_dict()
    return replaced


def preset_values(projector_type: str) -> dict[str, Any]:
    """The training preset ``kvcap/configs/{projector_type}.yaml`` as typed values (batch, LoRA, stages, ...)."""
    from kvcap.training.arguments import preset_path, read_preset

    return read_preset(preset_path(projector_type))


def preset_model_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The ``KVCapConfig`` fields a preset sets besides ``projector_type`` (``num_query_tokens``, ...)."""
    return {name: values[name] for name in MODEL_SETTINGS if name in values and name != "projector_type"}


def training_model(
    model: KVCapForConditionalGeneration,
    values: dict[str, Any] | None = None,
    *,
    stage: int = 2,
    gradient_checkpointing: bool = True,
) -> Any:
    """``kvcap.training.run.build_model``'s PEFT LoRA wrapping (r / alpha / dropout from the preset ``values``, else
    the defaults), set to ``stage`` (1: projector, 2: projector + LoRA), activation checkpointing without
    re-entrance as the presets run it; in train mode."""
    from peft import get_peft_model

    from kvcap.training.arguments import ModelArguments
    from kvcap.training.stages import apply_stage

    lora = {name: values[name] for name in ("lora_r", "lora_alpha", "lora_dropout") if values and name in values}
    peft_model = get_peft_model(model, ModelArguments(**lora).lora_config())
    apply_stage(peft_model, stage)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return peft_model.train()


# --- model FLOPs of a training step --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingFlops:
    """Model FLOPs of kvcap training steps on cached features (``+ vision`` when frames are encoded on the fly).

    Per clip of ``n`` language-model tokens (non-pad: prompt, video and caption tokens) of which ``s`` carry a label
    (the caption and its end-of-turn token; the model computes logits only at the ``s`` positions followed by one):

    ``4 * D * n + c_lora * R * n + 4 * H * s + 12 * A * n**2 + P (+ V)``

    * ``D``: weights of the decoder layers' linear projections (the frozen base, NF4 or not; embeddings excluded),
      2 FLOPs per weight and token forward and 2 backward for the input gradients (the projector's gradient must
      reach the video positions through every layer, in both stages), no weight gradients;
    * ``R``: LoRA weights; ``c_lora`` = 6 in stage 2 (forward, input and weight gradients), 4 in stage 1 (they run
      frozen);
    * ``H``: ``lm_head``'s weights, frozen, at the ``s`` supervised positions only;
    * ``A`` = layers x heads x head_dim: attention scores and weighted sums, 4 forward + 8 backward FLOPs per
      position pair and unit of width (PaLM's count, no discount for the causal mask);
    * ``P``: the projector's forward and backward on one clip, counted by ``torch.utils.flop_counter`` (it trains in
      full in both stages); ``V``: the frozen vision tower's forward on one clip (on-the-fly encoding only).

    Activation-checkpointing recomputation, padding, NF4 dequantization and the optimizer are not model FLOPs.
    """

    decoder_weights: int
    lora_weights: int
    head_weights: int
    attention_width: int
    projector_per_clip: float
    vision_per_clip: float
    projector_weights: int
    vision_weights: int

    def clip(self, tokens: int, supervised: int, stage: int) -> float:
        """Model FLOPs of one clip's forward and backward, without the vision tower."""
        lora = 6 if stage == 2 else 4
        return (
            (4 * self.decoder_weights + lora * self.lora_weights) * tokens
            + 4 * self.head_weights * supervised
            + 12 * self.attention_width * tokens * tokens
            + self.projector_per_clip
        )

    def step(self, tokens: Sequence[int], supervised: Sequence[int], stage: int, encode: bool = False) -> float:
        """Model FLOPs of one step whose clips have ``tokens`` non-pad and ``supervised`` labelled positions."""
        total = sum(self.clip(n, s, stage) for n, s in zip(tokens, supervised, strict=True))
        return total + (self.vision_per_clip * len(tokens) if encode else 0.0)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def linear_weights(module: nn.Module) -> int:
    """Weights of the linear layers under ``module`` as matrices (a 4-bit layer counts ``in x out``, not its packed
    bytes); LoRA's own matrices excluded."""
    return sum(
        layer.in_features * layer.out_features
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) and ".lora_" not in f".{name}"
    )


def counted_flops(fn: Any) -> int:
    """FLOPs of ``fn()`` by ``FlopCounterMode``, with math attention so that it decomposes into counted matmuls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_flops(model: Any, *, count_vision: bool = False) -> TrainingFlops:
    """:class:`TrainingFlops` of a PEFT-wrapped kvcap (as :func:`training_model` returns it).

    The projector is counted on one clip of zero features on the model's device (its gradients are cleared after);
    the vision tower's forward only when ``count_vision`` (at real size it is a real 8-frame forward).
    """
    base = model.get_base_model()
    config = base.config
    text, vision = config.text_config, config.vision_config
    device = base.get_input_embeddings().weight.device
    features = torch.zeros(1, config.num_frames, config.num_patches, vision.hidden_size, device=device)

    def projector_step() -> None:
        base.get_video_features(video_features=features).float().sum().backward()

    projector = counted_flops(projector_step)
    model.zero_grad(set_to_none=True)
    encoder = 0
    if count_vision:
        pixels = torch.zeros(1, config.num_frames, 3, vision.image_size, vision.image_size, device=device)
        encoder = counted_flops(lambda: base.model.get_vision_tower_features(pixels))
    return TrainingFlops(
        decoder_weights=linear_weights(base.model.language_model),
        lora_weights=sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n),
        head_weights=base.lm_head.weight.numel(),
        attention_width=text.num_hidden_layers * text.num_attention_heads * text.head_dim,
        projector_per_clip=float(projector),
        vision_per_clip=float(encoder),
        projector_weights=sum(
            p.numel() for n, p in model.named_parameters() if "multi_modal_projector" in n and p.requires_grad
        ),
        vision_weights=sum(p.numel() for p in base.model.vision_tower.parameters()),
    )


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched on the device name.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("H100 80GB HBM3")
    ("A100", 312.0),
    ("RTX 4090", 165.0),
    ("L4", 121.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (as ``torch.cuda.get_device_name`` says), if known."""
    words = device_name.replace("-", " ").split()
    for key, tflops in PEAK_BF16_TFLOPS:
        # Whole words: "L4" must not match an L40S.
        key_words = key.split()
        if any(words[i : i + len(key_words)] == key_words for i in range(len(words))):
            return tflops
    return None


def peak_memory(device: torch.device | str) -> dict[str, float]:
    """Peak memory so far: on CUDA ``max_memory_allocated`` / ``max_memory_reserved`` in GiB (since the last
    ``reset_peak_memory_stats``), elsewhere the process' peak resident set size in GiB (its lifetime's)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def make_processor(tokenizer: Any, config: KVCapConfig) -> KVCapProcessor:
    """A ``KVCapProcessor`` for ``config``: CLIP preprocessing at its frame size, its number of video tokens."""
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return KVCapProcessor(image_processor, tokenizer, num_video_tokens=config.num_video_tokens)


def machine_description(device: str) -> str:
    """One line for a result table: the GPU and torch on CUDA; else the CPU, its cores, torch threads, Python."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}"
    )


def write_result(command: str, table: str, out: Path | None) -> None:
    """Print the command and its Markdown table, and write them to ``out`` when given."""
    text = f"`{command.strip()}`\n\n{table}"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


__all__ = [
    "PEAK_BF16_TFLOPS",
    "TrainingFlops",
    "bench_model",
    "build",
    "counted_flops",
    "cpu_bench_config",
    "linear_weights",
    "machine_description",
    "make_processor",
    "peak_bf16_tflops",
    "peak_memory",
    "preset_model_settings",
    "preset_values",
    "quantize_language_model",
    "real_shape_config",
    "real_width_model",
    "training_flops",
    "training_model",
    "write_result",
]
