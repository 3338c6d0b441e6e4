"""An AVX2-only CPU emulated on an AVX-512 one: how much slower the demo's teacher and student get.

    .venv/bin/python benchmarks/cpu_isa.py calibrate
    .venv/bin/python benchmarks/cpu_isa.py exec -- \
        .venv/bin/dsbs run --config configs/local-demo.yaml teacher.dtype=float32

These machines come with two kinds of CPU, and `make demo` has to fit 15 minutes on both. When
only the AVX-512 kind is at hand, `exec` runs a command with every process held to AVX2:
`ATEN_CPU_CAPABILITY` (torch's kernels), `MKL_ENABLE_INSTRUCTIONS` (MKL's GEMMs),
`ONEDNN_MAX_CPU_ISA` (oneDNN, in torch and in vLLM's CPU kernels) and a `sitecustomize` that
makes `torch.cpu._is_avx512_supported()` and its AMX/VNNI/bf16 siblings answer False, which is
where vLLM picks its `_C_AVX2` kernel library and its attention kernel. Ray workers and vLLM's
engine process inherit all of it. What it cannot change: the clock, caches and memory of the
real AVX2 machine, and DeepSpeed's JIT-built ops (compiled for the host's `-march`).

`calibrate` measures, side by side in one run, the host as it is and emulated AVX2, on
(a) the figure recorded on the real AVX2-only CPU in ENVIRONMENT.md: `vllm.LLM.generate`
with vLLM's defaults, SmolLM2-135M, 16 short prompts (453 tokens) x 32 output tokens, float32
and bfloat16 (there: 26.4 and 6.6 tokens/s), and (b) the demo student's training step
(t5-mini, micro-batch 8, one thread, as each of the demo's 2 Ray Train workers runs it).
Each probe runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}

REAL_AVX2_TOKENS_PER_S = {"float32": 26.4, "bfloat16": 6.6}
"""ENVIRONMENT.md: the same generate probe on the real AVX2-only AMD EPYC (2026-12-04)."""


def avx2_env() -> dict[str, str]:
    """This process's environment with every child held to AVX2 (see the module docstring)."""
    env = dict(os.environ, **AVX2_ENV)
    paths = [str(HERE / "avx2_emulation"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _kernels_loaded() -> str:
    """Which of vLLM's x86 kernel libraries this process's children (the engine) mapped."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        maps = Path(f"/proc/{child.pid}/maps").read_text()
        for lib in ("_C_AVX2", "_C_AVX512", "_C.abi3"):
            if f"vllm/{lib}" in maps:
                return lib
    return "?"


def probe_generate(dtype: str, rows: int, max_tokens: int) -> dict[str, object]:
    """ENVIRONMENT.md's probe: `vllm.LLM` with its defaults, `rows` short questions, greedy.

    As it was run on the AVX2-only CPU: no chat template, `max_tokens` forced (ignore_eos),
    prefix caching, eager, vLLM's own core reservation. The first call is timed ("cold") and
    a second one ("warm").
    """
    from vllm import LLM, SamplingParams

    from dsbs.data.synth import synth_arithmetic
    from dsbs.teachers.models import resolve_model
    from dsbs.teachers.vllm import CPU_KV_CACHE_GIB

    # The replica's KV cache size, but not its core sharing: the probe is vLLM's defaults.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    prompts = [record.input for record in synth_arithmetic(rows, 0, max_ops=1)]
    llm = LLM(
        model=resolve_model("embedded:smollm2-135m-instruct"),
        dtype=dtype,
        max_model_len=2048,
        enforce_eager=True,
        enable_prefix_caching=True,
        gpu_memory_utilization=0.5,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    result: dict[str, object] = {"probe": f"generate_{dtype}", "vllm_kernels": _kernels_loaded()}
    for call in ("cold", "warm"):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        result[f"{call}_tokens_per_s"] = round(tokens / seconds, 1)
    result["prompt_tokens"] = sum(len(o.prompt_token_ids or ()) for o in outputs)
    # The engine's processes hold this one's stdout: without a shutdown they outlive it and
    # the parent's read of the pipe never ends.
    llm.llm_engine.engine_core.shutdown()
    return result


def probe_train(steps: int) -> dict[str, object]:
    """Seconds per training step of the demo's student on one thread (forward, backward, AdamW)."""
    import torch
    from transformers import T5ForConditionalGeneration

    from dsbs.student.presets import build_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(build_config("t5-mini", vocab_size=1000))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # The demo's shapes: a one-step problem (~40 tokens), its rationale (~40), its label (~6).
    inputs = torch.randint(2, 1000, (8, 40))
    rationale = torch.randint(2, 1000, (8, 40))
    label = torch.randint(2, 1000, (8, 6))

    def step() -> None:
        loss = (
            model(input_ids=inputs, labels=label).loss
            + model(input_ids=inputs, labels=rationale).loss
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return {
        "probe": "train_step",
        "steps": steps,
        "seconds_per_step": round(seconds / steps, 4),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }


def json_child(command: list[str], env: dict[str, str]) -> dict[str, object]:
    """Runs a probe process and returns the JSON object its last line prints.

    One process per probe: an engine's memory, threads and ISA settings end with it.
    """
    out = subprocess.run(
        command, env=env, check=True, capture_output=True, text=True, timeout=900
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _run_probe(args: list[str], env: dict[str, str]) -> dict[str, object]:
    return json_child([sys.executable, __file__, "_probe", *args], env)


def calibrate(rows: int, max_tokens: int, steps: int) -> None:
    """Each probe on the host as it is and emulated AVX2, alternating; prints a JSON table."""
    results = []
    for probe in (
        ["generate", "float32"],
        ["generate", "bfloat16"],
        ["train"],
    ):
        for name, env in (("host", dict(os.environ)), ("avx2_emulated", avx2_env())):
            extra = [str(rows), str(max_tokens)] if probe[0] == "generate" else [str(steps)]
            result = _run_probe([*probe, *extra], env)
            result["cpu"] = name
            print(json.dumps(result), flush=True)
            results.append(result)
    real = {f"generate_{d}": v for d, v in REAL_AVX2_TOKENS_PER_S.items()}
    for result in results:
        if result["cpu"] == "avx2_emulated" and result["probe"] in real:
            cold = result["cold_tokens_per_s"]
            ratio = cold / real[result["probe"]]  # type: ignore[operator]
            print(
                f"{result['probe']}: emulated {cold} tokens/s here (first call), "
                f"{real[result['probe']]} on the real AVX2-only CPU: {ratio:.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="the probes on the host and emulated AVX2")
    cal.add_argument("--rows", type=int, default=16)
    cal.add_argument("--max-tokens", type=int, default=32)
    cal.add_argument("--steps", type=int, default=30)
    run = sub.add_parser("exec", help="run a command with every process held to AVX2")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    probe = sub.add_parser("_probe")
    probe.add_argument("what", nargs="+")
    args = parser.parse_args()

    if args.command == "calibrate":
        calibrate(args.rows, args.max_tokens, args.steps)
    elif args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        started = time.perf_counter()
        code = subprocess.run(cmd, env=avx2_env(), check=False).returncode
        seconds = time.perf_counter() - started
        print(f"emulated AVX2: {' '.join(cmd)} exited {code} after {seconds:.1f} s")
        sys.exit(code)
    elif args.what[0] == "generate":
        result = probe_generate(args.what[1], int(args.what[2]), int(args.what[3]))
        print(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # vLLM's background threads would keep the process alive
    else:
        print(json.dumps(probe_train(int(args.what[1]))))


if __name__ == "__main__":
    main()
