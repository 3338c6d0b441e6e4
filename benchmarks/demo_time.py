"""`make demo` timed from a set-up environment, with the CPU it ran on: one BENCHMARKS row.

    .venv/bin/python benchmarks/demo_time.py

Removes the demo's run directory (its `pipeline.run_dir`, so that every stage runs), runs
`make demo` with its output on screen, and prints what BENCHMARKS.md's "`make demo` from a
set-up environment" table records: the CPU (model name, family and model, and whether it has
AVX-512 and native bf16; issue 16 wants the figure from a CPU where `grep -c avx512
/proc/cpuinfo` prints 0), the wall time, the stage seconds and the student's and teacher's
test accuracy from the run's report. One JSON line, then the table row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "local-demo.yaml"


def cpu_facts(cpuinfo: str) -> dict[str, object]:
    """The CPU of `/proc/cpuinfo`'s text: name, family, model and the flags that decide speed."""
    first: dict[str, str] = {}
    avx512_lines = 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key and key not in first:
            first[key] = value
        avx512_lines += "avx512" in line  # what `grep -c avx512 /proc/cpuinfo` counts
    flags = set(first.get("flags", "").split())
    return {
        "model_name": first.get("model name", "unknown"),
        "family": first.get("cpu family"),
        "model": first.get("model"),
        "grep_c_avx512": avx512_lines,
        "avx2": "avx2" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def describe(cpu: dict[str, object]) -> str:
    """The CPU as BENCHMARKS.md names it."""
    if cpu["grep_c_avx512"]:
        native = [f"`{f}`" for f in ("avx512_bf16", "amx_bf16") if cpu[f]]
        isa = "AVX-512" + (f" with {' and '.join(native)}" if native else ", no native bf16")
    else:
        isa = "**AVX2 only** (`grep -c avx512 /proc/cpuinfo` prints 0)"
    return f"`{cpu['model_name']}` family {cpu['family']} model {cpu['model']}, {isa}"


def table_row(cpu: dict[str, object], wall_s: float, metrics: dict) -> str:
    """The row of BENCHMARKS.md's demo table: CPU | date | total | generate | train | serve."""
    stages = metrics["stage_seconds"]
    student = metrics["student"]
    pipeline = sum(stages.values())
    return (
        f"| {describe(cpu)}; student {student['test_accuracy']:.1%} against the teacher's "
        f"{student['teacher_test_accuracy']:.1%} on {student['test_rows']} test rows "
        f"| {datetime.date.today().isoformat()} "
        f"| **{wall_s:.0f} s** ({wall_s / 60:.1f} min; {pipeline:.0f} s in the pipeline) "
        f"| {stages['generate']:.1f} s | {stages['train']:.1f} s | ~{stages['serve']:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's run directory (done stages are skipped)",
    )
    args = parser.parse_args()
    from dsbs.config import load_config

    run_dir = ROOT / load_config(DEMO_CONFIG).pipeline.run_dir  # what `make demo` runs
    cpu = cpu_facts(Path("/proc/cpuinfo").read_text())
    print(f"CPU: {describe(cpu)}", flush=True)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    done = subprocess.run(["make", "demo"], cwd=ROOT, check=False)
    wall_s = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"make demo failed (exit {done.returncode}) after {wall_s:.0f} s")
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    student = metrics["student"]
    result = {
        "cpu": cpu,
        "wall_s": round(wall_s, 1),
        "stage_seconds": metrics["stage_seconds"],
        "test_accuracy": student["test_accuracy"],
        "teacher_test_accuracy": student["teacher_test_accuracy"],
        "test_rows": student["test_rows"],
        "within_15_min": wall_s <= 900,
    }
    print(json.dumps(result), flush=True)
    print(table_row(cpu, wall_s, metrics), flush=True)


if __name__ == "__main__":
    main()
