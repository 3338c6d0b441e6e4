"""`dtype: auto`: bfloat16 only where the CPU computes it natively (issue: 4x slower on AVX2)."""

import logging

from dsbs.precision import cpu_flags, native_bf16, resolve_dtype

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_flags(AVX2_ONLY) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags("no flags line") == frozenset()


def test_auto_is_float32_on_a_cpu_without_native_bf16_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="dsbs.precision"):
        assert resolve_dtype("auto", use_gpu=False, flags=cpu_flags(AVX2_ONLY)) == "float32"
    assert "dtype float32 (auto: the CPU has none of" in caplog.text and "emulated" in caplog.text


def test_auto_is_bfloat16_where_the_cpu_has_it():
    assert resolve_dtype("auto", use_gpu=False, flags=cpu_flags(SAPPHIRE_RAPIDS)) == "bfloat16"
    native, reason = native_bf16(False, cpu_flags(SAPPHIRE_RAPIDS))
    assert native and "amx_bf16" in reason and "avx512_bf16" in reason


def test_an_explicit_dtype_is_kept():
    assert resolve_dtype("bfloat16", use_gpu=False, flags=cpu_flags(AVX2_ONLY)) == "bfloat16"
    assert resolve_dtype("float16", use_gpu=True) == "float16"  # no GPU is asked
