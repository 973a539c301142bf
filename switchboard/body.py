"""A request body on its way from a client connection (switchboard.downstream) to a worker
connection: held while no worker is attached yet, written through once one is, with the
client's reading held while too much waits."""

from __future__ import annotations

import asyncio
import collections

from switchboard.flow import BODY_FULL, Endpoint

HIGH_WATER = 256 * 1024  # request body bytes waiting for a worker before the client is paused


class Body:
    """A request body on its way from the client to a worker.

    Until `attach()`, chunks wait here, and the client's reading is held once more than
    HIGH_WATER bytes wait. Attached, each chunk is written to the worker connection as it
    arrives, framed as the client framed it. A body cut short (over max_body_bytes, silent for
    body_timeout_s, broken chunked framing, or its client gone) aborts the attached worker
    connection, so the worker never sees it end; `refused` says the router cut it (and answers
    for it: 413, 408, 400).
    """

    __slots__ = ("_chunked", "_client", "_sink", "_waiter", "aborted", "buffered", "chunks",
                 "complete", "expecting", "malformed", "seen_at", "seen_size", "size",
                 "timed_out", "too_large")

    def __init__(self, client: Endpoint, chunked: bool, *, expecting: bool = False) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.too_large = False
        self.aborted = False  # the client went away before the body ended
        self.timed_out = False  # no byte of it for body_timeout_s
        self.malformed = False  # its chunked framing broke
        # Expect: 100-continue, and no worker attached yet to ask for the body: the client
        # rightly sends nothing, so the body timeout does not run.
        self.expecting = expecting
        # The body timeout's clock, kept by the sweep (ClientConnection.expire), so that a
        # chunk costs no clock read: the size it last saw, and when it saw that size first.
        self.seen_size = -1
        self.seen_at = 0.0
        self.size = 0  # bytes received in all
        self.buffered = 0  # bytes waiting for a worker connection
        self._chunked = chunked
        self._client = client
        self._sink: Endpoint | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def refused(self) -> bool:
        """The router cut the body short (over the limit, stalled, malformed)."""
        return self.too_large or self.timed_out or self.malformed

    @property
    def cut_short(self) -> bool:
        """The body will never arrive whole: the request must not reach the worker complete."""
        return self.aborted or self.refused

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        sink = self._sink
        if sink is not None:
            sink.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            self._client.hold_reading(BODY_FULL)

    def finish(self) -> None:
        self.complete = True
        if self._sink is not None and self._chunked:
            self._sink.write(b"0\r\n\r\n")
        self._wake()

    def refuse(self) -> None:
        """Over max_body_bytes: what waits is never sent, the rest is dropped."""
        self.too_large = True
        self._cut()

    def abort(self) -> None:
        self.aborted = True
        self._cut()

    def reject_framing(self) -> None:
        """Its chunked framing broke: nothing after that can be trusted or sent."""
        self.malformed = True
        self._cut()

    def time_out(self) -> None:
        """No byte for body_timeout_s: the worker never sees this body end."""
        self.timed_out = True
        self._cut()

    def attach(self, sink: Endpoint, out: list[bytes]) -> None:
        """From now on write to `sink`; what waits is appended to `out`, which the caller
        sends (after the request head) before anything else reaches `sink`."""
        if self._chunked:
            out.extend(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in self.chunks)
            if self.complete:
                out.append(b"0\r\n\r\n")
        else:
            out.extend(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        self._sink = sink
        self.expecting = False  # the worker may now send its 100 Continue
        self._client.release_reading(BODY_FULL)

    def detach(self) -> None:
        self._sink = None

    async def wait_complete(self, timeout_s: float) -> None:
        """Until the body is all in, cut short, or `timeout_s` has passed."""
        if self.complete or self.cut_short:
            return
        loop = self._client.loop
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _cut(self) -> None:
        self.chunks.clear()
        self.buffered = 0
        self._client.release_reading(BODY_FULL)
        if self._sink is not None:
            self._sink.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
