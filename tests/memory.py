"""Peak resident memory of this process's own address space."""

from __future__ import annotations


def peak_rss_kib() -> int:
    """VmHWM: the high-water mark of this process's resident memory, in KiB.

    Not getrusage's ru_maxrss: Linux carries that across fork and exec, so a process spawned
    by a large one (pytest after a few hundred tests) reports its parent's peak instead of its own.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line")
