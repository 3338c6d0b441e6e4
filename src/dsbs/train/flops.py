"""Model FLOPs of a T5 training step, counted per stack over real (non-pad) tokens.

The usual `6 x parameters x tokens` over-counts an encoder-decoder about 2x (1.9-2.0x for
t5-v1_1-large and -xl at paper-like lengths): no token passes through every parameter. Here
encoder tokens pay for the encoder layers, decoder tokens for the decoder layers and the output
projection, and cross-attention's key and value projections run over the encoder tokens once
per decoder layer. Attention scores and their weighted sums are counted over the real tokens of
each row (a decoder's causal attention as HF computes it, over the full square). Matrix
products only: norms, softmax, dropout and the relative position bias are a fraction of a
percent at these widths.

A training step is 3x the forward pass (the backward computes gradients for both inputs and
weights); recomputation under activation checkpointing is hardware work, not model FLOPs, and
is not counted, as in the usual definition of model FLOPs utilisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TRAIN_FACTOR = 3
"""Forward + backward in forward-pass units."""

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
"""Dense bf16 peak per GPU from the vendors' data sheets (the SXM part where there are
several), matched by a substring of the CUDA device name."""


def forward_macs(config: Any, encoder_tokens: int, decoder_tokens: int) -> int:
    """Multiply-accumulates of one forward pass for one row.

    Args:
        config: a `T5Config` (d_model, d_kv, num_heads, d_ff, num_layers, num_decoder_layers,
            vocab_size, feed_forward_proj).
        encoder_tokens: real tokens of the row's input.
        decoder_tokens: real tokens of the row's target.
    """
    d, inner = config.d_model, config.num_heads * config.d_kv
    ff = (3 if config.feed_forward_proj.startswith("gated") else 2) * d * config.d_ff
    n_e, n_d = encoder_tokens, decoder_tokens
    encoder = config.num_layers * (n_e * (4 * d * inner + ff) + 2 * n_e * n_e * inner)
    decoder_layer = (
        n_d * (4 * d * inner + 2 * d * inner + ff)  # self-attn q,k,v,o; cross-attn q,o; FF
        + n_e * 2 * d * inner  # cross-attn k,v over the encoder's output
        + 2 * n_d * n_d * inner  # self-attention scores and weighted sum
        + 2 * n_d * n_e * inner  # cross-attention scores and weighted sum
    )
    return encoder + config.num_decoder_layers * decoder_layer + n_d * d * config.vocab_size


def train_flops(config: Any, rows: Sequence[tuple[int, int]]) -> int:
    """Model FLOPs of a training step over (encoder tokens, decoder tokens) rows.

    One row per forward pass: a distill_step_by_step batch of B examples is 2B rows (the
    label task's and the rationale task's).
    """
    return 2 * TRAIN_FACTOR * sum(forward_macs(config, e, d) for e, d in rows)


def token_rows(batch: Mapping[str, Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(encoder tokens, decoder tokens) of every row of a collated batch, both tasks.

    Real tokens only: the attention mask's ones and the label ids that are not negative
    (padded target positions hold the loss's ignore index, -100).
    """
    rows: list[tuple[int, int]] = []
    for tensors in batch.values():
        encoder = tensors["attention_mask"].sum(dim=1).tolist()
        decoder = (tensors["labels"] >= 0).sum(dim=1).tolist()
        rows.extend(zip(encoder, decoder, strict=True))
    return rows


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name, or None for one not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
