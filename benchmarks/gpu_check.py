"""The GPU check: dsbs's training core on CUDA (NCCL, bf16), then model FLOPs utilisation.

    # here: the wheel folder that travels to the GPU machine (under 64 MiB)
    bash scripts/gpu_wheels.sh
    # on a bare GPU machine with torch and transformers (the device tool; BENCHMARKS.md)
    pip install --no-index --no-deps --no-build-isolation build/gpu-wheels/*
    python benchmarks/gpu_check.py

No Ray and no vLLM: the training core runs under plain torch.distributed, as a world of one
(NCCL). Checks, one JSON line each:
  core_zero2, core_zero3  t5-v1_1-small (from config, bf16) on synthetic distill_step_by_step
                          rows: 6 steps with evaluation at 3 and 6 (collectives under NCCL),
                          checkpoints, a resume to 9 steps, the test evaluation and the export
                          (bf16 safetensors, gathered module by module under ZeRO-3)
  mfu_large_zero2         benchmarks/train_mfu.py, t5-v1_1-large, ZeRO-2
  mfu_xl_zero3            benchmarks/train_mfu.py, t5-v1_1-xl, ZeRO-3, activation checkpointing
A failed check prints its error and the rest still run; the exit status counts failures.
`--cpu` runs the same checks on CPU (fp32, gloo, t5-tiny for the MFU part): a smoke test of
this script for machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _core(zero: int, work: Path, gpu: bool) -> dict:
    """Trains, resumes and exports t5-v1_1-small with the training core on this GPU."""
    from dataclasses import replace

    import torch
    from safetensors import safe_open

    from dsbs.config import StudentConfig, TrainConfig
    from dsbs.data.synth import synth
    from dsbs.rundir import read_json
    from dsbs.student.tokenizer import train_tokenizer
    from dsbs.train.checkpoints import FolderCheckpoints
    from dsbs.train.data import ParquetShards, tokenizer_texts, write_splits
    from dsbs.train.loop import LoopSpec, init_process_group, run_training

    out = work / f"zero{zero}"
    source = work / "synth.jsonl"
    if not source.exists():
        synth("arithmetic", 400, 0, str(source), rationales=True)
    train = TrainConfig(
        use_gpu=gpu,
        precision="bf16" if gpu else "fp32",
        zero_stage=zero,
        num_workers=1,
        micro_batch_size=8,
        max_steps=6,
        eval_every=3,
        checkpoint_every=3,
        eval_max_rows=32,
        test_fraction=0.05,
    )
    manifest = write_splits(train, str(source), str(out / "data"))
    train_tokenizer(tokenizer_texts(manifest, 2000), 1000, out / "tokenizer")
    preset = "t5-v1_1-small" if gpu else "t5-tiny"
    student = StudentConfig(preset=preset, max_input_length=64, max_target_length=48)
    spec = LoopSpec(train, student, "svamp", str(out), str(out / "tokenizer"), "gpu-check")
    init_process_group(use_gpu=gpu)
    started = time.perf_counter()
    for steps in (6, 9):  # the second run resumes from the first one's last checkpoint
        spec = replace(spec, train=train.model_copy(update={"max_steps": steps}))
        data = ParquetShards(manifest, spec.train, 0, 1)
        run_training(spec, data, FolderCheckpoints(str(out / "checkpoints"), 0))
        if steps == 6:
            (out / "metrics.json").unlink()
    metrics = read_json(str(out / "metrics.json")) or {}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in history if r["split"] == "resume"]
    shards = sorted((out / "student").glob("*.safetensors"))
    with safe_open(str(shards[0]), "pt") as f:
        dtype = str(f.get_tensor(next(iter(f.keys()))).dtype)
    ok = (
        metrics.get("steps") == 9
        and bool(resumed)
        and resumed[0]["step"] == 6
        and dtype == str(torch.bfloat16 if gpu else torch.float32)
        and "label_accuracy" in metrics.get("test", {})
    )
    return {
        "ok": ok,
        "seconds": time.perf_counter() - started,
        "steps": metrics.get("steps"),
        "resumed_at": resumed[0]["step"] if resumed else None,
        "final_train": {
            k: v for k, v in metrics.get("final_train", {}).items() if isinstance(v, float)
        },
        "test": metrics.get("test"),
        "export_dtype": dtype,
        "export_files": [p.name for p in shards],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
    }


def _mfu(preset: str, zero: int, micro_batch: int, extra: list[str]) -> dict:
    """benchmarks/train_mfu.py in its own process (a fresh CUDA context and memory peak)."""
    command = [
        sys.executable,
        str(HERE / "train_mfu.py"),
        "--preset",
        preset,
        "--zero",
        str(zero),
        "--micro-batch",
        str(micro_batch),
        "--steps",
        "20",
        "--warmup",
        "5",
        *extra,
    ]
    env = {**os.environ, "MASTER_PORT": "29544"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"ok": True, **result}


def main() -> int:
    from dsbs.train.loop import leave_process_group

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mfu", action="store_true", help="only the core checks")
    parser.add_argument("--cpu", action="store_true", help="a smoke test of this script")
    args = parser.parse_args()
    gpu = not args.cpu
    checks = {
        "core_zero2": lambda work: _core(2, work, gpu),
        "core_zero3": lambda work: _core(3, work, gpu),
    }
    if not args.skip_mfu and gpu:
        checks["mfu_large_zero2"] = lambda work: _mfu("t5-v1_1-large", 2, 32, [])
        checks["mfu_xl_zero3"] = lambda work: _mfu(
            "t5-v1_1-xl", 3, 16, ["--activation-checkpointing"]
        )
    elif not args.skip_mfu:
        checks["mfu_tiny_cpu"] = lambda work: _mfu("t5-tiny", 2, 8, ["--device", "cpu"])
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in checks.items():
            started = time.perf_counter()
            try:
                result = check(Path(tmp))
            except Exception as err:  # one failed check must not hide the others
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                traceback.print_exc()
            result["wall_s"] = round(time.perf_counter() - started, 1)
            failures += not result["ok"]
            print(json.dumps({"check": name, **result}), flush=True)
    leave_process_group()  # the core checks share one process group (DeepSpeed keeps it)
    return failures


if __name__ == "__main__":
    sys.exit(main())
