"""Stable loopback ports for tenants: each tenant keeps the port it was given, so a front
server can be pointed at it and a restarted router finds its tenants where they were."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from switchboard.errors import SwitchboardError


class PortPool:
    def __init__(self, port_range: tuple[int, int], used: Iterable[int] = ()) -> None:
        self.low, self.high = port_range
        self._used = set(used)  # kept, so allocating stays O(1) with thousands of tenants
        self._next = self.low

    def allocate(self, *, avoid: int | None = None) -> int:
        """The next port in range that no tenant holds and that can be bound right now."""
        span = self.high - self.low + 1
        for step in range(span):
            port = self.low + (self._next - self.low + step) % span
            if port in self._used or port == avoid or not _port_free(port):
                continue
            self._next = port + 1
            self._used.add(port)
            return port
        raise SwitchboardError(f"no free port left in {self.low}-{self.high} for a new tenant")

    def release(self, port: int) -> None:
        self._used.discard(port)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
