"""Which floating-point format a device computes natively, and the dtype `auto` resolves to.

bfloat16 halves memory and doubles speed only where the hardware multiplies in it: GPUs from
Ampere on (compute capability 8.0), and CPUs with AVX-512 BF16 or AMX. Elsewhere it is
emulated: on an AVX2-only CPU vLLM generated 4x slower in bfloat16 than in float32
(ENVIRONMENT.md). So `auto` means bfloat16 where it is native and float32 otherwise.

Resolved where the work runs (a teacher replica, a serving replica), not on the driver: a
KubeRay cluster mixes CPU and GPU nodes, and CPU generations.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""`/proc/cpuinfo` flags that mean the CPU multiplies bfloat16 in hardware."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of this machine (Linux `/proc/cpuinfo`; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(use_gpu: bool, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether this machine's GPU (or CPU) computes bfloat16 natively, and why.

    Args:
        use_gpu: ask about CUDA device 0 instead of the CPU.
        flags: CPU flags to judge (this machine's when None).

    Returns:
        (native, reason), the reason naming the device and the evidence.
    """
    if use_gpu:
        import torch

        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        native = major >= 8
        return native, f"GPU {name} has compute capability {major}.{minor} (bf16 native from 8.0)"
    present = sorted(CPU_BF16_FLAGS & (cpu_flags() if flags is None else flags))
    if present:
        return True, f"the CPU has {' and '.join(present)}"
    return False, f"the CPU has none of {', '.join(sorted(CPU_BF16_FLAGS))} (bf16 is emulated)"


def dtype_choice(
    requested: str, use_gpu: bool, flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """(dtype, why): `requested`, or for `auto` bfloat16 where native, else float32."""
    if requested != "auto":
        return requested, "as configured"
    native, reason = native_bf16(use_gpu, flags)
    return ("bfloat16" if native else "float32"), f"auto: {reason}"


def resolve_dtype(requested: str, use_gpu: bool, flags: frozenset[str] | None = None) -> str:
    """The dtype to run in (see `dtype_choice`); the choice and its reason are logged."""
    dtype, why = dtype_choice(requested, use_gpu, flags)
    log.info("dtype %s (%s)", dtype, why)
    return dtype
