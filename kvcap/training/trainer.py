"""KVCapTrainer: the HF `Trainer` with kvcap's two-stage optimizer and schedule."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import Trainer

from ..disk import naming_a_full_disk
from .stages import (
    LORA,
    StageSchedule,
    StageSwitchCallback,
    build_stage_optimizer,
    build_stage_scheduler,
)


class KVCapTrainer(Trainer):
    """A `Trainer` whose one `train()` runs stage 1 (projector) then stage 2 (projector + LoRA).

    `args` is a `KVCapTrainingArguments`: its `stage1_epochs` / `stage2_epochs` and stage learning rates define
    the schedule; `num_train_epochs` is their sum.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_callback = StageSwitchCallback(schedule=None)
        self.add_callback(self.stage_callback)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if shard_on_cpu(self.accelerator.state):
            self.is_fsdp_enabled = True

    def _save_checkpoint(self, model, trial) -> None:
        # A full disk otherwise surfaces as torch's "file write failed", naming no folder. The cut checkpoint
        # has no trainer_state.json (written last), so `--resume_from_checkpoint true` passes over it.
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        with naming_a_full_disk(folder, "a checkpoint"):
            super()._save_checkpoint(model, trial)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = build_stage_optimizer(
                self.model,
                weight_decay=self.args.weight_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            schedule = StageSchedule.from_epochs(
                num_training_steps,
                self.args.stage1_epochs,
                self.args.stage2_epochs,
                stage1_learning_rate=self.args.stage1_learning_rate,
                stage2_learning_rate=self.args.stage2_learning_rate,
                warmup_ratio=self.args.stage_warmup_ratio,
            )
            self.stage_callback.schedule = schedule
            self.lr_scheduler = build_stage_scheduler(optimizer or self.optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Added here rather than in a callback so that every reporter (console, TensorBoard, log_history) sees them.
        schedule = self.stage_callback.schedule
        if "loss" in logs and schedule is not None and self.state.global_step > 0:
            # Like the Trainer's `learning_rate`, these describe the optimizer step just taken.
            step = self.state.global_step - 1
            logs["stage"] = schedule.stage_at(step)
            logs["learning_rate_lora"] = schedule.learning_rate(step, LORA)
        super().log(logs, *args, **kwargs)


def shard_on_cpu(state) -> bool:
    """Apply an FSDP launch's plugin to CPU processes, which accelerate would otherwise train as plain DDP.

    accelerate turns an FSDP launch into FSDP on accelerator devices only; on CPU processes (joined over gloo) it
    keeps `MULTI_CPU`, so every rank would silently hold the whole model. torch's FSDP2 runs on CPU, so the plugin
    accelerate read from the launch is applied here. Returns whether it was.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables the launcher set
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs fsdp_version: 2 (FSDP1 shards on accelerator devices only).")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True
