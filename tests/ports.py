"""A free TCP port on 127.0.0.1, for the test servers (tests/ is on sys.path via its conftest)."""

import socket


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
