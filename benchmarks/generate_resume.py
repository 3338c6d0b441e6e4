"""Resuming generation: a 100,000-row run 99% done against a 10,000-row one (issue 15, item 4).

    .venv/bin/python benchmarks/generate_resume.py --rows 10000 100000

For each size, the earlier run is made by the stage itself (`generate_rationales`, input
shards of 100 rows) with a stand-in teacher that answers at once (tests/slow_teacher.py's
SlowEngine with 1 ms steps: that run is set-up, not what is measured); then the outputs of
its last 1% of input shards (their data, quarantine and done files) are deleted, which is
what a run stopped there leaves behind. The resume is a fresh driver process running the
stage with the real teacher (the embedded SmolLM2-135M-Instruct on vLLM's CPU build) for the
rows left. It reports its peak resident memory (VmHWM), the seconds its resume plan takes
(reading the inputs manifest and every done shard's counts, timed once on their own before
the run), and the run's wall time with its streaming phase (teacher calls) apart.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SHARD_ROWS = 100
MAX_TOKENS = 16


def _overrides(work: Path) -> list[str]:
    return [
        f"data.source={work / 'rows.jsonl'}",
        f"pipeline.run_dir={work / 'run'}",
        f"teacher.max_tokens={MAX_TOKENS}",
        f"generate.shard_rows={SHARD_ROWS}",
    ]


def prepare(work: Path, rows: int, done: float) -> dict[str, int]:
    """Makes the earlier run and deletes what its unfinished shards would not have written."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.getenv("PYTHONPATH")]))
    sys.path.insert(0, str(TESTS))
    import ray
    import slow_teacher

    from dsbs import storage
    from dsbs.config import load_config
    from dsbs.data.synth import synth
    from dsbs.generate import generate_rationales
    from dsbs.generate.shards import counts_file, data_file, quarantine_file

    synth("arithmetic", rows, 0, str(work / "rows.jsonl"))
    # Replicas import slow_teacher: Ray's workers inherit PYTHONPATH from this process.
    ray.init(include_dashboard=False, log_to_driver=False)
    loader = functools.partial(
        slow_teacher.make_engine, log=str(work / "engine.log"), step_s=0.001, per_request_s=0.0
    )
    cfg = load_config(None, [*_overrides(work), "generate.max_in_flight=256"])
    summary = generate_rationales(
        cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir, teacher_loader=loader
    )
    ray.shutdown()
    out_dir = str(Path(summary.output).parent)
    shards = -(-rows // SHARD_ROWS)
    left = range(round(shards * done), shards)
    for index in left:
        for file in (counts_file, data_file, quarantine_file):
            if storage.exists(file(out_dir, index)):
                storage.delete(file(out_dir, index))
    return {"shards": shards, "shards_left": len(left), "rows_left": len(left) * SHARD_ROWS}


def resume(work: Path) -> dict[str, float]:
    """The measured resume: plan timed alone, then the stage with the real teacher."""
    sys.path.insert(0, str(TESTS))
    from memory import peak_rss_kib

    from dsbs.config import load_config
    from dsbs.generate import generate_rationales
    from dsbs.generate.inputs import prepare_inputs
    from dsbs.generate.shards import plan_resume
    from dsbs.generate.stage import config_hash
    from dsbs.rundir import StageOutput
    from dsbs.tasks import get_task

    cfg = load_config(None, _overrides(work))
    task = get_task(cfg.data.task)
    digest = config_hash(cfg.data, cfg.teacher, cfg.generate)
    out_dir = StageOutput(cfg.pipeline.run_dir, "generate", digest).path
    started = time.perf_counter()
    inputs = prepare_inputs(task, cfg.data.source, out_dir, cfg.generate.shard_rows)
    plan = plan_resume(out_dir, inputs, task)
    planning = time.perf_counter() - started
    summary = generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)
    stats = json.loads((Path(summary.output).parent / "stats.json").read_text())["this_run"]
    return {
        "rows_sent": sum(w.rows for w in plan.work),
        "skipped": summary.skipped,
        "teacher_calls": summary.teacher_calls,
        "planning_s": round(planning, 3),
        "wall_s": round(summary.wall_time_s, 1),
        "streaming_s": round(stats["streaming_s"], 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
    }


def _child(phase: str, work: Path, rows: int, done: float) -> dict:
    """Runs one phase in a fresh interpreter, so each driver's peak memory is its own."""
    result = subprocess.run(
        [
            *(sys.executable, __file__, "--phase", phase, "--work", str(work)),
            *("--rows", str(rows), "--done", str(done)),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--done", type=float, default=0.99)
    parser.add_argument("--phase", choices=["prepare", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "prepare":
        print(json.dumps(prepare(args.work, args.rows[0], args.done)), flush=True)
        return
    if args.phase == "resume":
        print(json.dumps(resume(args.work)), flush=True)
        return

    results = []
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix=f"dsbs-bench-resume-{rows}-"))
        made = _child("prepare", work, rows, args.done)
        print(json.dumps({"rows": rows, **made}), flush=True)
        results.append({"rows": rows, **made, **_child("resume", work, rows, args.done)})
        print(json.dumps(results[-1]), flush=True)
    print("\n| run | rows left | plan s | wall s | streaming s | driver peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['rows']:,} rows, {args.done:.0%} done | {r['teacher_calls']:,} | "
            f"{r['planning_s']} | {r['wall_s']} | {r['streaming_s']} | {r['peak_rss_mib']} |"
        )
    if len(results) == 2:
        small, large = results
        print(f"peak RSS ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
