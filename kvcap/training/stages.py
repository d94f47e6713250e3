"""The two training stages inside one `Trainer.train()`: which parameters learn, and at what learning rate.

Stage 1 aligns vision and language: only the projector learns (lr 1e-3). Stage 2 tunes for captioning: the
projector and the language model's LoRA adapters learn (lr 5e-5). Each stage has its own linear warmup (10 %)
and cosine decay. The switch is keyed to the optimizer step, so it lands at the same point with gradient
accumulation, under DDP, and after `--resume_from_checkpoint`.

Under DDP every trainable parameter is registered when the model is wrapped, so LoRA parameters are created
trainable and frozen for stage 1 only afterwards (`on_train_begin`); DDP must then run with
`find_unused_parameters=True`, and leaves the gradients of the frozen LoRA parameters untouched (None) on every
rank, so the optimizer skips them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import TrainerCallback

PROJECTOR = "projector"
LORA = "lora"


def stage_parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters by role: the projector's (its trained copy under PEFT) and the LoRA adapters'."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {PROJECTOR: [], LORA: []}
    for name, param in model.named_parameters():
        if ".lora_" in name:
            groups[LORA].append((name, param))
        elif "multi_modal_projector." in name and "original_module" not in name:
            groups[PROJECTOR].append((name, param))
    if not groups[PROJECTOR]:
        raise ValueError("The model has no multi_modal_projector parameters to train.")
    return groups


@dataclass(frozen=True)
class StageSchedule:
    """Learning rates of both stages over the optimizer steps of one run."""

    stage1_steps: int
    stage2_steps: int
    stage1_learning_rate: float = 1e-3
    stage2_learning_rate: float = 5e-5
    warmup_ratio: float = 0.1

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def stage_at(self, step: int) -> int:
        """1 or 2: the stage that optimizer step `step` (0-based) belongs to."""
        return 1 if step < self.stage1_steps else 2

    def learning_rate(self, step: int, group: str) -> float:
        """Absolute learning rate of `group` at optimizer step `step` (0-based)."""
        stage = self.stage_at(step)
        if stage == 1:
            if group == LORA:
                return 0.0
            return _warmup_cosine(step, self.stage1_steps, self.warmup_ratio) * self.stage1_learning_rate
        return _warmup_cosine(step - self.stage1_steps, self.stage2_steps, self.warmup_ratio) * (
            self.stage2_learning_rate
        )

    @classmethod
    def from_epochs(
        cls, total_steps: int, stage1_epochs: int, stage2_epochs: int, **learning_rates: float
    ) -> StageSchedule:
        """Split `total_steps` (the Trainer's whole run) by epochs: the Trainer runs whole epochs of equal steps."""
        epochs = stage1_epochs + stage2_epochs
        if epochs < 1 or total_steps % epochs:
            raise ValueError(f"{total_steps} optimizer steps cannot be split into {epochs} equal epochs.")
        steps_per_epoch = total_steps // epochs
        return cls(steps_per_epoch * stage1_epochs, steps_per_epoch * stage2_epochs, **learning_rates)


def _warmup_cosine(step: int, steps: int, warmup_ratio: float) -> float:
    """Multiplier in (0, 1]: linear warmup over `warmup_ratio` of the stage, then cosine decay towards 0.

    The first step already has a non-zero rate (warmup counts from step 1), so no step is wasted.
    """
    if steps <= 0:
        return 0.0
    warmup = max(1, math.ceil(warmup_ratio * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup + 1) / max(1, steps - warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_stage_optimizer(model: nn.Module, weight_decay: float = 0.0, **adam_kwargs) -> torch.optim.AdamW:
    """AdamW with one group per role; group lrs are absolute values set by the stage scheduler."""
    param_groups = []
    for group_name, named in stage_parameter_groups(model).items():
        if named:
            param_groups.append(
                {"params": [param for _, param in named], "lr": 1.0, "weight_decay": weight_decay, "name": group_name}
            )
    return torch.optim.AdamW(param_groups, **adam_kwargs)


def build_stage_scheduler(
    optimizer: torch.optim.Optimizer, schedule: StageSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose multipliers are the absolute rates (every group's base lr is 1.0)."""
    lambdas = [
        lambda step, group=group["name"]: schedule.learning_rate(step, group) for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def apply_stage(model: nn.Module, stage: int) -> None:
    """Make the LoRA adapters trainable in stage 2 only; the projector trains in both stages."""
    for _, param in stage_parameter_groups(model)[LORA]:
        param.requires_grad_(stage == 2)
    for _, param in stage_parameter_groups(model)[PROJECTOR]:
        param.requires_grad_(True)


def initialize_fsdp_while_trainable(model: nn.Module) -> None:
    """Under FSDP2, run its lazy initialization now, while every parameter that will train still requires grad.

    FSDP2 fixes each shard group's gradient dtypes at its lazy initialization (normally the first forward, which
    is in stage 1): a group with no trainable parameter then gets none, and once LoRA trains in stage 2 its
    mixed-precision gradients (bf16) are not cast back to the fp32 parameters ("attempting to assign a gradient
    with dtype BFloat16 to a tensor with grad_dtype Float"). Initialization is idempotent, so the first forward
    then skips it.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()


class StageSwitchCallback(TrainerCallback):
    """Switches stage 1 → 2 at the right optimizer step (`KVCapTrainer.log` adds the stage to every log line)."""

    def __init__(self, schedule: StageSchedule):
        self.schedule = schedule
        self.stage: int | None = None

    def _enter(self, model: nn.Module, step: int) -> None:
        stage = self.schedule.stage_at(step)
        if stage != self.stage:
            apply_stage(model, stage)
            self.stage = stage

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        initialize_fsdp_while_trainable(model)
        self._enter(model, state.global_step)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._enter(model, state.global_step)
