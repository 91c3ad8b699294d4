"""Free loopback ports for the servers the project starts on one machine (a local S3 server, a
second Ray cluster, Serve's HTTP proxy in tests)."""
from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free right now on 127.0.0.1 (all held open together, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port free right now on 127.0.0.1."""
    return free_ports(1)[0]
