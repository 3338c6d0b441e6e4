"""The teacher's prompt: how many worked examples it holds and the KV block its prefix is cached in.

    .venv/bin/python benchmarks/teacher_prompt.py --rows 128 --avx2
    .venv/bin/python benchmarks/teacher_prompt.py --rows 128 --dtype bfloat16

Each setting `EXEMPLARS:BLOCK` (`teacher.num_exemplars`, `all` for every one; `teacher.block_size`,
0 for vLLM's default, 128 on CPU) runs in its own process as `teacher_cores.py` runs the
demo's teacher: the replica's engine and environment, the demo's chat prompts, 64 requests in
flight. The rows are the demo's own (its `data.source`, which `make demo` writes first), its
training rows only (the demo's hash split): the share the teacher gets right chooses a
setting, so neither validation nor test rows are looked at. Prints output tokens/s,
the share of answers that parse and the share that are right, one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

DEMO_CONFIG = "configs/local-demo.yaml"


def demo_train_rows(rows: int, out: str) -> None:
    """Writes the first `rows` of the demo's own rows that its split trains on."""
    from dsbs.config import load_config
    from dsbs.records import read_records, write_records
    from dsbs.train.examples import split_of

    cfg = load_config(DEMO_CONFIG)
    if not Path(cfg.data.source).exists():
        sys.exit(f"{cfg.data.source} is missing: `make demo` writes it (its first command)")
    train = cfg.train
    records = [
        r
        for r in read_records(cfg.data.source)
        if split_of(r.id, train.valid_fraction, train.test_fraction, 1.0, train.seed) == "train"
    ]
    write_records(out, records[:rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--settings", default="all:0,2:0,2:32,all:32")
    parser.add_argument("--avx2", action="store_true", help="under the AVX2 emulation")
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setting is not None:
        from teacher_cores import probe  # this script's folder is on sys.path

        exemplars, block = args.setting.split(":")
        overrides = [] if exemplars == "all" else [f"teacher.num_exemplars={exemplars}"]
        overrides += [f"teacher.block_size={block}"] if block != "0" else []
        result = probe(args.rows_file, 64, args.dtype, tuple(overrides))
        print(json.dumps(result), flush=True)
        os._exit(0)  # vLLM's background threads would keep the process alive

    from cpu_isa import avx2_env, json_child  # this script's folder is on sys.path

    rows_file = str(Path(tempfile.mkdtemp(prefix="dsbs-prompt-")) / "rows.jsonl")
    demo_train_rows(args.rows, rows_file)
    env = avx2_env() if args.avx2 else dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # what Ray gives an actor of num_cpus 1
    for setting in args.settings.split(","):
        command = [sys.executable, __file__, "--setting", setting, "--rows-file", rows_file]
        command += ["--dtype", args.dtype]
        result = json_child(command, env)
        exemplars, block = setting.split(":")
        cpu = "emulated AVX2" if args.avx2 else "host"
        print(
            json.dumps(
                {
                    "num_exemplars": exemplars,
                    "block_size": int(block) or "default",
                    "dtype": args.dtype,
                    "cpu": cpu,
                    **result,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
