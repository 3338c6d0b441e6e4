"""DeepSpeed knobs from TrainConfig: the ZeRO config dict, the optimizer and the schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from dsbs.config import TrainConfig


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for one worker (micro-batch per GPU/worker)."""
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 2:
        zero.update(overlap_comm=train.use_gpu, contiguous_gradients=True)
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
    if train.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_optimization": zero,
        # Adafactor is a client optimizer; ZeRO accepts it once told it may.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def apply_activation_checkpointing(model: Any, train: TrainConfig) -> None:
    """Recompute each layer in the backward instead of keeping its activations, when asked."""
    if train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the decoder's cache is useless and unsafe here


def build_optimizer(train: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """AdamW (the paper's), DeepSpeed's CPU Adam under optimizer offload, or Adafactor."""
    if train.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # Fixed learning rate (T5's own finetuning setting), not Adafactor's relative steps.
        return Adafactor(
            params,
            lr=train.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=train.weight_decay,
        )
    if train.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(
            params, lr=train.lr, weight_decay=train.weight_decay, adamw_mode=True
        )
    return torch.optim.AdamW(
        params, lr=train.lr, weight_decay=train.weight_decay, fused=train.use_gpu
    )


def lr_lambda(train: TrainConfig) -> Any:
    """Multiplier of the peak learning rate by optimizer step: linear warmup, then the decay."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        if train.schedule == "constant":
            return 1.0
        span = max(1, train.max_steps - train.warmup_steps)
        progress = min(1.0, (step - train.warmup_steps) / span)
        if train.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
