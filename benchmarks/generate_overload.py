"""The generate stage of `make demo` before and after the overload fix, beside raw vLLM.

    git worktree add /tmp/dsbs-before 74ef391    # the last commit before the fix
    .venv/bin/python benchmarks/generate_overload.py --before /tmp/dsbs-before --timeouts 120 8 4
    .venv/bin/python benchmarks/generate_overload.py --before /tmp/dsbs-before \
        --rows 400 --max-in-flight 256 --timeouts 120 12 --cap-s 300

For each `teacher.request_timeout_s` it runs the demo's generate stage (200 synthetic rows,
SmolLM2-135M-Instruct on vLLM's CPU build behind Ray Serve, `generate.max_in_flight=64`)
with the code before the fix (`--before`: a checkout of it, with its own
`configs/local-demo.yaml`) and with this tree, alternating, each in a fresh process and Ray
cluster, and stops a run that passes `--cap-s`. The overload of a slower machine is recreated
by asking more of this one: more requests in flight (`--max-in-flight`) against a shorter
timeout, so that the configured load takes several times the timeout while one request alone
fits in it easily (at 4 s on the fast CPU of BENCHMARKS.md no load fits: a misconfiguration).
The reference is `vllm.LLM.generate` on the same 200 prompts with the same engine arguments,
in float32 and in bfloat16. Prints one JSON line per run, then a table; the CPU is named.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
RUN_STAGE = "import sys; from dsbs.cli import main; sys.exit(main(sys.argv[1:]))"


def cpu_line() -> str:
    """The CPU model and whether it has AVX-512 and native bf16, from lscpu."""
    from dsbs.precision import cpu_flags

    info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if "Model name" in line),
        "unknown",
    )
    flags = cpu_flags()
    avx512 = "AVX-512" if "avx512f" in flags else "no AVX-512"
    bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & flags else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {avx512}, {bf16}"


def _rows_done(out: Path) -> dict[str, int]:
    """Rows written and quarantined (by reason) so far, read from the shards."""
    written = 0
    reasons: dict[str, int] = {}
    for gen in out.glob("generate/*"):
        for shard in gen.glob("data/*.parquet"):
            written += pq.read_metadata(io.BytesIO(shard.read_bytes())).num_rows
        for shard in gen.glob("quarantine/*.jsonl"):
            for line in shard.read_text().splitlines():
                reason = json.loads(line)["reason"]
                reasons[reason] = reasons.get(reason, 0) + 1
    return {"written": written, **reasons}


def run_stage(
    src: Path, config: Path, rows_file: str, out: Path, timeout_s: float, cap_s: float, extra: list
):
    """One generate run in its own process (and local Ray cluster); stopped at `cap_s`."""
    overrides = [
        f"data.source={rows_file}",
        f"pipeline.run_dir={out}",
        f"teacher.request_timeout_s={timeout_s}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_STAGE, "generate", "--config", str(config), *overrides],
        cwd=src,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=cap_s)
        status = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = f"stopped at the {cap_s:.0f} s cap"
    seconds = time.monotonic() - started
    subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
    summary = next((ln for ln in output.splitlines() if " rows in, " in ln), None)
    stats = {}
    for file in out.glob("generate/*/stats.json"):
        stats = json.loads(file.read_text())["this_run"]
    return {
        "status": status,
        "seconds": round(seconds, 1),
        "streaming_s": stats.get("streaming_s"),
        "output_tokens_per_s": stats.get("output_tokens_per_s"),
        "rows": _rows_done(out),
        "retries": stats.get("retries"),
        "timeouts": stats.get("timeouts"),
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout before the fix")
    parser.add_argument("--timeouts", type=float, nargs="+", default=[120.0, 30.0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--cap-s", type=float, default=1200.0)
    parser.add_argument("--max-in-flight", type=int, default=None, help="default: the demo's 64")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from generate_throughput import direct_generate

    from dsbs.data.synth import synth

    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-overload-"))
    rows_file = str(work / "rows.jsonl")
    synth("arithmetic", args.rows, 0, rows_file)  # what `make demo` makes
    print(f"cpu: {cpu_line()}")
    results = []
    demo = "configs/local-demo.yaml"
    for dtype in ("float32", "bfloat16"):
        queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=direct_generate,
            args=(rows_file, str(REPO / demo), [f"teacher.dtype={dtype}"], queue),
        )
        child.start()
        direct = queue.get()
        child.join()
        tps = direct["output_tokens"] / direct["seconds"]
        results.append({"run": f"vllm.LLM.generate {dtype}", "output_tokens_per_s": round(tps, 1)})
        print(json.dumps({**results[-1], **direct}), flush=True)
    for timeout_s in args.timeouts:
        for name, src in (("before", args.before.resolve()), ("after", REPO)):
            out = work / f"{name}-{timeout_s:g}"
            extra = (
                []
                if args.max_in_flight is None
                else [f"generate.max_in_flight={args.max_in_flight}"]
            )
            result = run_stage(src, src / demo, rows_file, out, timeout_s, args.cap_s, extra)
            results.append({"run": f"{name}, request_timeout_s={timeout_s:g}", **result})
            print(json.dumps(results[-1]), flush=True)
    print("\n| run | status | s | rows written | quarantined | output tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        rows = dict(r.get("rows", {}))
        written = rows.pop("written", "")
        quarantined = ", ".join(f"{n} {k}" for k, n in rows.items()) or ""
        tps = r.get("output_tokens_per_s")
        print(
            f"| {r['run']} | {r.get('status', '')} | {r.get('seconds', '')} | {written} | "
            f"{quarantined} | {'' if tps is None else f'{tps:.1f}'} |"
        )


if __name__ == "__main__":
    main()
