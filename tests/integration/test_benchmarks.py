"""The benchmarks' own code paths, run small on CPU so that a GPU session finds them working."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_mfu_benchmark_runs_on_cpu_and_reports_its_figures():
    """The GPU benchmark's own code path, on CPU with t5-tiny (real DeepSpeed, no GPU)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = ["--preset", "t5-tiny", "--device", "cpu", "--steps", "3", "--warmup", "1"]
    args += ["--micro-batch", "2", "--input-len", "16", "--rationale-len", "12"]
    args += ["--zero", "3", "--activation-checkpointing"]  # the loop's helper, under ZeRO-3
    out = subprocess.run(
        [sys.executable, "benchmarks/train_mfu.py", *args, "--peak-tflops", "1.0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["model_tflops_per_s"] > 0
    assert result["mfu"] == pytest.approx(result["model_tflops_per_s"])
    assert result["examples_per_s"] > 0


def test_the_avx2_emulation_holds_a_command_to_avx2():
    """`benchmarks/cpu_isa.py exec` (how BENCHMARKS.md times the demo as on an AVX2-only CPU):
    torch's kernels and vLLM's kernel choice see no AVX-512 in the command's processes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    probe = (
        "import torch; print(torch.backends.cpu.get_cpu_capability(),"
        " torch.cpu._is_avx512_supported(), torch.cpu._is_amx_tile_supported())"
    )
    out = subprocess.run(
        [sys.executable, "benchmarks/cpu_isa.py", "exec", "--", sys.executable, "-c", probe],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.splitlines()[0] == "AVX2 False False"
    assert "emulated AVX2" in out.stdout and "exited 0" in out.stdout
