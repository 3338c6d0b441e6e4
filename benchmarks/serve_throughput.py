"""Serving throughput: dynamic batching against none, and CTranslate2 against HF generate.

    .venv/bin/python benchmarks/serve_throughput.py --clients 32 --seconds 20 --repeats 2

One local Ray, one student replica (2 CPUs: the whole machine) behind the dsbs ingress, real
HTTP on 127.0.0.1. `--clients` concurrent clients (asyncio + aiohttp, keep-alive) each post
one input per request, back to back. Variants, alternating each repeat:
  hf-batch1    HF generate, max_batch_size=1 (each request decoded alone)
  hf-batch32   HF generate, @serve.batch up to 32 requests
  ct2-batch32  CTranslate2 (int8 on CPU), @serve.batch up to 32
Every variant waits up to `--batch-wait-s` (50 ms) for a batch to fill. Measured after
`--warmup` seconds: completed requests per second, p50 and p99 latency.

The student is preset `--preset` (t5-v1_1-small by default) built from config with random
weights and a SentencePiece tokenizer trained on the arithmetic text: the random student does
not emit </s>, so every answer runs to `--max-new-tokens` tokens (checked on start) and every
variant does the same work per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {
    "hf-batch1": {"backend": "hf", "max_batch_size": 1},
    "hf-batch32": {"backend": "hf", "max_batch_size": 32},
    "ct2-batch32": {"backend": "ctranslate2", "max_batch_size": 32},
}


def _make_student(out: Path, preset: str, max_new_tokens: int) -> Path:
    import torch
    from transformers import T5ForConditionalGeneration

    from dsbs.student.export import StudentInfo, save_student
    from dsbs.student.presets import build_config
    from dsbs.student.tokenizer import train_tokenizer

    texts = [f"predict: What is {a} plus {b}? {a + b}" for a in range(60) for b in range(60)]
    tokenizer = train_tokenizer(texts, 256, out / "tok")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(build_config(preset, len(tokenizer))).eval()
    info = StudentInfo(
        task="svamp",
        mode="distill_step_by_step",
        preset=preset,
        max_input_length=64,
        max_target_length=max_new_tokens,
        steps=0,
        version="bench",
    )
    save_student(model, tokenizer, info, str(out / "student"))
    ids = tokenizer(["predict: What is 1 plus 2?"], return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    # decoder start token + max_new_tokens: the answer ran to the limit.
    assert generated.shape[1] == max_new_tokens + 1, "the random student stopped early"
    return out / "student"


async def _client(session: Any, url: str, client: int, stop_at: float, latencies: list) -> int:
    errors = 0
    n = 0
    while time.monotonic() < stop_at:
        body = {"inputs": [f"What is {client} plus {n % 50}?"]}
        started = time.monotonic()
        async with session.post(url, json=body) as response:
            await response.read()
            if response.status == 200:
                latencies.append((started, time.monotonic() - started))
            else:
                errors += 1
        n += 1
    return errors


async def _load(url: str, clients: int, seconds: float) -> tuple[list, int]:
    import aiohttp

    latencies: list[tuple[float, float]] = []
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        errors = await asyncio.gather(
            *(_client(session, url, i, stop_at, latencies) for i in range(clients))
        )
    return latencies, sum(errors)


def _measure(name: str, model: Path, args: argparse.Namespace, port: int) -> dict[str, Any]:
    from dsbs.config import ServeConfig
    from dsbs.serve.runner import start_student, stop_student

    cfg = ServeConfig.model_validate(
        {
            "model": str(model),
            "port": port,
            "num_cpus": 2,
            "min_replicas": 1,
            "max_replicas": 1,
            "batch_wait_timeout_s": args.batch_wait_s,
            "max_input_tokens": 64,
            **VARIANTS[name],
        }
    )
    base = start_student(cfg, run_dir="unused")
    try:
        began = time.monotonic()
        latencies, errors = asyncio.run(
            _load(f"{base}/v1/predict", args.clients, args.warmup + args.seconds)
        )
    finally:
        stop_student()
    measured = sorted(lat for start, lat in latencies if start >= began + args.warmup)
    window = args.seconds
    return {
        "variant": name,
        "requests_per_s": round(len(measured) / window, 2),
        "p50_ms": round(1000 * statistics.median(measured), 1) if measured else None,
        "p99_ms": round(1000 * measured[int(0.99 * (len(measured) - 1))], 1) if measured else None,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--preset", default="t5-v1_1-small")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--batch-wait-s",
        type=float,
        default=0.05,
        help="serve.batch_wait_timeout_s for every variant (a batch of 1 never waits)",
    )
    args = parser.parse_args()

    import ray
    from ray import serve

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = 8000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        model = _make_student(Path(tmp), args.preset, args.max_new_tokens)
        for repeat in range(args.repeats):
            order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                result = _measure(name, model, args, port)
                print(json.dumps(result), flush=True)
                results[name].append(result)
    serve.shutdown()
    ray.shutdown()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    summary = {
        "clients": args.clients,
        "preset": args.preset,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "batch_wait_s": args.batch_wait_s,
        **{
            name: {k: median(name, k) for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")}
            for name in VARIANTS
        },
        "batching_speedup": round(
            median("hf-batch32", "requests_per_s") / median("hf-batch1", "requests_per_s"), 2
        ),
        "ctranslate2_speedup": round(
            median("ct2-batch32", "requests_per_s") / median("hf-batch32", "requests_per_s"), 2
        ),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
