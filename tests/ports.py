"""Free TCP ports for the test servers and Ray nodes (tests/ is on sys.path via its conftest).

The ports lie between Ray's default worker ports (10002-19999: a `ray start` without a range
of its own reserves them and its workers bind them) and the kernel's ephemeral range, and are
handed out in turn, never twice in one process. A port the kernel picks for `bind(0)` is free
only at that moment: the kernel hands out the same range for every outbound connection and
every other `bind(0)`, and may return it to the next call. CI lost a containerized Ray head
that way: `ray start` refuses a port that another of its components or its worker range holds.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

_LOWEST = 20000
"""Above the worker ports of a Ray node started with its defaults."""
_taken: set[int] = set()
_next: int | None = None
"""Where the next search starts: ports are handed out in turn, wrapping around."""


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


def _span() -> range:
    ephemeral = ephemeral_range()
    if ephemeral.start - _LOWEST > 1000:
        return range(_LOWEST, ephemeral.start)
    return range(ephemeral.stop, 65536)  # a kernel that hands out nearly every port


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports that nothing listens on and no earlier call handed out."""
    global _next
    span = _span()
    if _next is None:  # a random start: two test processes on one host rarely meet
        _next = span.start + secrets.randbelow(len(span))
    for _ in range(len(span)):
        if _next + count > span.stop:
            _next = span.start
        block = range(_next, _next + count)
        _next += 1
        if not _taken.intersection(block) and all(_bindable(port) for port in block):
            _taken.update(block)
            _next = block.stop
            return list(block)
    raise RuntimeError(f"no {count} free consecutive ports in {span}")


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
