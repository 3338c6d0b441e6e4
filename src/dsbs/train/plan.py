"""Per-GPU memory plan for training a student: model states, activations, and what fits.

Model states (weights, gradients, optimizer states) for bf16 + Adam come from DeepSpeed's own
estimators (`estimate_zero2/3_model_states_mem_needs`); the breakdown beside them, and the
totals for fp32 or Adafactor (which those estimators do not cover), use the same byte counts:
bf16 weights 2 and gradients 2 + 4 (fp32 accumulation), fp32 master weights 4, Adam moments 8,
Adafactor's factored moments about 0 per parameter. Activations are counted per layer for
T5 (encoder self-attention, decoder self- and cross-attention, gated-GELU feed-forward,
dropout masks), for both tasks' forward passes held until the joint backward, plus the
logits; with activation checkpointing only each layer's input is kept, plus one layer's
activations during recomputation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from dsbs.errors import UsageError

GIB = 1024**3
RUNTIME_OVERHEAD_BYTES = int(1.5 * GIB)
"""CUDA context, NCCL buffers and allocator slack, per GPU."""
USABLE_FRACTION = 0.95
GPUS_PER_NODE = 8  # ranks that share one host's RAM (a pod of 8 GPUs)
"""Share of a GPU's memory a plan may fill (fragmentation needs the rest)."""


GPU_MEM_GB = 80.0
"""Memory per GPU when none is given: the 80 GB A100s and H100s the presets are sized for."""


@dataclass(frozen=True)
class PlanInput:
    """What is being planned."""

    preset: str
    gpus: int
    gpu_mem_gb: float
    zero_stage: int
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: Literal["bf16", "fp32"] = "bf16"
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    micro_batch_size: int = 8
    max_input_length: int = 512
    max_target_length: int = 256
    activation_checkpointing: bool = True
    rationale: bool = True
    """Whether the rationale task's forward pass is held too (distill_step_by_step)."""
    vocab_size: int = 32128
    host_mem_gb: float | None = None
    """Host RAM per node; when given, the verdict checks it too."""

    def __post_init__(self) -> None:
        from dsbs.config import adafactor_problem

        if self.optimizer == "adafactor" and (
            problem := adafactor_problem(self.zero_stage, self.precision)
        ):
            raise UsageError(problem)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU by component, and the verdict."""

    params: int
    largest_layer_params: int
    weights: int
    gradients: int
    optimizer: int
    gathered_layer: int
    activations: int
    overhead: int
    deepspeed_model_states: int | None
    """DeepSpeed's estimate of weights + gradients + optimizer (bf16 + Adam only)."""
    host_ram_per_rank: int
    """Host RAM each rank needs: the model as it is built (all of it in fp32, or under ZeRO-3's
    zero.Init its partition plus one layer) and the states offloaded to the host. Loading
    pretrained weights adds one checkpoint shard while it lasts."""
    host_fits: bool
    fits: bool
    max_micro_batch_size: int
    """Largest micro-batch that fits (0: not even 1)."""

    @property
    def total(self) -> int:
        """Everything per GPU."""
        states = self.weights + self.gradients + self.optimizer + self.gathered_layer
        return states + self.activations + self.overhead


def count_params(preset: str, vocab_size: int) -> tuple[int, int]:
    """Total parameters and the largest single module's parameters, built on the meta device."""
    import torch
    from transformers import T5ForConditionalGeneration

    from dsbs.student.presets import build_config

    with torch.device("meta"):
        model = T5ForConditionalGeneration(build_config(preset, vocab_size))
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def _states(p: PlanInput, params: int, largest: int) -> tuple[int, int, int, int]:
    """Weights, gradients, optimizer states and the gathered layer, in bytes per GPU."""
    n = p.gpus
    mixed = p.precision == "bf16"
    weight_b = 2 if mixed else 4
    grad_b = 6 if mixed else 4  # bf16 gradient + fp32 accumulation buffer
    optim_b = (4 if mixed else 0) + (8 if p.optimizer == "adamw" else 0)
    weights = 0 if p.offload_param else (weight_b * params // (n if p.zero_stage == 3 else 1))
    on_gpu_grads = 0 if p.offload_optimizer else grad_b * params
    gradients = on_gpu_grads // (n if p.zero_stage >= 2 else 1)
    if p.offload_optimizer and p.zero_stage < 3:
        gradients = 2 * params // n if mixed else 0
    optimizer = 0 if p.offload_optimizer else optim_b * params // (n if p.zero_stage >= 1 else 1)
    gathered = 4 * largest if p.zero_stage == 3 else 0
    return weights, gradients, optimizer, gathered


def _activations(p: PlanInput, micro_batch: int) -> int:
    """Activation bytes per GPU for one micro-batch of both tasks."""
    from dsbs.student.presets import PRESETS

    shape = PRESETS[p.preset]
    h, f, a, k, layers = (shape[x] for x in ("d_model", "d_ff", "num_heads", "d_kv", "num_layers"))
    act = 2 if p.precision == "bf16" else 4
    b, s_in, s_out = micro_batch, p.max_input_length, p.max_target_length
    inner = a * k
    # Per token: layer norms and residual inputs, q/k/v/context, gated-GELU (two inputs, gelu,
    # product), dropout masks (1 byte); per token and key: scores, softmax and its dropout mask.
    enc_layer = (
        b * s_in * (act * (4 * h + 4 * inner + 4 * f) + 2 * h + f + (2 * act + 1) * a * s_in)
    )
    dec_layer = (
        b
        * s_out
        * (act * (6 * h + 8 * inner + 4 * f) + 3 * h + f + (2 * act + 1) * a * (s_out + s_in))
        + b * s_in * act * 2 * inner
    )  # cross-attention keys and values of the encoder output
    logits = b * s_out * p.vocab_size * (act + 4)  # logits and their fp32 log-softmax
    if p.activation_checkpointing:
        kept = layers * act * b * h * (s_in + s_out) + max(enc_layer, dec_layer)
    else:
        kept = layers * (enc_layer + dec_layer)
    per_task = kept + logits
    return per_task * (2 if p.rationale else 1)


def _deepspeed_estimate(p: PlanInput, params: int, largest: int) -> int | None:
    if p.precision != "bf16" or p.optimizer != "adamw" or p.zero_stage < 2:
        return None
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # planning needs no GPU
    if p.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, p.gpus, 1, p.offload_optimizer, p.offload_param, zero_init=True
        )
        return int(gpu)
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu = estimate_zero2_model_states_mem_needs(params, p.gpus, 1, p.offload_optimizer)
    return int(gpu)


def host_ram_per_rank(p: PlanInput, params: int, largest: int) -> int:
    """Host bytes per rank: building the fp32 model, and offloaded optimizer/parameter states."""
    n = max(1, p.gpus)
    build = 4 * params // n + 4 * largest if p.zero_stage == 3 else 4 * params
    offloaded = 0
    if p.offload_optimizer:
        offloaded += (4 + 8) * params // n  # fp32 master weights + Adam's two moments
    if p.offload_param:
        offloaded += (2 if p.precision == "bf16" else 4) * params // n
    return build + offloaded


def plan_memory(p: PlanInput) -> MemoryPlan:
    """The per-GPU memory plan for `p`, with the largest micro-batch that fits."""
    params, largest = count_params(p.preset, p.vocab_size)
    weights, gradients, optimizer, gathered = _states(p, params, largest)
    estimate = _deepspeed_estimate(p, params, largest)
    if estimate is not None:
        # DeepSpeed's figure is the authority; scale the breakdown to it.
        own = weights + gradients + optimizer + gathered
        ratio = estimate / own if own else 1.0
        weights, gradients, optimizer, gathered = (
            int(x * ratio) for x in (weights, gradients, optimizer, gathered)
        )
    fixed = weights + gradients + optimizer + gathered + RUNTIME_OVERHEAD_BYTES
    budget = p.gpu_mem_gb * GIB * USABLE_FRACTION
    best = 0
    for micro_batch in range(1, 1025):
        if fixed + _activations(p, micro_batch) > budget:
            break
        best = micro_batch
    activations = _activations(p, p.micro_batch_size)
    host = host_ram_per_rank(p, params, largest)
    host_fits = p.host_mem_gb is None or (
        host * min(p.gpus, GPUS_PER_NODE) <= p.host_mem_gb * GIB * USABLE_FRACTION
    )
    return MemoryPlan(
        params=params,
        largest_layer_params=largest,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        gathered_layer=gathered,
        activations=activations,
        overhead=RUNTIME_OVERHEAD_BYTES,
        deepspeed_model_states=estimate,
        host_ram_per_rank=host,
        host_fits=host_fits,
        fits=fixed + activations <= budget and host_fits,
        max_micro_batch_size=best,
    )


def format_plan(p: PlanInput, plan: MemoryPlan) -> str:
    """The plan as a short table people read in a terminal."""

    def gb(n: int) -> str:
        return f"{n / GIB:8.2f} GiB"

    offload = [
        x for x, on in (("optimizer", p.offload_optimizer), ("param", p.offload_param)) if on
    ]
    ds = (
        "n/a (bf16 + AdamW only)"
        if plan.deepspeed_model_states is None
        else gb(plan.deepspeed_model_states).strip()
    )
    lines = [
        f"{p.preset}: {plan.params / 1e9:.2f}B parameters "
        f"(largest layer {plan.largest_layer_params / 1e6:.1f}M); "
        f"{p.gpus} GPU(s) x {p.gpu_mem_gb:g} GB, ZeRO-{p.zero_stage}, {p.precision}, "
        f"{p.optimizer}, offload: {', '.join(offload) or 'none'}, activation checkpointing: "
        f"{'on' if p.activation_checkpointing else 'off'}",
        f"  weights          {gb(plan.weights)}",
        f"  gradients        {gb(plan.gradients)}",
        f"  optimizer states {gb(plan.optimizer)}",
        f"  gathered layer   {gb(plan.gathered_layer)}",
        f"  activations      {gb(plan.activations)}  (micro-batch {p.micro_batch_size}, "
        f"input {p.max_input_length}, target {p.max_target_length} tokens, "
        f"{'both tasks' if p.rationale else 'label task'})",
        f"  runtime overhead {gb(plan.overhead)}",
        f"  total per GPU    {gb(plan.total)}  of {p.gpu_mem_gb * USABLE_FRACTION:.1f} GB usable",
        f"  DeepSpeed's estimate of model states: {ds}",
        f"  host RAM         {gb(plan.host_ram_per_rank)}  per rank, "
        f"{plan.host_ram_per_rank * min(p.gpus, GPUS_PER_NODE) / GIB:.1f} GiB per node of "
        f"{min(p.gpus, GPUS_PER_NODE)} GPUs"
        + (f" (of {p.host_mem_gb:g} GB)" if p.host_mem_gb else ""),
        f"{'FITS' if plan.fits else 'DOES NOT FIT'}"
        f"{'' if plan.host_fits else ' (host RAM per node)'}; largest micro-batch that fits: "
        f"{plan.max_micro_batch_size}",
    ]
    return "\n".join(lines)
