"""Generation with 2 teacher replicas against 1, on the same rows (issue 15, item 1).

    .venv/bin/python benchmarks/generate_replicas.py --rows 128 --max-tokens 64

Each side is a fresh `dsbs generate` run of the same synthetic rows (embedded
SmolLM2-135M-Instruct on vLLM's CPU build, 1 CPU per replica) with the replica count fixed
(`teacher.min_replicas = teacher.max_replicas`), so autoscaling delays do not enter; the
load is the stage's own (`generate.max_in_flight` unset: replicas x target_ongoing_requests).
Output tokens/s are those of the streaming phase, after the replicas are up. Ray runs with 3
logical CPUs, room for two 1-CPU replicas and the stage's light tasks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import ray

    from dsbs.config import load_config
    from dsbs.data.synth import synth
    from dsbs.generate import generate_rationales

    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-replicas-"))
    rows_file = str(work / "rows.jsonl")
    synth("arithmetic", args.rows, 0, rows_file)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    results = {}
    for replicas in (1, 2):
        cfg = load_config(
            None,
            [
                f"data.source={rows_file}",
                f"pipeline.run_dir={work / f'run-{replicas}'}",
                f"teacher.max_tokens={args.max_tokens}",
                "teacher.num_cpus=1",
                f"teacher.min_replicas={replicas}",
                f"teacher.max_replicas={replicas}",
                "generate.shard_rows=32",
            ],
        )
        summary = generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)
        stats = json.loads((Path(summary.output).parent / "stats.json").read_text())["this_run"]
        results[replicas] = stats
        print(
            f"{replicas} replica(s): {stats['output_tokens']} output tokens in "
            f"{stats['streaming_s']:.1f} s = {stats['output_tokens_per_s']:.1f} tokens/s",
            flush=True,
        )
    ratio = results[2]["output_tokens_per_s"] / results[1]["output_tokens_per_s"]
    print(f"ratio 2 replicas / 1: {ratio:.2f}")


if __name__ == "__main__":
    main()
