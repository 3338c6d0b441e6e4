"""Model FLOPs utilisation of dsbs's training step: DeepSpeed ZeRO, bf16, one GPU.

    # the issue's two measurements (one GPU; t5-v1_1-* built from config, bf16)
    python benchmarks/train_mfu.py --preset t5-v1_1-large --zero 2 --micro-batch 32
    python benchmarks/train_mfu.py --preset t5-v1_1-xl --zero 3 --micro-batch 16 \
        --activation-checkpointing
    # a smoke run on CPU (checks the script itself, not a measurement)
    .venv/bin/python benchmarks/train_mfu.py --preset t5-tiny --device cpu --steps 6 --warmup 2

It runs the training loop's own pieces, `deepspeed_config` and `multitask_loss`, in one process
without Ray (the GPU machine has no Ray; Ray's per-step cost is measured on CPU by
train_throughput.py). Each step is a distill_step_by_step batch: the label task (input ->
short label) and the rationale task (input -> rationale), with input, label and rationale
lengths drawn per row around the given means, so batches carry real padding. FLOPs are counted
per stack over the real tokens only (src/dsbs/train/flops.py), never 6 x parameters x tokens.

On the device machine (no network) this needs PYTHONPATH=src and DeepSpeed, whose 2 MB sdist
travels in the carry: `pip install --no-build-isolation --no-deps deepspeed-*.tar.gz`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _batch(args: argparse.Namespace, vocab: int, generator) -> dict:
    """One distill_step_by_step batch, collated, with lengths drawn per row around the means."""
    import torch

    def lengths(mean: int) -> list[int]:
        low, high = mean // 2, mean + mean // 2 + 1
        spread = torch.randint(low, high, (args.micro_batch,), generator=generator)
        return [max(2, int(n)) for n in spread]

    def task(input_lens: list[int], target_lens: list[int]) -> dict:
        width_in, width_out = max(input_lens), max(target_lens)
        ids = torch.randint(2, vocab, (len(input_lens), width_in), generator=generator)
        labels = torch.randint(2, vocab, (len(input_lens), width_out), generator=generator)
        for i, (n_in, n_out) in enumerate(zip(input_lens, target_lens, strict=True)):
            ids[i, n_in:] = 0  # pad id
            labels[i, n_out:] = -100
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}

    inputs = lengths(args.input_len)
    label_lens, rationale_lens = lengths(args.label_len), lengths(args.rationale_len)
    return {"label": task(inputs, label_lens), "rationale": task(inputs, rationale_lens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="t5-v1_1-large")
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=256, help="mean input tokens per row")
    parser.add_argument("--label-len", type=int, default=16, help="mean label tokens")
    parser.add_argument("--rationale-len", type=int, default=128, help="mean rationale tokens")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="default: from the GPU's name")
    args = parser.parse_args()

    on_gpu = args.device == "cuda"
    if not on_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")

    import deepspeed
    import torch
    from transformers import T5ForConditionalGeneration

    from dsbs.config import TrainConfig
    from dsbs.student.presets import build_config
    from dsbs.train.deepspeed_setup import (
        apply_activation_checkpointing,
        build_optimizer,
        deepspeed_config,
    )
    from dsbs.train.flops import peak_tflops, token_rows, train_flops
    from dsbs.train.loss import multitask_loss, to_device

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    train = TrainConfig(
        use_gpu=on_gpu,
        zero_stage=args.zero,
        precision="bf16" if on_gpu else "fp32",
        micro_batch_size=args.micro_batch,
        max_steps=args.steps,
        activation_checkpointing=args.activation_checkpointing,
    )
    config = build_config(args.preset)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    apply_activation_checkpointing(model, train)
    optimizer = build_optimizer(train, model.parameters())
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(train)
    )
    generator = torch.Generator().manual_seed(0)
    times, flops = [], []
    for step in range(args.steps):
        batch = _batch(args, config.vocab_size, generator)
        rows = token_rows(batch)  # counted on the CPU copy, as the training loop does
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        losses = multitask_loss(engine, to_device(batch, engine.device), train.alpha)
        engine.backward(losses.total)
        engine.step()
        if on_gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            flops.append(train_flops(config, rows))
    achieved = sum(flops) / sum(times) / 1e12
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if on_gpu else None)
    result = {
        "preset": args.preset,
        "zero_stage": args.zero,
        "micro_batch": args.micro_batch,
        "activation_checkpointing": args.activation_checkpointing,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "step_s_median": statistics.median(times),
        "model_tflops_per_s": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "examples_per_s": args.micro_batch * len(times) / sum(times),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
