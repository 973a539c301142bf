"""The router's side of its client connections (nginx, a browser, a script).

`ClientConnection` parses requests with httptools and hands each one, in order (pipelined
requests wait in a queue), to the proxy's `serve` coroutine, one handler task at a time. A
request body waits in its `Body` until the proxy attaches a worker connection; from then on it
is written through as it arrives. Answers are written as the worker connection produces them;
flow control between the two sockets is `flow.Endpoint`'s.

Closing: `close_after_write()` closes once the answer is sent. When the answer came before the
request body was all in (404, 413, 503), the connection is half-closed instead, so the client
reads the answer rather than a reset, and whatever it still sends is read and dropped for
`LINGER_S` (never parsed: its bytes are not a request). After a worker's 101, `splice()` turns
the connection into a byte pipe to the worker connection.
"""

from __future__ import annotations

import asyncio
import collections
import html
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import httptools

from switchboard.flow import ALL_HOLDS, BODY_FULL, Endpoint

log = logging.getLogger("switchboard.proxy")

HIGH_WATER = 256 * 1024  # request body bytes waiting for a worker before the client is paused
LINGER_S = 5.0  # how long an early answer waits for the client to stop sending its body


def reason_phrase(status: int) -> str:
    if status == 413:  # RFC 9110's name; HTTPStatus says "Request Entity Too Large" before 3.13
        return "Content Too Large"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def simple_response(status: int, text: str, *, close: bool,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A short HTML answer from the router itself."""
    title = f"{status} {reason_phrase(status)}"
    body = (f"<!doctype html><title>{title}</title><h1>{title}</h1>"
            f"<p>{html.escape(text)}</p>\n").encode()
    head = [f"HTTP/1.1 {title}".encode(), b"content-type: text/html; charset=utf-8",
            b"content-length: %d" % len(body)]
    head += [name + b": " + value for name, value in extra]
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Body:
    """A request body on its way from the client to a worker.

    Until `attach()`, chunks wait here, and the client's reading is held once more than
    HIGH_WATER bytes wait. Attached, each chunk is written to the worker connection as it
    arrives, framed as the client framed it. A body cut short (over max_body_bytes, or its
    client gone) aborts the attached worker connection, so the worker never sees it end.
    """

    __slots__ = ("_chunked", "_client", "_sink", "_waiter", "aborted", "buffered", "chunks",
                 "complete", "size", "too_large")

    def __init__(self, client: Endpoint, chunked: bool) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.too_large = False
        self.aborted = False  # the client went away before the body ended
        self.size = 0  # bytes received in all
        self.buffered = 0  # bytes waiting for a worker connection
        self._chunked = chunked
        self._client = client
        self._sink: Endpoint | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def cut_short(self) -> bool:
        """The body will never arrive whole: the request must not reach the worker complete."""
        return self.too_large or self.aborted

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
        self._client.release_reading(BODY_FULL)

    def detach(self) -> None:
        self._sink = None

    async def wait_complete(self, timeout_s: float) -> None:
        """Until the body is all in, cut short, or `timeout_s` has passed."""
        if self.complete or self.cut_short:
            return
        loop = asyncio.get_running_loop()
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


class Request:
    __slots__ = ("body", "bytes_out", "chunked", "content_length", "headers", "keep_alive",
                 "method", "tunnel_bytes_in", "upgrade", "url", "version")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b"GET"
        self.keep_alive = True
        self.version = "1.1"
        self.body: Body | None = None
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.bytes_out = 0  # response body (or tunnel) bytes relayed to the client
        self.tunnel_bytes_in = 0  # bytes from the client after a 101

    @property
    def bytes_in(self) -> int:
        return (self.body.size if self.body is not None else 0) + self.tunnel_bytes_in


Serve = Callable[["ClientConnection", Request], Awaitable[bool]]


class ClientConnection(Endpoint):
    """One connection from a client. `serve(client, request)` answers one request and returns
    False when the connection must close afterwards."""

    def __init__(self, serve: Serve, max_body_bytes: int,
                 connections: set[ClientConnection]) -> None:
        super().__init__()
        self.address = b"127.0.0.1"  # the client's IP address, for X-Forwarded-For
        self.writes = 0  # write calls so far: did a failed request get any answer?
        self.spliced_bytes = 0
        self._serve = serve
        self._max_body_bytes = max_body_bytes
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Request] = collections.deque()
        self._parsing: Request | None = None
        self._handler: asyncio.Task[None] | None = None
        self._raw = False  # bytes are no longer parsed: upgrading, spliced, or answered early
        self._spliced = False
        self._pending = b""  # bytes sent after an upgrade request, before the worker's 101
        self._linger: asyncio.TimerHandle | None = None

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        address = transport.get_extra_info("peername")
        if address:
            self.address = str(address[0]).encode()
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # tells a linked worker connection
        self._connections.discard(self)
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.abort()
        if self._linger is not None:
            self._linger.cancel()

    def data_received(self, data: bytes) -> None:
        if self._raw:
            self._raw_received(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._raw = True
            self._pending = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self.fail(400, f"malformed request: {exc}")

    def _raw_received(self, data: bytes) -> None:
        if self.closed:
            return  # the rest of a body we answered early
        if self._spliced:
            self.spliced_bytes += len(data)
            if self.peer is not None:
                self.peer.write(data)
            return
        self._pending += data  # the client spoke before the 101 came back
        if len(self._pending) > HIGH_WATER:
            self.hold_reading(BODY_FULL)

    def peer_lost(self) -> None:
        if self._spliced:
            self.close_after_write()  # the worker's end of the tunnel closed

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._parsing = Request()

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._parsing is not None
        self._parsing.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        parser = self._parser
        req.method = parser.get_method()
        req.keep_alive = parser.should_keep_alive()
        req.version = parser.get_http_version()
        req.upgrade = parser.should_upgrade()
        for name, value in req.headers:
            if name == b"content-length":
                req.content_length = int(value) if value.strip().isdigit() else None
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                req.chunked = True
        if req.content_length or req.chunked:
            req.body = Body(self, req.chunked)
        self._queue.append(req)
        if self._handler is None or self._handler.done():
            self._handler = asyncio.get_running_loop().create_task(self._handle_queue())

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        assert req is not None and req.body is not None
        body = req.body
        if body.too_large:
            return  # already refused; the rest is read and dropped
        if body.size + len(data) > self._max_body_bytes:
            body.refuse()
            return
        body.feed(data)

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None and req.body is not None:
            req.body.finish()
        self._parsing = None

    # ---- answering ----

    async def _handle_queue(self) -> None:
        while self._queue and not self.closed:
            req = self._queue[0]
            writes = self.writes
            try:
                keep_going = await self._serve(self, req)
            except Exception:  # a bug must cost one request, never a silent, hanging connection
                log.exception("request %r failed in the router", req.url[:200])
                if self.writes == writes:
                    self.fail(502, "the router failed to handle this request (see its log)")
                else:
                    self.abort()
                return
            self._queue.popleft()
            if not keep_going or not req.keep_alive:
                self.close_after_write()
                return
            self.release_reading(BODY_FULL)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.writes += 1
            self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        if not self.closed and self.transport is not None:
            self.writes += 1
            super().writelines(chunks)

    def fail(self, status: int, text: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Answer with the router's own short page and close."""
        self.write(simple_response(status, text, close=True, extra=extra))
        self.close_after_write()

    def close_after_write(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        body = self._parsing.body if self._parsing is not None else None
        if body is None or body.complete:
            self.close()
            return
        # Answered before the body was all in: half-close so the client reads the answer
        # instead of a reset; read and drop what it still sends; close after a grace period.
        self._raw = True
        self.release_reading(ALL_HOLDS)
        self.closed = True
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def splice(self) -> None:
        """After the worker's 101: from now on the client's bytes go to the linked worker
        connection unparsed (and the worker's come back the same way)."""
        self._spliced = True
        pending, self._pending = self._pending, b""
        self.release_reading(BODY_FULL)
        if pending and self.peer is not None:
            self.spliced_bytes += len(pending)
            self.peer.write(pending)
