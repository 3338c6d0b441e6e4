"""A TCP proxy in front of a real server that can be taken down for a while.

While down it refuses new connections (its listening socket is closed) and resets the open
ones: to the clients this is the server restarting. The server behind keeps its state, as an
S3 server does across a restart with its disks (the test S3 server keeps it in memory, so the
outage is made in front of it rather than by restarting it).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from ports import free_port


class TcpOutage:
    """Forwards 127.0.0.1:`port` to `upstream` (host, port) until `down()` is called."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.outages: list[tuple[float, float]] = []
        """(started, ended) of each outage, in time.monotonic()."""
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = threading.Event()
        self._closed = False
        self._listener: socket.socket | None = None
        self._up.set()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._wait_listening()

    @property
    def endpoint(self) -> str:
        """The proxy's URL, for AWS_ENDPOINT_URL."""
        return f"http://127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the proxy did not start listening")

    def _serve(self) -> None:
        while not self._closed:
            self._up.wait()
            listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            listener.settimeout(0.1)
            self._listener = listener
            while self._up.is_set() and not self._closed:
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()
            listener.close()

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        with self._lock:
            self._open.update((client, server))
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _reset(sock)
                with self._lock:
                    self._open.discard(sock)

    def down(self, seconds: float) -> None:
        """Refuses and resets every connection for `seconds`, then serves again (blocks)."""
        started = time.monotonic()
        self._up.clear()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()
        time.sleep(seconds)
        self._up.set()
        self._wait_listening()
        self.outages.append((started, time.monotonic()))

    def close(self) -> None:
        """Stops forwarding for good."""
        self._closed = True
        self._up.set()
        self._thread.join(timeout=5)


def _reset(sock: socket.socket) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a server process that dies does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
