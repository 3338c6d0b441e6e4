"""Greedy decoding of student outputs, shared by evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    inputs: Sequence[str],
    max_input_length: int,
    max_new_tokens: int,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy outputs for one batch of already-prefixed inputs.

    Args:
        model: a seq2seq model (or a DeepSpeed engine's module).
        tokenizer: its tokenizer.
        inputs: prefixed input texts (`predict: ...`).
        max_input_length: inputs are truncated to this many tokens.
        max_new_tokens: most tokens generated per output.
        synced_gpus: keep every rank generating until all are done; required under ZeRO-3,
            where each forward pass gathers parameters from all ranks.

    Returns:
        One decoded text per input, special tokens removed.
    """
    device = next(model.parameters()).device
    batch = tokenizer(
        list(inputs),
        max_length=max_input_length,
        truncation=True,
        padding=True,
        return_tensors="pt",
    ).to(device)
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        synced_gpus=synced_gpus,
    )
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
