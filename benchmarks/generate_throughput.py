"""Generation throughput: the dsbs pipeline against `vllm.LLM.generate` on the same prompts.

    .venv/bin/python benchmarks/generate_throughput.py --rows 128 --max-tokens 64

Both sides use the same model (the embedded SmolLM2-135M-Instruct), engine arguments
(`dsbs.teachers.vllm.engine_args`), chat prompts and greedy sampling with the same stops.
The direct side runs first in a child process (so its engine is gone before the pipeline
starts on the same cores) and times `LLM.generate` alone; the pipeline side times the
streaming phase (Ray Data -> Serve handle -> vLLM replica -> parse -> parquet shards) after
the teacher replica is up. Output tokens/s of each, and their ratio, are printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def chat_prompts(cfg: Any, records: list[Any], tokenizer: Any) -> list[str]:
    """The teacher's prompt text for each record, as the pipeline's chat requests render it."""
    from dsbs.generate.caller import teacher_request

    prompts = []
    for record in records:
        request = teacher_request(cfg, record.task, record.id, record.input, 1)
        messages = [{"role": r, "content": c} for r, c in request.messages or ()]
        prompts.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return prompts


def direct_generate(
    rows_file: str,
    config: str | None,
    overrides: list[str],
    queue: multiprocessing.Queue,
) -> None:
    """Child process: `vllm.LLM.generate` on the rows' teacher prompts; puts tokens and seconds.

    The engine arguments, prompts and sampling are the pipeline's own for the same config.
    """
    from vllm import LLM

    from dsbs.config import load_config
    from dsbs.generate.caller import sampling_for
    from dsbs.records import read_records
    from dsbs.teachers.vllm import _sampling_params, engine_args, set_cpu_engine_env

    set_cpu_engine_env()  # the replica's own engine settings (KV cache, cores)
    cfg = load_config(config, overrides).teacher
    args = engine_args(cfg)
    llm = LLM(**args)
    tokenizer = llm.get_tokenizer()
    records = read_records(rows_file)
    prompts = chat_prompts(cfg, records, tokenizer)
    params = _sampling_params(sampling_for(cfg, 1, records[0].id))
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    queue.put({"output_tokens": tokens, "seconds": seconds, "dtype": args["dtype"]})
    llm.llm_engine.engine_core.shutdown()
    queue.close()
    queue.join_thread()
    os._exit(0)  # vLLM's background threads would keep the child alive past this point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="pipeline in flight (default: the stage's)"
    )
    args = parser.parse_args()

    from dsbs.config import load_config
    from dsbs.data.synth import synth
    from dsbs.generate import generate_rationales

    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-gen-"))
    rows_file = str(work / "rows.jsonl")
    synth("arithmetic", args.rows, 0, rows_file)

    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=direct_generate,
        args=(rows_file, None, [f"teacher.max_tokens={args.max_tokens}"], queue),
    )
    child.start()
    direct = queue.get()
    child.join()

    cfg = load_config(
        None,
        [
            f"data.source={rows_file}",
            f"pipeline.run_dir={work / 'run'}",
            f"teacher.max_tokens={args.max_tokens}",
            "generate.shard_rows=32",
        ]
        + ([] if args.max_in_flight is None else [f"generate.max_in_flight={args.max_in_flight}"]),
    )
    summary = generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)
    stats_file = next((work / "run" / "generate").glob("*/stats.json"))
    run = json.loads(stats_file.read_text())["this_run"]

    direct_tps = direct["output_tokens"] / direct["seconds"]
    pipeline_tps = run["output_tokens_per_s"]
    print(f"rows={args.rows} max_tokens={args.max_tokens} max_in_flight={args.max_in_flight}")
    print(
        f"direct vllm.LLM.generate: {direct['output_tokens']} tokens in {direct['seconds']:.1f} s"
        f" = {direct_tps:.1f} tokens/s"
    )
    print(
        f"dsbs pipeline:            {run['output_tokens']} tokens in {run['streaming_s']:.1f} s"
        f" = {pipeline_tps:.1f} tokens/s"
    )
    print(f"ratio pipeline/direct:    {pipeline_tps / direct_tps:.3f}")
    print(summary.line())


if __name__ == "__main__":
    main()
