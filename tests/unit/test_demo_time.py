"""benchmarks/demo_time.py names the CPU a `make demo` timing came from, as issue 16 asks."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo_time", ROOT / "benchmarks" / "demo_time.py")
assert _spec and _spec.loader
demo_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_time)


def _cpuinfo(name: str, family: int, model: int, flags: str) -> str:
    one = f"processor\t: {{n}}\nmodel name\t: {name}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    return "\n".join(one.format(n=n) + f"flags\t\t: {flags}\n" for n in range(2))


def test_an_avx2_only_cpu_is_named_as_such():
    cpu = demo_time.cpu_facts(_cpuinfo("AMD EPYC 7B12", 23, 49, "fpu sse4_2 avx avx2 fma"))
    assert cpu["grep_c_avx512"] == 0
    assert cpu["avx2"] and not cpu["avx512_bf16"]
    assert "AVX2 only" in demo_time.describe(cpu)
    assert "family 23 model 49" in demo_time.describe(cpu)


def test_an_avx512_cpu_counts_as_grep_does_and_names_its_bf16():
    flags = "avx2 avx512f avx512bw avx512_bf16 amx_bf16"
    cpu = demo_time.cpu_facts(_cpuinfo("Intel(R) Xeon(R) Processor", 6, 207, flags))
    assert cpu["grep_c_avx512"] == 2  # one flags line per processor
    assert demo_time.describe(cpu).endswith("AVX-512 with `avx512_bf16` and `amx_bf16`")


def test_the_row_holds_the_wall_time_stages_and_both_accuracies():
    cpu = demo_time.cpu_facts(_cpuinfo("AMD EPYC", 25, 17, "avx2 avx512f avx512_bf16"))
    metrics = {
        "stage_seconds": {"generate": 145.6, "train": 442.1, "serve": 12.0, "evaluate": 0.0},
        "student": {"test_accuracy": 0.7313, "teacher_test_accuracy": 0.2388, "test_rows": 67},
    }
    row = demo_time.table_row(cpu, 612.4, metrics)
    assert row.count("|") == 7
    assert "**612 s** (10.2 min; 600 s in the pipeline)" in row
    assert "| 145.6 s | 442.1 s | ~12 s |" in row
    assert "73.1% against the teacher's 23.9% on 67 test rows" in row
