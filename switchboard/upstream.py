"""The router's side of its connections to tenant workers (used by switchboard/proxy.py).

`UpstreamConnection` relays one exchange at a time on a keep-alive connection to a worker:
it parses the worker's response with httptools and writes it to the client connection as it
arrives (re-framing chunked bodies, ending HEAD/204/304 answers at their head, passing 1xx
through, and splicing both sockets after a 101). `UpstreamPool` keeps idle connections by port
and closes them when their tenant stops or after `IDLE_UPSTREAM_S`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from switchboard.proxy import ClientConnection

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
IDLE_UPSTREAM_S = 60.0


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive connection to one tenant worker, relaying one exchange at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.done: asyncio.Future[bool] | None = None  # True: reusable
        self.head_sent = False
        self.got_bytes = False
        self.chunked = False
        self.bodyless = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.close_client = False
        self.http10 = False  # the client speaks HTTP/1.0: no chunked framing, no 1xx
        self.closed = False
        self.idle_since = 0.0
        self.bytes_out = 0
        self.write_paused: asyncio.Future[None] | None = None
        self.tunnel_mode = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel_mode and self.client is not None:
            self.client.tunnel = None
            self.client.close_after_write()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)
        self._finish(False)

    def pause_writing(self) -> None:
        self.write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)
        self.write_paused = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def transport_write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def begin(self, client: ClientConnection, head_only: bool, close_client: bool,
              http10: bool = False) -> asyncio.Future[bool]:
        self.client = client
        self.head_sent = self.got_bytes = self.chunked = False
        self.bodyless = head_only
        self.close_client = close_client
        self.http10 = http10
        self.headers = []
        self.bytes_out = 0
        self.done = asyncio.get_running_loop().create_future()
        client.upstream = self
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.tunnel_mode:
            if self.client is not None:
                self.client.write(data)
            return
        self.got_bytes = True
        client = self.client
        if client is not None:
            client.begin_batch()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._start_tunnel(data[exc.args[0]:])
        except httptools.HttpParserError:
            self.abort()
        finally:
            if client is not None:
                client.flush_batch()

    # ---- httptools callbacks ----

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        client = self.client
        if client is None:
            return
        if 100 <= self.status < 200 and self.status != 101:
            if not self.http10:
                client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (self.status, self.reason))
            self.reason, self.headers = b"", []
            return
        lines = [b"HTTP/1.1 %d %s" % (self.status, self.reason or b"OK")]
        has_length = False
        connection_tokens: set[bytes] = set()
        for name, value in self.headers:
            if name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                has_length = True
        for name, value in self.headers:
            if name in HOP_BY_HOP or name in connection_tokens:
                continue
            lines.append(name + b": " + value)
        no_body = self.bodyless or self.status in (204, 304)
        if self.status == 101:
            lines += [b"connection: upgrade", b"upgrade: " + header_value(self.headers, b"upgrade")]
        elif (self.chunked or not has_length) and not no_body:
            if self.http10:
                # HTTP/1.0 has no chunked coding: the body ends where the connection does.
                self.chunked = False
                self.close_client = True
            else:  # chunked upstream, or close-delimited: (re-)frame it for the client
                self.chunked = True
                lines.append(b"transfer-encoding: chunked")
        if self.close_client:
            lines.append(b"connection: close")
        elif self.http10:
            lines.append(b"connection: keep-alive")  # a 1.0 client assumes close otherwise
        client.write(b"\r\n".join(lines) + b"\r\n\r\n")
        self.head_sent = True
        if no_body and self.status != 101:
            # A HEAD, 204 or 304 answer ends at its head; a fresh parser for the next one.
            self.parser = httptools.HttpResponseParser(self)
            self._finish(keep_alive(self.headers))

    def on_body(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        self.bytes_out += len(data)
        if self.chunked:
            client.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            client.write(data)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 or self.done is None or self.done.done():
            return
        if self.chunked and self.client is not None:
            self.client.write(b"0\r\n\r\n")
        self._finish(self.parser.should_keep_alive())

    # ---- ending ----

    def _finish(self, reusable: bool) -> None:
        if self.client is not None and self.client.upstream is self:
            self.client.upstream = None
        if self.done is not None and not self.done.done():
            self.done.set_result(reusable and not self.closed)
        self.reason = b""

    def _start_tunnel(self, leftover: bytes) -> None:
        client = self.client
        if client is None or self.status != 101:
            self.abort()
            return
        self.tunnel_mode = True
        client.tunnel = self
        if leftover:
            client.write(leftover)
        if client.pending_tunnel_bytes:
            self.transport_write(client.pending_tunnel_bytes)
            client.pending_tunnel_bytes = b""

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._finish(False)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def keep_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    return b"close" not in header_value(headers, b"connection").lower()


class UpstreamPool:
    """Idle keep-alive connections to workers, by port."""

    def __init__(self) -> None:
        self.idle: dict[int, list[UpstreamConnection]] = {}

    async def get(self, port: int) -> tuple[UpstreamConnection, bool]:
        """A connection to `port`, and whether it was reused (a reused one may be stale)."""
        conns = self.idle.get(port)
        while conns:
            conn = conns.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.resume_reading()
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: UpstreamConnection(port), "127.0.0.1", port)
        return conn, False

    def put(self, conn: UpstreamConnection) -> None:
        conn.client = None
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.port, []).append(conn)

    def close_port(self, port: int) -> None:
        for conn in self.idle.pop(port, []):
            conn.close()

    def close_idle_older_than(self, seconds: float) -> None:
        cutoff = time.monotonic() - seconds
        for port, conns in list(self.idle.items()):
            keep = [c for c in conns if c.idle_since >= cutoff and not c.closed]
            for conn in conns:
                if conn not in keep:
                    conn.close()
            if keep:
                self.idle[port] = keep
            else:
                del self.idle[port]

    def close_all(self) -> None:
        for port in list(self.idle):
            self.close_port(port)


