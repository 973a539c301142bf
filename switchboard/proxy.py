"""The streaming reverse proxy on the router's front listener: one request, start to end.

A lean asyncio relay, not an HTTP client library: measured on this kind of machine an
httpx-based proxy runs at about 3% of direct throughput, a raw relay at about 67%. Requests
and responses are parsed with httptools (llhttp, in C); bodies are relayed chunk by chunk as
they arrive, with backpressure both ways (a slow reader pauses the other side's socket), so a
200 MB upload or download never sits in the router's memory. Connections to workers are kept
alive and reused.

Four modules, one idea each: `downstream` (client connections: parsing, request bodies,
answers, closing), `upstream` (worker connections and their keep-alive pool), `flow` (the
backpressure both share) and this one, which joins them per request: route, admit through the
supervisor, send to the worker, retry when that is safe, count bytes, release.

What the worker sees: the request target without the `/t/<tenant>` prefix (the worker's
uvicorn is configured with that root path, and X-Forwarded-Prefix carries it too), the
client's Host, X-Forwarded-For/-Proto/-Host as the router sets them, and no hop-by-hop headers
(RFC 9110 7.6.1: Connection and the headers it names, Host excepted, Keep-Alive,
Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade). Forwarding headers from the client
(Forwarded, X-Real-IP, X-Forwarded-*, and the router's own X-Switchboard-*) are dropped unless
its address is in `trusted_proxies` (a front server such as nginx); from a trusted peer they
pass, its X-Forwarded-For is appended to and its X-Forwarded-Proto/-Host are kept. A WebSocket
upgrade is forwarded, and after the worker's 101 the two sockets are spliced byte for byte.

A worker that died under a request (kill -9, crash) costs that request nothing when sending it
again is safe (the connection was refused, or it is a GET/HEAD/OPTIONS without a body that got no
answer): it waits for the supervisor's next worker, as a new request would. Anything else is a
502, since a POST may already have been applied.

The router's own answers (switchboard.pages: no internal detail in them; the reasons go to the
log): 400 (bad tenant name, malformed request, two Host fields), 404 (one page for no tenant
there and for a URL that names none), 408, 413 (body over `max_body_bytes`), 414, 431 (the
front edge's bounds, switchboard.edge), 502, 503 (+ Retry-After when the tenant may recover;
also beyond `max_client_connections`), 504, and `GET /_switchboard/health` -> 200
`{"status": "ok", "pid": <router pid>}` in both routing modes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from switchboard.body import Body
from switchboard.config import Config
from switchboard.downstream import ClientConnection, Request
from switchboard.edge import EdgeLimits, Sweeper, TrustedProxies, raise_open_files_limit
from switchboard.errors import TenantUnavailable, UnknownTenant
from switchboard.forwarding import Forwarding
from switchboard.metrics import Counters
from switchboard.pages import NOT_FOUND_TEXT, unavailable_text
from switchboard.routing import (
    BadName,
    NotRouted,
    Route,
    is_health_check,
    route_host,
    route_path,
)
from switchboard.upstream import HOP_BY_HOP, UpstreamConnection, UpstreamPool, header_value

log = logging.getLogger("switchboard.proxy")

# Never passed as the client sent them: the router frames the body and sets these itself.
DROPPED_FROM_CLIENT = HOP_BY_HOP | {
    b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-prefix",
}
# Passed only from a peer in trusted_proxies.
FORWARDING_NAMES = frozenset({b"forwarded", b"x-real-ip"})
FORWARDING_PREFIXES = (b"x-forwarded-", b"x-switchboard-")
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
BODY_GRACE_S = 1.0  # a worker answered before the body was in: wait this long for the rest
UNAVAILABLE_LOG_EVERY_S = 10.0  # one log line per tenant this often for its run of 503s
HOPS_HEADER = b"x-switchboard-hops"  # routers a forwarded request went through (trusted only)
MAX_FORWARD_HOPS = 8  # more: 508, a loop between hosts


class Tenant(Protocol):
    """What the proxy reads of a tenant that `Admission.acquire` handed it."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str | int | None: ...
    @property
    def worker(self) -> Any: ...  # the worker serving now; compared by identity only


TenantT = TypeVar("TenantT", bound=Tenant)


class Admission(Protocol[TenantT]):
    """All the proxy asks of the supervisor (switchboard.supervisor.Supervisor)."""

    async def acquire(self, name: str) -> TenantT:
        """A serving tenant with one more request in flight; raises UnknownTenant or
        TenantUnavailable."""
        ...

    def serving_now(self, name: str) -> TenantT | None:
        """The tenant if its worker can take a request this moment, else None (unknown,
        stopped, starting, moved: `acquire` deals with those). Admits nothing: the caller
        calls the tenant's `begin_request()` if it sends it one."""
        ...

    def release(self, tenant: TenantT, bytes_in: int, bytes_out: int) -> None:
        """The request that `acquire` admitted is over; it moved these many body bytes."""
        ...

    async def recover(self, tenant: TenantT, worker: Any) -> bool:
        """`worker` failed a request in flight: wait for the next one (False: it is alive)."""
        ...


def _cut_off_unanswered(conn: UpstreamConnection) -> None:
    if not conn.answered and not conn.closed:
        conn.timed_out = True
        conn.abort()


def health_response(pid: int) -> bytes:
    """The answer to `GET /_switchboard/health`: this router's pid proves that the port a test
    or a script reached belongs to the process it started."""
    body = json.dumps({"status": "ok", "pid": pid}).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\ncache-control: no-store\r\n\r\n%s" % (len(body), body))


_unavailable_logged: dict[str, float] = {}


def _unavailable(client: ClientConnection, tenant: str, exc: TenantUnavailable,
                 counters: Counters) -> None:
    """503: the visitor learns that the tenant is unavailable and when to retry; the reason
    (perhaps a traceback, a path) goes to the log, once per UNAVAILABLE_LOG_EVERY_S."""
    counters.count_unavailable(exc.kind)
    now = time.monotonic()
    if now - _unavailable_logged.get(tenant, -UNAVAILABLE_LOG_EVERY_S) >= UNAVAILABLE_LOG_EVERY_S:
        _unavailable_logged[tenant] = now
        log.warning("503 for tenant %s: %s", tenant, exc.reason, extra={"tenant": tenant})
    extra = [] if exc.retry_after_s is None else [
        (b"retry-after", b"%d" % max(1, round(exc.retry_after_s + 0.49)))]
    client.fail(503, unavailable_text(tenant, exc.retry_after_s), extra)


class Proxy:
    """Routes each request to its tenant and relays it; the front listener's protocol factory."""

    def __init__(self, config: Config, supervisor: Admission[Any],
                 counters: Counters | None = None) -> None:
        self.config = config
        self.supervisor = supervisor
        # Per request only integers are added here (switchboard/metrics.py reads them).
        self.counters = counters or Counters()
        self.pool = UpstreamPool()
        self.connections: set[ClientConnection] = set()
        self.limits = EdgeLimits.from_config(config, raise_open_files_limit())
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.sweeper = Sweeper(self.connections, self.limits.sweep_interval_s)
        self.health = health_response(os.getpid())
        # Tenants that live on another host (switchboard/forwarding.py); set by the server.
        self.forwarding: Forwarding | None = None
        self.health_head = self.health.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        if config.routing == "host":
            base = config.base_domain
            self.route: Callable[[Request], Route] = lambda req: route_host(
                header_value(req.headers, b"host"), req.url, base)
        else:
            self.route = lambda req: route_path(req.url)

    def protocol(self) -> ClientConnection:
        self.sweeper.start()  # once; the loop runs by the time connections come
        return ClientConnection(self.handle, self.limits, self.connections, self.trusted,
                                self.serve_at_once)

    def close(self) -> None:
        """Close every worker and client connection (the router is stopping)."""
        self.sweeper.stop()
        self.pool.close_all()
        for conn in list(self.connections):
            conn.close()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), "idle_upstream": self.pool.idle_count()}

    async def handle(self, client: ClientConnection, req: Request) -> bool:
        """Serve one request. Returns False when the client connection must close."""
        started = time.monotonic()
        client.status = 0
        try:
            return await self.serve(client, req)
        finally:
            self.counters.count_response(client.status, time.monotonic() - started)

    def serve_at_once(self, client: ClientConnection, req: Request) -> bool:
        """The hot path, with no task and no coroutine: a request without a body to a tenant
        whose worker is serving, over an idle pooled connection, is written to the worker
        from the parser's callback, and its answer relayed from the worker connection's.
        False (nothing done) for anything else: starts, waits, bodies, upgrades, forwarding
        and the router's own URLs take `handle`. Ends with `client.served(...)`."""
        if req.body is not None or req.upgrade:
            return False
        try:
            route = self.route(req)
        except (BadName, NotRouted):
            return False
        tenant = self.supervisor.serving_now(route.tenant)
        if tenant is None:
            return False
        conn = self.pool.take_idle(tenant.address, tenant.worker)
        if conn is None:
            return False
        started = time.monotonic()
        client.status = 0
        tenant.begin_request()
        exchange = conn.exchange(client, [self.request_head(client, req, route)],
                                 head_only=req.method == b"HEAD", close_client=not req.keep_alive,
                                 http10=req.version == "1.0")
        timer = conn.loop.call_later(self.config.request_timeout_s, _cut_off_unanswered, conn)
        exchange.add_done_callback(
            lambda done: self._answered_at_once(client, req, route, tenant, conn, timer, started,
                                                done.result()))
        return True

    def _answered_at_once(self, client: ClientConnection, req: Request, route: Route,
                          tenant: Any, conn: UpstreamConnection, timer: asyncio.TimerHandle,
                          started: float, reusable: bool) -> None:
        """The end of `serve_at_once`'s exchange: as `relay` ends one, without a body."""
        timer.cancel()
        client.status = conn.status
        keep_going: bool | None = False
        try:
            if conn.timed_out:
                client.fail(504, f"tenant {route.tenant} sent no answer within "
                                 f"{self.config.request_timeout_s:g}s")
            elif not conn.answered:
                if not conn.got_bytes and req.method in IDEMPOTENT:
                    keep_going = None  # a stale pooled connection, or a worker just gone
                    return
                client.fail(502, f"tenant {route.tenant}'s worker closed the connection")
            else:
                req.bytes_out = conn.bytes_out
                if reusable:
                    self.pool.put(conn)
                else:
                    conn.unlink()
                    conn.close()
                keep_going = not conn.client_must_close and not client.closed
        finally:
            self.supervisor.release(tenant, 0, req.bytes_out)
            if keep_going is not None:  # a handed-over request is counted when it is served
                self.counters.count_response(client.status, time.monotonic() - started)
            client.served(keep_going)

    async def serve(self, client: ClientConnection, req: Request) -> bool:
        try:
            route = self.route(req)
        except BadName as exc:
            client.fail(400, str(exc))
            return False
        except NotRouted:
            return self.answer_unrouted(client, req)
        if req.content_length is not None and req.content_length > self.config.max_body_bytes:
            client.fail(413, f"request body over {self.config.max_body_bytes} bytes")
            return False
        try:
            tenant = await self.supervisor.acquire(route.tenant)
        except UnknownTenant:
            client.fail(404, NOT_FOUND_TEXT)  # the same page as for a URL that names no tenant
            return False
        except TenantUnavailable as exc:
            if exc.kind == "moved" and self.forwarding is not None:
                return await self.forward(client, req, route, exc)
            _unavailable(client, route.tenant, exc, self.counters)
            return False
        try:
            return await self.relay(client, req, route, tenant)
        except TenantUnavailable as exc:  # its worker died and the next one cannot start
            _unavailable(client, route.tenant, exc, self.counters)
            return False
        finally:
            self.supervisor.release(tenant, req.bytes_in, req.bytes_out)

    async def forward(self, client: ClientConnection, req: Request, route: Route,
                      moved: TenantUnavailable) -> bool:
        """The tenant lives on another host (switchboard/forwarding.py): relay the request to
        that host's router as it came (target, Host; X-Forwarded-* appended to), or 307."""
        assert self.forwarding is not None
        remote = self.forwarding.remote(route.tenant)
        if remote is None:
            _unavailable(client, route.tenant, moved, self.counters)
            return False
        if remote.redirect:
            client.fail(307, f"{route.tenant} moved", [(b"location", remote.location(req.url))])
            return False
        sent = header_value(req.headers, HOPS_HEADER) if client.trusted else b""
        hops = int(sent) if sent.isdigit() else 0
        if hops >= MAX_FORWARD_HOPS:  # hosts that each think the other has it
            log.error("request for %s forwarded %d times: a loop between hosts? (%s)",
                      route.tenant, hops, remote.url, extra={"tenant": route.tenant})
            client.fail(508, f"{route.tenant} is forwarded in a loop between hosts")
            return False
        return await self.relay(client, req, Route(route.tenant, req.url, ""), remote,
                                hops=hops + 1)

    def answer_unrouted(self, client: ClientConnection, req: Request) -> bool:
        """The router's own URLs: the health check, else a 404."""
        if is_health_check(req.url):
            if req.method not in (b"GET", b"HEAD"):
                client.fail(405, "the health check answers GET", [(b"allow", b"GET, HEAD")])
                return False
            client.write(self.health if req.method == b"GET" else self.health_head)
            client.status = 200
            return True
        if req.url in (b"/healthz", b"/healthz/"):
            client.status = 200
            client.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
            return True
        client.fail(404, NOT_FOUND_TEXT)
        return False

    def cannot_send(self, client: ClientConnection, req: Request) -> bool:
        """True when the request must not reach a worker any more: its client left, or its
        body went over the limit or stalled while it waited (then it is answered here)."""
        body = req.body
        if body is not None and body.refused:
            self.refuse_body(client, body)
            return True
        return client.closed or (body is not None and body.aborted)

    def refuse_body(self, client: ClientConnection, body: Body) -> None:
        """Answer for a body the router cut short."""
        if body.too_large:
            client.fail(413, f"request body over {self.config.max_body_bytes} bytes")
        elif body.timed_out:
            client.fail(408, f"the request body sent nothing for "
                             f"{self.limits.body_timeout_s:g}s")
        else:
            client.fail(400, "malformed request body (chunked framing)")

    async def relay(self, client: ClientConnection, req: Request, route: Route,
                    tenant: Any, *, hops: int = 0) -> bool:
        if self.cannot_send(client, req):
            return False
        head = self.request_head(client, req, route, hops)
        body = req.body
        worker = tenant.worker
        close_client = not req.keep_alive or req.upgrade
        for attempt in range(3):
            last_try = attempt == 2
            try:
                conn, reused = await self.pool.get(tenant.address, worker)
            except OSError:
                # Nothing was sent, so any request may go to the next worker: the one we were
                # given died (kill -9, crash) and the supervisor starts another.
                if not last_try and await self.supervisor.recover(tenant, worker):
                    worker = tenant.worker
                    continue
                client.fail(502, f"tenant {route.tenant} is not answering on its socket")
                return False
            if self.cannot_send(client, req):  # while we connected: the worker hears nothing
                self.pool.put(conn)
                return False
            out = [head]
            if body is not None:
                body.attach(conn, out)
            exchange = conn.exchange(client, out, head_only=req.method == b"HEAD",
                                     close_client=close_client, http10=req.version == "1.0")
            # No answer within request_timeout_s: cut the worker off and answer 504 (an answer
            # that has started may stream for as long as it likes).
            timer = conn.loop.call_later(
                self.config.request_timeout_s, _cut_off_unanswered, conn)
            try:
                reusable = await exchange
            finally:
                timer.cancel()
                client.status = conn.status
            if body is not None:
                if conn.answered and not body.complete and not body.cut_short:
                    await body.wait_complete(BODY_GRACE_S)
                body.detach()
                if body.refused:
                    conn.abort()
                    if not conn.answered:
                        self.refuse_body(client, body)
                    return False
            if conn.timed_out:
                client.fail(504, f"tenant {route.tenant} sent no answer within "
                                 f"{self.config.request_timeout_s:g}s")
                return False
            if not conn.answered:
                # Closed without a byte of answer. Only an idempotent request without a body is
                # sent again: on a stale keep-alive connection, or to the next worker when this
                # one died. Any other may have been applied, or may be what killed the worker
                # (a request that wedges its worker must not wedge the next one too).
                if not last_try and not conn.got_bytes and body is None and (
                        req.method in IDEMPOTENT and (
                            reused or await self.supervisor.recover(tenant, worker))):
                    worker = tenant.worker
                    continue
                client.fail(502, f"tenant {route.tenant}'s worker closed the connection")
                return False
            if conn.upgraded:
                client.splice()
                await conn.wait_closed()
                req.bytes_out = conn.bytes_out
                req.tunnel_bytes_in = client.spliced_bytes
                return False
            req.bytes_out = conn.bytes_out
            body_done = body is None or body.complete
            if reusable and body_done:
                self.pool.put(conn)
            else:
                conn.unlink()
                conn.close()
            # A body the worker did not read to its end is still arriving: close the client
            # connection rather than parse the rest of it as the next request.
            return not conn.client_must_close and not client.closed and body_done
        return False

    def request_head(self, client: ClientConnection, req: Request, route: Route,
                     hops: int = 0) -> bytes:
        connection_tokens: set[bytes] = set()
        forwarded_for: list[bytes] = []
        forwarded_proto = forwarded_host = host = b""
        trusted = client.trusted
        for name, value in req.headers:
            if name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif name == b"host":
                host = value
            elif not trusted:
                continue
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == b"x-forwarded-host":
                forwarded_host = value
        connection_tokens.discard(b"host")  # end to end, whatever Connection says
        lines = [req.method + b" " + route.target + b" HTTP/1.1"]
        for name, value in req.headers:
            if name in DROPPED_FROM_CLIENT or name in connection_tokens:
                continue
            if not trusted and (name in FORWARDING_NAMES or name.startswith(FORWARDING_PREFIXES)):
                continue
            lines.append(name + b": " + value)
        forwarded_for.append(client.address)
        lines.append(b"x-forwarded-for: " + b", ".join(forwarded_for))
        lines.append(b"x-forwarded-proto: " + (forwarded_proto or b"http"))
        lines.append(b"x-forwarded-host: " + (forwarded_host or host))
        if route.root_path:
            lines.append(b"x-forwarded-prefix: " + route.root_path.encode())
        if req.upgrade:
            lines += [b"connection: upgrade", b"upgrade: " + header_value(req.headers, b"upgrade")]
        if req.chunked:
            lines.append(b"transfer-encoding: chunked")
        elif req.content_length is not None:
            lines.append(b"content-length: %d" % req.content_length)
        if hops:  # forwarded to another host's router (forward): one more hop
            lines = [line for line in lines if not line.startswith(HOPS_HEADER + b":")]
            lines.append(HOPS_HEADER + b": %d" % hops)
        return b"\r\n".join(lines) + b"\r\n\r\n"
