"""Seconds per decoded batch for each serving backend and CPU thread count, without Ray.

    .venv/bin/python benchmarks/decode_threads.py --threads 1 2

Why `serve.ctranslate2_threads` defaults to 1: each (backend, threads) pair runs in its own
fresh process (OpenMP runtimes keep their thread pools for the life of a process), decodes the
same batches of 1 and 32 inputs with the same random t5-v1_1-small student as
serve_throughput.py, and reports the mean of `--repeats` calls after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(model: str, backend: str, threads: int, repeats: int) -> dict[str, object]:
    import torch

    from dsbs.config import ServeConfig
    from dsbs.serve.backends import load_backend

    torch.set_num_threads(threads)
    cfg = ServeConfig(backend=backend, ctranslate2_threads=threads, num_cpus=threads)
    decoder = load_backend(cfg, model, cache_dir=str(Path(model).parent / "cache"))
    texts = [f"{decoder.info.label_prefix}What is {i} plus 3?" for i in range(32)]
    decoder.generate(texts[:2], decoder.info.max_target_length)
    result: dict[str, object] = {"backend": backend, "threads": threads}
    for size in (1, 32):
        started = time.perf_counter()
        for _ in range(repeats):
            decoder.generate(texts[:size], decoder.info.max_target_length)
        result[f"batch{size}_s"] = round((time.perf_counter() - started) / repeats, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "BACKEND", "THREADS"))
    args = parser.parse_args()
    if args.child:
        model, backend, threads = args.child
        print(json.dumps(_child(model, backend, int(threads), args.repeats)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_throughput import _make_student

    with tempfile.TemporaryDirectory() as tmp:
        model = _make_student(Path(tmp), "t5-v1_1-small", 16)
        for backend in ("hf", "ctranslate2"):
            for threads in args.threads:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--repeats",
                        str(args.repeats),
                        "--child",
                        str(model),
                        backend,
                        str(threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
