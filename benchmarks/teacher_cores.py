"""The teacher's engine on a small CPU node: vLLM's core reservation against dsbs's shared cores.

    .venv/bin/python benchmarks/teacher_cores.py --rows 128 --in-flight 64
    .venv/bin/python benchmarks/teacher_cores.py --rows 128 --in-flight 64 --avx2

vLLM's CPU build keeps a core for its engine-core (scheduler) process and binds the model's
threads to the others; on 2 cores that is one thread for the model. Each setting below runs
in its own process with the environment a Serve replica of `teacher.num_cpus: 1` has
(OMP_NUM_THREADS=1 from Ray): `vllm.v1.engine.async_llm.AsyncLLM`, as the replica holds it,
with the demo's engine arguments, chat prompts and sampling; `--in-flight` requests at a time;
output tokens/s over the whole set after one warm-up request. `--avx2` runs every setting
under the AVX2 emulation of `cpu_isa.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

SETTINGS = {
    "vllm default (1 core reserved)": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
    "in-process executor, 2 threads": {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "2",
    },
    "dsbs (cores shared)": {},
}


def probe(
    rows_file: str, in_flight: int, dtype: str, overrides: tuple[str, ...] = ()
) -> dict[str, object]:
    """The teacher engine as a replica builds it; output tokens/s over the rows of `rows_file`.

    `overrides` are more `teacher.*` settings. Also returns the share of answers that parse
    and the share the task counts right.
    """
    from generate_throughput import chat_prompts  # this script's folder is on sys.path
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from dsbs.config import load_config
    from dsbs.generate.caller import sampling_for
    from dsbs.records import read_records
    from dsbs.tasks import get_task
    from dsbs.teachers.vllm import _sampling_params, engine_args, set_cpu_engine_env

    cfg = load_config(None, [f"teacher.dtype={dtype}", "teacher.max_tokens=64", *overrides]).teacher
    set_cpu_engine_env()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(cfg)))
    records = read_records(rows_file)

    async def run() -> tuple[list[tuple[int, str]], float]:
        prompts = chat_prompts(cfg, records, engine.get_tokenizer())
        params = _sampling_params(sampling_for(cfg, 1, records[0].id))
        gate = asyncio.Semaphore(in_flight)

        async def one(prompt: str) -> tuple[int, str]:
            async with gate:
                last = None
                async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                    last = out
                return (len(last.outputs[0].token_ids), last.outputs[0].text) if last else (0, "")

        await one(prompts[0])
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(p) for p in prompts))
        return answers, time.perf_counter() - started

    answers, seconds = asyncio.run(run())
    engine.shutdown()
    task = get_task(records[0].task)
    labels = [
        task.parse(text, r.input).label for (_, text), r in zip(answers, records, strict=True)
    ]
    tokens = sum(n for n, _ in answers)
    return {
        "output_tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "parsed": round(sum(label is not None for label in labels) / len(records), 3),
        "right": round(
            sum(task.is_correct(p, r.label) for p, r in zip(labels, records, strict=True))
            / len(records),
            3,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--avx2", action="store_true", help="under the AVX2 emulation")
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setting is not None:
        result = probe(args.rows_file, args.in_flight, args.dtype)
        print(json.dumps(result), flush=True)
        os._exit(0)  # vLLM's background threads would keep the process alive

    from cpu_isa import avx2_env, json_child  # this script's folder is on sys.path

    from dsbs.data.synth import synth

    rows_file = str(Path(tempfile.mkdtemp(prefix="dsbs-cores-")) / "rows.jsonl")
    synth("arithmetic", args.rows, 0, rows_file, max_ops=1)

    base = avx2_env() if args.avx2 else dict(os.environ)
    base["OMP_NUM_THREADS"] = "1"  # what Ray gives an actor of num_cpus 1
    base.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)  # each setting names its own
    for name, extra in SETTINGS.items():
        command = [sys.executable, __file__, "--setting", name, "--rows-file", rows_file]
        command += ["--in-flight", str(args.in_flight), "--dtype", args.dtype]
        result = json_child(command, {**base, **extra})
        cpu = "emulated AVX2" if args.avx2 else "host"
        print(json.dumps({"setting": name, "dtype": args.dtype, "cpu": cpu, **result}), flush=True)


if __name__ == "__main__":
    main()
