"""Loopback addresses for things that are not a router.

A router is started on port 0 and tells its ports in `router.json` (see harness.router), so
it never needs these. `free_port()` has a window: the port is free when it returns, and some
other process may take it before the caller binds it. Use it only where the port must be
chosen before the process starts and that process cannot report its own port (nginx, a bare
uvicorn baseline, a worker port range handed to the router), and check readiness against that
process, not with `connectable()` alone, where it matters.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see the module docstring)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def connectable(port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port` (not necessarily
    the process the caller started)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s):
            return True
    except OSError:
        return False
