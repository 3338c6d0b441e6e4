"""Streaming check: the generate driver's peak memory for 2,000 rows against 200 rows.

    .venv/bin/python benchmarks/generate_memory.py --small 200 --large 2000

One Ray head (started here with `ray start`) and one teacher replica serve both runs
(`teacher.keep_running`), so the model loads once. Each run's driver is its own process
(`dsbs generate`), which reports its peak resident memory (ru_maxrss) when it ends; the
teacher writes 8 tokens per row, since only the driver's memory is measured here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = """
import resource, sys
from dsbs.cli import main
code = main(["generate", *sys.argv[1:]])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def _run(rows: int, work: Path, address: str) -> tuple[int, str]:
    source = work / f"rows-{rows}.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dsbs.cli",
            "data",
            "synth",
            "--task",
            "arithmetic",
            "--n",
            str(rows),
            "--seed",
            "0",
            "--out",
            str(source),
        ],
        check=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            f"data.source={source}",
            f"pipeline.run_dir={work / f'run-{rows}'}",
            f"pipeline.ray_address={address}",
            "teacher.max_tokens=8",
            "teacher.keep_running=true",
            "generate.max_in_flight=64",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    peak = next(
        int(line.split()[1])
        for line in result.stdout.splitlines()
        if line.startswith("PEAK_RSS_KB")
    )
    summary = next(line for line in result.stdout.splitlines() if line.startswith("generate:"))
    return peak, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    args = parser.parse_args()
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            "--port=6391",
            "--num-cpus=2",
            "--disable-usage-stats",
            "--include-dashboard=false",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-mem-"))
    try:
        # A warm-up run loads the teacher, so neither measured run pays for it.
        _run(20, work, "127.0.0.1:6391")
        small, small_line = _run(args.small, work, "127.0.0.1:6391")
        large, large_line = _run(args.large, work, "127.0.0.1:6391")
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)
    print(small_line)
    print(large_line)
    print(
        f"driver peak RSS: {args.small} rows {small / 1024:.0f} MiB, "
        f"{args.large} rows {large / 1024:.0f} MiB"
    )
    print(f"ratio large/small: {large / small:.3f}")


if __name__ == "__main__":
    main()
