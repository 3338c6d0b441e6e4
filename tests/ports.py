"""A free TCP port on 127.0.0.1, for the test servers (tests/ is on sys.path via its conftest)."""

import socket


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    low = free_port()
    return [*args, f"--min-worker-port={low}", f"--max-worker-port={low + 40}"]
