"""The router's side of its client connections (nginx, a browser, a script).

`ClientConnection` parses requests with httptools and hands each one, in order (pipelined
requests wait in a queue), to the proxy's `serve` coroutine, one handler task at a time. A
request body waits in its `Body` until the proxy attaches a worker connection; from then on it
is written through as it arrives. Answers are written as the worker connection produces them;
flow control between the two sockets is `flow.Endpoint`'s.

Closing: `close_after_write()` closes once the answer is sent. When the answer came before the
request was all in (404, 413, 503, a refusal), the connection is half-closed instead, so the client
reads the answer rather than a reset, and whatever it still sends is read and dropped for
`LINGER_S` (never parsed: its bytes are not a request). After a worker's 101, `splice()` turns
the connection into a byte pipe to the worker connection.

Bounds (switchboard.edge, `EdgeLimits`): the head is measured while httptools parses it and a
head over a limit is refused (414/431), as are a malformed head and a second Host (400). A
refusal is answered in order, after the requests before it on the connection, and nothing the
client sends after it is parsed. `expire()`, called by the proxy's `Sweeper`, acts on the
connection's timeouts: 408 for a head or a body that does not arrive in time, a quiet close for
an idle keep-alive connection. A connection over `max_client_connections` is answered 503 and
closed without being counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import httptools

from switchboard.body import HIGH_WATER, Body
from switchboard.edge import EdgeLimits, TrustedProxies
from switchboard.flow import ALL_HOLDS, BODY_FULL, Endpoint
from switchboard.pages import simple_response

log = logging.getLogger("switchboard.proxy")

LINGER_S = 5.0  # how long an early answer waits for the client to stop sending its body
OVER_CAP_LINGER_S = 1.0  # how long a connection over the cap may take to read its 503
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})


class Request:
    __slots__ = ("body", "bytes_out", "chunked", "content_length", "headers", "keep_alive",
                 "method", "refusal", "tunnel_bytes_in", "upgrade", "url", "version")

    def __init__(self) -> None:
        self.refusal: tuple[int, str] | None = None  # not a request: the router's refusal
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
# The proxy's synchronous path (switchboard.proxy.Proxy.serve_at_once): True when it took the
# request and will call `ClientConnection.served(keep_going)` once the answer is relayed.
ServeAtOnce = Callable[["ClientConnection", Request], bool]


class _Refused(Exception):
    """Raised in an httptools callback to stop parsing a request the router refuses."""


class ClientConnection(Endpoint):
    """One connection from a client. `serve(client, request)` answers one request and returns
    False when the connection must close afterwards."""

    def __init__(self, serve: Serve, limits: EdgeLimits,
                 connections: set[ClientConnection], trusted: TrustedProxies,
                 serve_at_once: ServeAtOnce | None = None) -> None:
        super().__init__()
        self._serve_at_once = serve_at_once
        self._at_once = False  # the queue's first request is being served without a task
        self.address = b"127.0.0.1"  # the client's IP address, for X-Forwarded-For
        self.trusted = False  # the peer is in trusted_proxies: its forwarding headers count
        self.writes = 0  # write calls so far: did a failed request get any answer?
        self.spliced_bytes = 0
        self.status = 0  # of the answer to the request being served (0: none yet), for metrics
        self._serve = serve
        self._limits = limits
        self._trusted_proxies = trusted
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Request] = collections.deque()
        self._parsing: Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []  # the parsing request's
        self._handler: asyncio.Task[None] | None = None
        self._raw = False  # bytes are no longer parsed: upgrading, spliced, refused, or closing
        self._spliced = False
        self._refused = False  # a refusal is answered or queued: what arrives is dropped
        self._pending = b""  # bytes sent after an upgrade request, before the worker's 101
        self._linger: asyncio.TimerHandle | None = None
        # The head being parsed: None when no head is open; -1 while it began in the read
        # being parsed; then its bytes so far, at least (see _head_still_open).
        self._head_read: int | None = None
        self._read_len = 0  # the size of the read being parsed
        self._max_fields = limits.max_header_count  # read for every header field
        self._requests = 0  # heads parsed whole on this connection
        # When the head began and when the connection last went idle (time.monotonic). The
        # hot path only resets them to 0.0; the sweep stamps a 0.0 with its own clock, so a
        # deadline may pass up to one sweep interval late and a request reads no clock.
        self._head_since = 0.0
        self._idle_since = time.monotonic()  # the connection's start: its first head counts

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        address = transport.get_extra_info("peername")
        if address:
            self.address = str(address[0]).encode()
            self.trusted = self._trusted_proxies.trusts(str(address[0]))
        if len(self._connections) >= self._limits.max_client_connections:
            self.write(simple_response(
                503, "this server has too many open connections; try again shortly",
                close=True, extra=[(b"retry-after", b"1")]))
            self._half_close(OVER_CAP_LINGER_S)
            return
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
        self._read_len = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._raw = True
            self._pending = data[exc.args[0]:]
            return
        except httptools.HttpParserError as exc:
            if self._refused:
                return  # a callback refused the request and said why
            body = self._parsing.body if self._parsing is not None else None
            if body is not None and not body.complete:
                # Broken framing in a body whose request is already queued, perhaps already
                # at its worker: it is cut, and its handler answers 400 in turn.
                self._raw = self._refused = True
                body.reject_framing()
            else:
                self._refuse(400, f"malformed request: {exc}")
            return
        if self._head_read is not None:
            self._head_still_open()

    def _raw_received(self, data: bytes) -> None:
        if self.closed or self._refused:
            return  # the rest of a body we answered early, or of a request we refused
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
        self._parsing = req = Request()
        self._headers = req.headers
        self._head_read = -1
        self._head_since = 0.0

    def on_url(self, url: bytes) -> None:
        req = self._parsing
        assert req is not None
        req.url += url
        if len(req.url) > self._limits.max_request_line_bytes:
            self._refuse_head(414, f"request target over "
                                   f"{self._limits.max_request_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only the count is checked per field (the bytes are measured per read, see
        # _head_still_open and on_headers_complete): a request pays ~30 ns a field for bounds.
        headers = self._headers
        headers.append((name.lower(), value))
        if len(headers) > self._max_fields:
            self._refuse_head(431, f"more than {self._max_fields} request header fields")

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        head_read, self._head_read = self._head_read, None
        self._requests += 1
        limits = self._limits
        if head_read != -1 or self._read_len > limits.max_header_bytes:
            # The head spanned reads, or came in a read that could hold a field over the
            # limit: measure it. (A head read whole in one smaller read is within all limits.)
            self._check_head_bytes(req)
        parser = self._parser
        req.method = parser.get_method()
        req.keep_alive = parser.should_keep_alive()
        req.version = parser.get_http_version()
        req.upgrade = parser.should_upgrade()
        hosts = 0
        for name, value in req.headers:
            if name in FRAMING:
                if name == b"content-length":
                    req.content_length = int(value) if value.strip().isdigit() else None
                elif name == b"transfer-encoding":
                    req.chunked = req.chunked or b"chunked" in value.lower()
                else:
                    hosts += 1
        if hosts > 1:
            self._refuse_head(400, "more than one Host header field")
        if req.content_length or req.chunked:
            expecting = any(name == b"expect" and value.strip().lower() == b"100-continue"
                            for name, value in req.headers)
            req.body = Body(self, req.chunked, expecting=expecting)
        self._queue.append(req)
        if self._at_once or (self._handler is not None and not self._handler.done()):
            return  # queued behind the request being served
        if self._serve_at_once is not None and len(self._queue) == 1 and self._try_at_once(req):
            return
        self._handler = self.loop.create_task(self._handle_queue())

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        assert req is not None and req.body is not None
        body = req.body
        if body.cut_short:
            return  # already refused or timed out; the rest is read and dropped
        if body.size + len(data) > self._limits.max_body_bytes:
            body.refuse()
            return
        body.feed(data)

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None and req.body is not None:
            req.body.finish()
        self._parsing = None

    # ---- bounds ----

    def _refuse(self, status: int, text: str) -> None:
        """Parse nothing more on this connection: answer `status` once the requests before
        this one are answered, then close."""
        self._raw = self._refused = True
        if self._queue:
            refusal = Request()
            refusal.refusal = (status, text)
            self._queue.append(refusal)
        else:
            self.fail(status, text)

    def _head_still_open(self) -> None:
        """After a read that left a head open: bound what it may hold so far. Every read after
        the one it began in is all head, so an unterminated header is cut here, before
        httptools hands it over, at about the limits plus one read."""
        head_read = self._head_read
        req = self._parsing
        assert head_read is not None and req is not None
        limits = self._limits
        if head_read < 0:  # it began in this read, which may hold more than the head
            head_read = len(req.url) + sum(len(n) + len(v) + 4 for n, v in req.headers)
        else:
            head_read += self._read_len
        self._head_read = head_read
        if head_read > limits.max_headers_total_bytes + limits.max_request_line_bytes:
            self._refuse(431, f"request header fields over "
                              f"{limits.max_headers_total_bytes} bytes in all")

    def _check_head_bytes(self, req: Request) -> None:
        limits = self._limits
        total = 0
        for name, value in req.headers:
            size = len(name) + len(value)
            if size > limits.max_header_bytes:
                self._refuse_head(431, f"a request header field over "
                                       f"{limits.max_header_bytes} bytes")
            total += size + 4  # ": " and CRLF
        if total > limits.max_headers_total_bytes:
            self._refuse_head(431, f"request header fields over "
                                   f"{limits.max_headers_total_bytes} bytes in all")

    def _refuse_head(self, status: int, text: str) -> NoReturn:
        """In an httptools callback: refuse the request and stop the parser."""
        self._refuse(status, text)
        raise _Refused()

    def expire(self, now: float) -> None:
        """Act on the deadline that has passed at `now` (switchboard.edge.Sweeper).

        A clock that reads 0.0 was reset on the hot path and starts now. While the router
        holds this client's reading (a worker to start, one that reads slowly) the wait is the
        router's, so the client's clock starts over instead of running."""
        if self._raw or self.closed:
            return  # a tunnel, or on its way out on its own terms
        parsing = self._parsing
        body = parsing.body if parsing is not None else None
        limits = self._limits
        if self._head_read is not None:  # a head is open
            if self._holds:
                self._head_since = now
            elif not self._head_since:
                # A connection's first head counts from the connection, its wait for a first
                # byte included; a later one from the first sweep that sees it.
                self._head_since = self._idle_since if not self._requests else now
            elif now - self._head_since > limits.header_timeout_s:
                self._refuse(408, f"the request head did not arrive within "
                                  f"{limits.header_timeout_s:g}s")
        elif body is not None:
            if body.cut_short:
                return
            if body.expecting or self._holds or body.size != body.seen_size:
                body.seen_size, body.seen_at = body.size, now
            elif now - body.seen_at > limits.body_timeout_s:
                body.time_out()  # its handler answers 408 (switchboard.proxy)
        elif self._queue or (self._handler is not None and not self._handler.done()):
            return  # being answered: not idle, however long its tenant takes
        elif not self._idle_since:
            self._idle_since = now
        elif now - self._idle_since > (limits.keepalive_timeout_s if self._requests
                                       else limits.header_timeout_s):
            # Idle between requests, or not one byte since it connected: close quietly, as a
            # browser's unused pre-connection or a finished keep-alive deserves.
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                self.abort()  # the client does not read what we sent it either
            else:
                self.close()

    # ---- answering ----

    def _try_at_once(self, req: Request) -> bool:
        assert self._serve_at_once is not None
        writes = self.writes
        self._at_once = True
        try:
            taken = self._serve_at_once(self, req)
        except Exception:  # as in _handle_queue: one request lost, never a hung connection
            log.exception("request %r failed in the router", req.url[:200])
            self._at_once = False
            self._queue.clear()
            if self.writes == writes:
                self.fail(502, "the router failed to handle this request (see its log)")
            else:
                self.abort()
            return True
        self._at_once = taken
        return taken

    def served(self, keep_going: bool | None) -> None:
        """The synchronous path is done with the queue's first request: `keep_going` as
        `serve` returns it, or None to hand the request to the handler task after all (the
        worker connection was stale: the task retries it as any request is retried)."""
        self._at_once = False
        if keep_going is not None:
            req = self._queue.popleft()
            self._idle_since = 0.0
            if not keep_going or not req.keep_alive:
                self.close_after_write()
                return
            self.release_reading(BODY_FULL)
        if self._queue and not self.closed:  # pipelined requests, or the handed-over one
            self._handler = self.loop.create_task(self._handle_queue())

    async def _handle_queue(self) -> None:
        while self._queue and not self.closed:
            req = self._queue[0]
            if req.refusal is not None:
                self.fail(*req.refusal)
                return
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
            self._idle_since = 0.0  # idle from here on, as the next sweep will stamp
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
        self.status = status
        self.write(simple_response(status, text, close=True, extra=extra))
        self.close_after_write()

    def close_after_write(self) -> None:
        if self.transport is None or self.closed:
            return
        parsing = self._parsing
        if parsing is None or (parsing.body is not None and parsing.body.complete):
            self.close()  # nothing more is on its way
        else:
            # Answered before the request was all in: half-close so the client reads the
            # answer instead of a reset; read and drop what it still sends; close later.
            self._half_close(LINGER_S)

    def _half_close(self, linger_s: float) -> None:
        transport = self.transport
        assert transport is not None
        self._raw = True
        self.release_reading(ALL_HOLDS)
        self.closed = True
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = self.loop.call_later(linger_s, self._end_linger)

    def _end_linger(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()  # the client reads nothing: do not wait for it to
        else:
            transport.close()

    def splice(self) -> None:
        """After the worker's 101: from now on the client's bytes go to the linked worker
        connection unparsed (and the worker's come back the same way)."""
        self._spliced = True
        pending, self._pending = self._pending, b""
        self.release_reading(BODY_FULL)
        if pending and self.peer is not None:
            self.spliced_bytes += len(pending)
            self.peer.write(pending)
