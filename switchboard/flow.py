"""Flow control between the relay's sockets: the one place pause/resume state lives.

Every socket of the proxy is an `Endpoint`: a client connection (switchboard.downstream) and a
connection to a worker (switchboard.upstream). While bytes flow between two endpoints they are
linked: a client and the worker connection answering its request, or both ends of a spliced
WebSocket. Backpressure is then the same in both directions: when an endpoint's write buffer
passes its transport's high-water mark, asyncio calls `pause_writing`, and the endpoint holds
its peer's reading, so the sender's kernel buffer fills and TCP slows the far side down;
`resume_writing` lets the peer read again. Linking while a write buffer is already full holds
the new peer at once; unlinking lets both read again.

Reading can be held for several reasons at once (`PEER_BLOCKED`: the peer cannot write what we
would read; `BODY_FULL`: the request body waiting for a worker is at its limit) and resumes only
when none is left. An endpoint whose peer's connection ends hears of it through `peer_lost`.
"""

from __future__ import annotations

import asyncio
from typing import cast

PEER_BLOCKED = 1
BODY_FULL = 2
ALL_HOLDS = PEER_BLOCKED | BODY_FULL


class Endpoint(asyncio.Protocol):
    """One socket of the relay and its flow control (subclasses add the HTTP side)."""

    def __init__(self) -> None:
        # The loop, asked once per connection: asyncio.get_running_loop() is a getpid()
        # system call on Python 3.11, which per request was a tenth of the router's CPU.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the connection is closing or gone: nothing more is written
        self.peer: Endpoint | None = None
        self._write_blocked = False
        self._holds = 0  # why reading is paused (PEER_BLOCKED | BODY_FULL); 0: reading
        self._closed_waiter: asyncio.Future[None] | None = None

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None:
            self.unlink()
            peer.peer_lost()
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_blocked = True
        if self.peer is not None:
            self.peer.hold_reading(PEER_BLOCKED)

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.peer is not None:
            self.peer.release_reading(PEER_BLOCKED)

    # ---- pairing ----

    def link(self, peer: Endpoint) -> None:
        """Relay between this endpoint and `peer` from now on (each throttles the other)."""
        self.unlink()
        peer.unlink()
        self.peer, peer.peer = peer, self
        if self._write_blocked:
            peer.hold_reading(PEER_BLOCKED)
        if peer._write_blocked:
            self.hold_reading(PEER_BLOCKED)

    def unlink(self) -> None:
        peer = self.peer
        if peer is None:
            return
        self.peer = peer.peer = None
        peer.release_reading(PEER_BLOCKED)
        self.release_reading(PEER_BLOCKED)

    def peer_lost(self) -> None:
        """The linked endpoint's connection ended (it is already unlinked)."""

    # ---- reading ----

    def hold_reading(self, reason: int) -> None:
        if not self._holds and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._holds |= reason

    def release_reading(self, reason: int) -> None:
        if self._holds & reason:
            self._holds &= ~reason
            if not self._holds and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # ---- writing and closing ----

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        """Several writes in one call: one writev instead of a send each."""
        if not self.closed and self.transport is not None:
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)

    def close(self) -> None:
        """Close after what is buffered is sent."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is buffered (the peer sees a reset)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Until the connection has ended (or was closed here)."""
        if self.closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
        await self._closed_waiter
