"""Free TCP ports for the test servers and Ray nodes (tests/ is on sys.path via its conftest).

Ports come from below the kernel's ephemeral range, and none is handed out twice in one
process. A port the kernel picked for `bind(0)` was free only at that moment: it lies where the
kernel hands out ports for every outbound connection and every other `bind(0)`, and a second
call may return it again. CI lost a containerized Ray head that way: `ray start` refuses a
port that another of its own components, or its worker port range, already holds.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

_LOWEST = 10000
_taken: set[int] = set()


def ephemeral_range() -> range:
    """The ports the kernel picks from for outbound connections and `bind(0)`."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default; other systems pick near it.


def _bindable(port: int) -> bool:
    # The wildcard address: a port some process holds on any one address fails here too.
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports that nothing listens on and no earlier call handed out."""
    ephemeral = ephemeral_range()
    if ephemeral.start - _LOWEST > 1000:
        low, high = _LOWEST, ephemeral.start
    else:  # a kernel that hands out nearly every port: take those above its range
        low, high = ephemeral.stop, 65536
    for _ in range(1000):
        start = low + secrets.randbelow(high - count - low)
        block = range(start, start + count)
        if not _taken.intersection(block) and all(_bindable(port) for port in block):
            _taken.update(block)
            return list(block)
    raise RuntimeError(f"no {count} free consecutive ports in {low}-{high}")


def free_port() -> int:
    """A port nothing listens on right now and no earlier call handed out."""
    return free_ports(1)[0]


def ray_node_ports() -> list[str]:
    """`ray start` arguments giving a node its own ports, so that two nodes share one host."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
        "runtime-env-agent-port",
    )
    args = [f"--{name}={free_port()}" for name in names]
    workers = free_ports(41)
    return [*args, f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]
