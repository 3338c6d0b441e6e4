"""The multi-task loss of distilling step-by-step, one training step's arithmetic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Losses:
    """The total the optimizer sees and its parts (rationale_loss is None without rationales)."""

    total: torch.Tensor
    label_loss: torch.Tensor
    rationale_loss: torch.Tensor | None


def to_device(
    batch: dict[str, dict[str, torch.Tensor]], device: torch.device
) -> dict[str, dict[str, torch.Tensor]]:
    """A collated batch of both tasks on the model's device (DeepSpeed does not move inputs)."""
    return {task: {k: v.to(device) for k, v in part.items()} for task, part in batch.items()}


def multitask_loss(model: Any, batch: dict[str, dict[str, torch.Tensor]], alpha: float) -> Losses:
    """The total alpha * CE(label) + (1 - alpha) * CE(rationale), or the label CE alone.

    Each CE is T5's token-level mean over non-padding target tokens of its task.
    """
    label_loss = model(**batch["label"]).loss  # predict: input [B, T_in] -> label [B, T_label]
    if "rationale" not in batch:
        return Losses(total=label_loss, label_loss=label_loss, rationale_loss=None)
    rationale_loss = model(**batch["rationale"]).loss  # explain: input -> rationale [B, T_rat]
    total = alpha * label_loss + (1.0 - alpha) * rationale_loss
    return Losses(total=total, label_loss=label_loss, rationale_loss=rationale_loss)
