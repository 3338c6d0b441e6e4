"""Training's driver memory and throughput: streamed split shards against the in-memory list.

    .venv/bin/python benchmarks/train_streaming.py --small 20000 --large 200000 --steps 300

The training driver's peak RSS for `--large` synthetic rows against `--small` rows, same
steps, and the training examples/s, for two data paths side by side under the same loop:
  streamed  today's: the driver writes the splits once as parquet shards (one streaming pass),
            trains the tokenizer on a bounded sample, and Ray Train workers stream the shards
            through Ray Data (train/data.py, trainer.ray_dataset);
  in-memory the previous one, re-created here for the comparison: the driver reads every
            record into a list, copies it into shuffled epochs and hands it to
            `ray.data.from_items`; the tokenizer sees every row.
Each measurement runs in its own process (a fresh local Ray with 2 CPUs, 2 workers, t5-tiny,
ZeRO-2), so ru_maxrss is that driver's own peak. Runs alternate streamed / in-memory.
examples/s leaves out the first 50 steps, while the workers read ahead; the first step, which
also waits for a pass's shuffle buffer to fill, is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

WARMUP = 50
"""Steps left out of the examples/s."""


def _in_memory_dataset(source: str, train: Any) -> Any:
    """The previous data path: every record in a list, epochs copied, ray.data.from_items."""
    import ray.data

    from dsbs.records import read_records
    from dsbs.train.data import MIN_PASS_ROWS
    from dsbs.train.examples import split_of, to_example

    rows = []
    for record in read_records(source):
        example = to_example(record, train.mode, train.label_source)
        if isinstance(example, str):
            continue
        split = split_of(
            example.id, train.valid_fraction, train.test_fraction, train.subsample, train.seed
        )
        if split == "train":
            rows.append(asdict(example))
    per_step = train.num_workers * train.micro_batch_size * train.grad_accum_steps
    needed = math.ceil(train.max_steps * per_step / len(rows))
    copies = max(1, min(needed, math.ceil(MIN_PASS_ROWS / len(rows))))
    rng = random.Random(train.seed)  # noqa: S311 - data order
    out: list[dict[str, str]] = []
    for _ in range(copies):
        rng.shuffle(rows)
        out.extend(rows)
    return ray.data.from_items(out)


def _one(approach: str, source: str, steps: int, work: str) -> dict[str, Any]:
    """One training run of `approach`, in this process; returns what the driver measured."""
    import ray

    from dsbs import storage
    from dsbs.config import load_config
    from dsbs.records import read_records
    from dsbs.student.tokenizer import train_tokenizer
    from dsbs.train import trainer

    cfg = load_config(
        None,
        [
            f"train.data={source}",
            f"pipeline.run_dir={work}",
            f"train.max_steps={steps}",
            "train.micro_batch_size=8",
            f"train.eval_every={steps + 1}",
            f"train.checkpoint_every={steps}",
            "train.zero_stage=2",
            "train.valid_fraction=0.001",
            "train.test_fraction=0.001",
            "student.vocab_size=1000",
            "student.max_input_length=128",
            "student.max_target_length=64",
        ],
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    if approach == "in-memory":
        # The previous tokenizer saw every row's four texts (as the streamed one sees its
        # sample's); the dataset was built from a list.
        records = read_records(source)
        texts = [f"predict: {r.input}" for r in records] + [f"explain: {r.input}" for r in records]
        texts += [r.teacher_label or "" for r in records] + [r.rationale or "" for r in records]
        train_tokenizer(texts, cfg.student.vocab_size, f"{work}/tokenizer")
        del records, texts
        student = cfg.student.model_copy(update={"tokenizer": f"{work}/tokenizer"})
        trainer.ray_dataset = lambda manifest, train: _in_memory_dataset(source, train)
        summary = trainer.train_student(cfg.train, student, "svamp", work)
    else:
        summary = trainer.train_student(cfg.train, cfg.student, "svamp", work)
    wall = time.perf_counter() - started
    text = storage.read_bytes(f"{summary.output}/metrics.jsonl").decode()
    seconds = [
        r["train_seconds"] for r in map(json.loads, text.splitlines()) if r["split"] == "train"
    ]
    per_step = cfg.train.micro_batch_size * cfg.train.num_workers
    return {
        "approach": approach,
        "rows": sum(summary.rows.values()),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # After the first WARMUP steps, as train_throughput.py measures; the first step also
        # waits for the pass's shuffle buffer to fill, reported on its own.
        "examples_per_s": (steps - WARMUP) * per_step / (seconds[-1] - seconds[WARMUP - 1]),
        "first_step_s": seconds[0],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # approach, in a child process
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.source, args.steps, args.work)))
        return

    from dsbs.data.synth import synth

    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-stream-"))
    sources = {}
    for n in (args.small, args.large):
        sources[n] = str(work / f"rows-{n}.jsonl")
        synth("arithmetic", n, 0, sources[n], rationales=True)
    results: list[dict[str, Any]] = []
    for n in (args.small, args.large):
        for approach in ("streamed", "in-memory"):
            command = [sys.executable, __file__, "--one", approach, "--source", sources[n]]
            command += ["--steps", str(args.steps), "--work", str(work / f"{approach}-{n}")]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)

    summary = {}
    for approach in ("streamed", "in-memory"):
        small, large = (r for r in results if r["approach"] == approach)  # in order of size
        summary[approach] = {
            "rss_ratio_large_to_small": large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"],
            "examples_per_s_small": small["examples_per_s"],
            "examples_per_s_large": large["examples_per_s"],
            "first_step_s_small": small["first_step_s"],
            "first_step_s_large": large["first_step_s"],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
