"""The router's connections to tenant workers and their keep-alive pool.

The client side (switchboard.proxy) uses this interface and nothing else:

- `UpstreamPool.get(address, worker)` -> `(conn, reused)`: an idle connection to that worker, or
  a new one (raises OSError when nobody listens); `put(conn)` after a reusable exchange;
  `close_idle_older_than(s)`, `close_all()`.
- `conn.exchange(client, request, ...)` -> a future: sends the request and relays the
  response to `client` (any `flow.Endpoint`) as it arrives, re-framing chunked bodies, ending
  HEAD/204/304 answers at their head, passing 1xx through. The future is done when the answer
  is (True: the connection can serve another request). Request body bytes go through
  `conn.write()`, and `conn.abort()` ends an exchange the worker must not see complete. The
  connection stays linked to `client` (flow control both ways) until the caller is done with
  the request: `put()` back in the pool or `close()`/`abort()` (or `unlink()`).
- When the future is done, the exchange's outcome: `answered` (the response head reached the
  client), `got_bytes` (the worker sent anything), `upgraded` (a 101: the two sockets stay
  linked byte for byte until either closes; `wait_closed()`), `client_must_close` (the client
  connection cannot carry another request: asked for, HTTP/1.0 close-delimited, or the answer
  was cut off), `bytes_out` (body or tunnel bytes relayed to the client).

Neither side touches the other's fields: the connection sees its client only as a
`flow.Endpoint` (write, writelines, the link), and backpressure both ways is `flow`'s. A pooled
connection remembers the worker it reached, so one to an earlier worker on the same address (the
tenant stopped or crashed and came back) is closed instead of reused. Hop-by-hop headers
(RFC 9110 7.6.1) never pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httptools

from switchboard.flow import Endpoint

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
IDLE_UPSTREAM_S = 60.0

# A worker's Unix socket path, its loopback TCP port, or (host, port) of another host's router
# that a moved tenant's requests are forwarded to (switchboard/forwarding.py).
Address = str | int | tuple[str, int]


class UpstreamConnection(Endpoint):
    """A keep-alive connection to one tenant worker, relaying one exchange at a time."""

    def __init__(self, address: Address, worker: Any) -> None:
        super().__init__()
        self.address = address
        self.worker = worker  # the worker process at the other end, compared by identity
        self.idle_since = 0.0
        # The current exchange's outcome (see the module docstring).
        self.answered = False
        self.got_bytes = False
        self.upgraded = False
        self.timed_out = False  # cut off by the proxy: no answer within request_timeout_s
        self.pool: UpstreamPool | None = None  # while it waits idle in a pool
        self.client_must_close = False
        self.bytes_out = 0
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future[bool] | None = None  # True: reusable
        self._out: list[bytes] = []  # what one read of the worker produced for the client
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False  # the client gets chunked framing
        self._until_close = False  # the worker's body ends where its connection does
        self._head_only = False
        self._http10 = False  # the client speaks HTTP/1.0: no chunked framing, no 1xx

    @property
    def status(self) -> int:
        """The status of the current exchange's answer (0 before its head arrived)."""
        return self._status

    def exchange(self, client: Endpoint, request: list[bytes], *, head_only: bool,
                 close_client: bool, http10: bool) -> asyncio.Future[bool]:
        """Send `request` (its head, and the body bytes already in) and relay the answer to
        `client`; see the module docstring."""
        self.answered = self.got_bytes = self.upgraded = self._chunked = False
        self._until_close = False
        self.client_must_close = close_client
        self.bytes_out = 0
        self._head_only = head_only
        self._http10 = http10
        self._headers, self._reason = [], b""
        self._done = done = self.loop.create_future()
        self.link(client)
        self.writelines(request)
        if self.closed:  # the worker hung up before we could ask
            self._finish(False)
        return done

    # ---- asyncio callbacks ----

    def data_received(self, data: bytes) -> None:
        client = self.peer
        if self.upgraded:
            self.bytes_out += len(data)
            if client is not None:
                client.write(data)
            return
        if not self._exchanging():
            self.abort()  # bytes nobody asked for: this connection is not fit for reuse
            return
        self.got_bytes = True
        out: list[bytes] = []
        self._out = out
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._start_tunnel(data[exc.args[0]:])
        except httptools.HttpParserError:
            self.abort()
        if out and client is not None:
            client.writelines(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered and self._until_close and self._exchanging():
            # The body was delimited by the close: this is its end, not a cut.
            if self._chunked and self.peer is not None:
                self.peer.write(b"0\r\n\r\n")
            self._finish(False)
        super().connection_lost(exc)  # tells a linked client
        self._cut_off()
        if self.pool is not None:  # an idle connection whose worker went away: forget it now
            self.pool.discard(self)

    def peer_lost(self) -> None:
        if self.upgraded:
            self.close()  # the tunnel's other end is gone: send what is buffered, then close
        else:
            self.abort()  # the answer has nowhere to go

    def abort(self) -> None:
        super().abort()
        self._cut_off()

    # ---- httptools callbacks ----

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._status = status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            if not self._http10:
                self._out.append(b"HTTP/1.1 %d %s\r\n\r\n" % (status, self._reason))
            self._reason, self._headers = b"", []
            return
        lines = [b"HTTP/1.1 %d %s" % (status, self._reason or b"OK")]
        has_length = False
        connection_tokens: set[bytes] = set()
        for name, value in self._headers:
            if name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                has_length = True
        for name, value in self._headers:
            if name in HOP_BY_HOP or name in connection_tokens:
                continue
            lines.append(name + b": " + value)
        no_body = self._head_only or status in (204, 304)
        if status == 101:
            upgrade = header_value(self._headers, b"upgrade")
            lines += [b"connection: upgrade", b"upgrade: " + upgrade]
        elif (self._chunked or not has_length) and not no_body:
            self._until_close = not self._chunked
            if self._http10:
                # HTTP/1.0 has no chunked coding: the body ends where the connection does.
                self._chunked = False
                self.client_must_close = True
            else:  # chunked upstream, or close-delimited: (re-)frame it for the client
                self._chunked = True
                lines.append(b"transfer-encoding: chunked")
        if self.client_must_close:
            lines.append(b"connection: close")
        elif self._http10:
            lines.append(b"connection: keep-alive")  # a 1.0 client assumes close otherwise
        self._out.append(b"\r\n".join(lines) + b"\r\n\r\n")
        self.answered = True
        if no_body and status != 101:
            # A HEAD, 204 or 304 answer ends at its head; a fresh parser for the next one.
            self._parser = httptools.HttpResponseParser(self)
            self._finish(keep_alive(self._headers))

    def on_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self._chunked:
            self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._out.append(data)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 or not self._exchanging():
            return
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self._finish(self._parser.should_keep_alive())

    # ---- ending ----

    def _exchanging(self) -> bool:
        return self._done is not None and not self._done.done()

    def _cut_off(self) -> None:
        """The connection ended before the exchange did."""
        if self._exchanging():
            if self.answered:
                self.client_must_close = True  # half an answer: that client cannot go on
            self._finish(False)

    def _finish(self, reusable: bool) -> None:
        """The answer is over (the link stays until the caller is done with the request)."""
        done = self._done
        if done is None or done.done():
            return
        self._reason = b""
        done.set_result(reusable and not self.closed)

    def _start_tunnel(self, leftover: bytes) -> None:
        if self.peer is None or self._status != 101:
            self.abort()
            return
        self.upgraded = True
        self.client_must_close = True
        if leftover:
            self.bytes_out += len(leftover)
            self._out.append(leftover)
        self._finish(False)


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def keep_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    return b"close" not in header_value(headers, b"connection").lower()


class UpstreamPool:
    """Idle keep-alive connections to workers, by address (a Unix socket path, or a loopback
    port)."""

    def __init__(self) -> None:
        self._idle: dict[Address, list[UpstreamConnection]] = {}

    async def get(self, address: Address, worker: Any) -> tuple[UpstreamConnection, bool]:
        """A connection to `worker` at `address`, and whether it was reused (a reused one may
        be stale). Idle connections to an earlier worker at the same address are closed here."""
        conn = self.take_idle(address, worker)
        if conn is not None:
            return conn, True
        loop = asyncio.get_running_loop()
        if isinstance(address, str):
            _, conn = await loop.create_unix_connection(
                lambda: UpstreamConnection(address, worker), address)
        elif isinstance(address, tuple):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(address, worker), *address)
        else:
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(address, worker), "127.0.0.1", address)
        return conn, False

    def take_idle(self, address: Address, worker: Any) -> UpstreamConnection | None:
        """An idle connection to `worker` at `address` (it may be stale), or None. Idle
        connections to an earlier worker at the same address are closed here."""
        conns = self._idle.get(address)
        while conns:
            conn = conns.pop()
            conn.pool = None
            if conn.worker is not worker:
                conn.close()
            elif not conn.closed and conn.transport is not None and (
                    not conn.transport.is_closing()):
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        conn.unlink()
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.address, []).append(conn)
        conn.pool = self

    def discard(self, conn: UpstreamConnection) -> None:
        """Drop an idle connection that closed (its worker stopped or died), so a pool that
        has seen thousands of workers come and go holds only live connections."""
        conn.pool = None
        conns = self._idle.get(conn.address)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.address]

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def close_address(self, address: Address) -> None:
        for conn in self._idle.pop(address, []):
            conn.close()

    def close_idle_older_than(self, seconds: float) -> None:
        cutoff = time.monotonic() - seconds
        for address, conns in list(self._idle.items()):
            keep = [c for c in conns if c.idle_since >= cutoff and not c.closed]
            for conn in conns:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]

    def close_all(self) -> None:
        for address in list(self._idle):
            self.close_address(address)
