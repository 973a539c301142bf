"""The admin API: a JSON HTTP API on its own listener, every request HMAC-signed.

`build_admin_app(service, verifier)` returns an ASGI app. Requests pass through
`SignatureMiddleware` first, whatever their path, in this order (switchboard/signing.py):

1. The signing headers, before a byte of the body is read: present and well formed, the
   timestamp within 300 s, the nonce not accepted within that window. Else 401
   `{"error": "<which check failed>: <detail>"}` and the connection is closed with the body
   unread (a client that sent `Expect: 100-continue` never sends it).
2. The body, read under its route's cap while it is hashed: `max_body_bytes` (64 KiB) in
   memory for every route but import; `max_import_bytes` (1 GiB) streamed to a new 0600 file
   in the staging folder (`<data-dir>/transfers/`) for `POST /v1/tenants/{name}/import`, at
   most MAX_STAGED_UPLOADS at once (503 beyond). A body over its cap, by Content-Length or
   as it arrives: 413, and nothing of it is kept.
3. The signature over the digest just computed (401 "bad signature", the body discarded),
   then the nonce recorded, durably when the verifier's store has a file (507 if that
   fails). Only then does the route run, with the body in memory or, for import, the staged
   file's path in the scope (STAGED_BODY); the file is deleted when the route returns.

A forged request can thus cost at most one route cap of reading: 64 KiB of memory, or an
import cap of disk for MAX_STAGED_UPLOADS uploads at a time, all discarded (the signature
covers the body, so no cheaper check can refuse it). The routes speak only to the
`switchboard.api.TenantService` protocol.

    GET    /v1/health                   200 {"ok": true}
    GET    /v1/tenants                  200 {"tenants": [TenantInfo, ...]}
    POST   /v1/tenants {"name": NAME}   201 TenantInfo
    POST   /v1/tenants {"names": [NAME, ...]}
                                        201 {"tenants": [TenantInfo, ...]}: all in one
                                        transaction, or none (400/409 name the culprit)
    GET    /v1/tenants/{name}           200 TenantInfo
    POST   /v1/tenants/{name}/start     200 TenantInfo
    POST   /v1/tenants/{name}/checkpoint 200 CheckpointResult
    POST   /v1/tenants/{name}/stop      200 TenantInfo
    DELETE /v1/tenants/{name}           204
    GET    /v1/tenants/{name}/export    200 the export file (application/octet-stream, streamed;
                                        snapshots/exportfile.py), X-Switchboard-Journal-Pos
    POST   /v1/tenants/{name}/import    201 TenantInfo; body = an export file (up to
                                        max_import_bytes); 409 if it exists
    GET    /v1/tenants/{name}/logs?n=N&follow=1
                                        200 text/plain: the last N lines (default 100) of the
                                        tenant's log file (switchboard/logtail.py); with
                                        follow=1 then streams new lines until the client goes
                                        away or an hour has passed; 404 unknown tenant
    GET    /metrics                     200 Prometheus text (switchboard/metrics.py); with a
                                        `metrics_token` configured, also unsigned with
                                        `Authorization: Bearer <metrics_token>` (compared in
                                        constant time; a wrong token is checked as unsigned: 401)
    POST   /v1/dashboard/login-url      200 {"path": "/dashboard/login?token=...",
                                        "expires_in_s": 300}: a one-time dashboard login

The dashboard's own paths (`/`, `/dashboard/...`; switchboard/dashboard/) are not signed:
they are routed to the dashboard before this middleware and need its session cookie instead.

Errors are `{"error": message}`: 400 bad name or body, 401 not signed as above, 404 unknown
tenant or path, 405 wrong method, 409 exists or busy, 413 body too large, 422 export or import
failed, 503 unavailable (with Retry-After in whole seconds when the tenant may recover, or when
too many imports are being uploaded), 502 when a worker broke the control protocol, 507 when
the router cannot write (the nonce store, a staged upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.names import is_valid_name
from snapshots.durable import write_all
from switchboard import logtail
from switchboard.api import TenantService
from switchboard.dashboard import Dashboard
from switchboard.errors import (
    BadRequest,
    BadTenantName,
    MigrationRefused,
    StorageFailed,
    SwitchboardError,
    TenantBusy,
    TenantExists,
    TenantUnavailable,
    TransferFailed,
    UnknownTenant,
    WorkerError,
)
from switchboard.signing import SCHEME, AuthError, SignedHeaders, Verifier

DEFAULT_MAX_BODY_BYTES = 64 * 1024  # every route but import: a JSON object naming a tenant
DEFAULT_MAX_IMPORT_BYTES = 1 << 30  # switchboard.config.Config.max_import_bytes
MAX_STAGED_UPLOADS = 2  # imports being uploaded at once: bounds the disk a forger can fill
STAGED_BODY = "switchboard.staged_body"  # scope key: the StagedBody of an import
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOG_CONTENT_TYPE = "text/plain; charset=utf-8"


_STATUS_FOR_ERROR: list[tuple[type[SwitchboardError], int]] = [
    (BadTenantName, 400),
    (BadRequest, 400),
    (MigrationRefused, 409),
    (UnknownTenant, 404),
    (TenantExists, 409),
    (TenantBusy, 409),
    (TransferFailed, 422),
    (StorageFailed, 507),
    (TenantUnavailable, 503),
    (WorkerError, 502),
]


def check_tenant_name(name: str) -> str:
    if not is_valid_name(name):
        raise BadTenantName(name)
    return name


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- signature check, in front of everything -------------------------------------------------


# Bodies streamed to a staged file: import, and a migration's snapshot and journal tail.
_STAGED_ROUTE = re.compile(r"/v1/tenants/[^/]+/import|/v1/migrations/[^/]+/(?:snapshot|commit)")
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class StagedBody:
    """A request body streamed to a file (import), handed to the route in the scope."""

    path: Path
    size: int


class _Refused(Exception):
    """The middleware answers `status` with `message` and closes the connection."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Disconnected(Exception):
    """The client went away before its body was complete: there is nobody to answer."""


class _Body:
    """A request body being read under a cap and hashed, kept in memory or in a new file."""

    def __init__(self, cap: int, staging_dir: Path | None) -> None:
        self.cap = cap
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.memory = bytearray()
        self.path: Path | None = None
        self._fd: int | None = None
        if staging_dir is not None:
            self.path = staging_dir / f"upload-{secrets.token_hex(8)}.part"
            self._fd = os.open(self.path, _CREATE_NEW, 0o600)

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            raise _Refused(413, f"request body larger than {self.cap} bytes")
        self.sha256.update(chunk)
        if self._fd is None:
            self.memory += chunk
            return
        write_all(self._fd, chunk)

    def finish(self) -> None:
        """No more data: close the file (the route reads it by name). No fsync: the file
        only carries the body to the import, whose snapshot is what is made durable."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.finish()
        self.memory = bytearray()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


class SignatureMiddleware:
    """Pure ASGI middleware: check the signing headers, read the body under its route's cap
    while hashing it, verify the signature, then hand the body inward (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        max_body_bytes: int,
        *,
        max_import_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
        staging_dir: Callable[[], Path] | None = None,
        metrics_token: str = "",
    ) -> None:
        self.app = app
        self.metrics_bearer = f"Bearer {metrics_token}".encode() if metrics_token else b""
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.max_import_bytes = max_import_bytes
        self.staging_dir = staging_dir or (lambda: Path(tempfile.gettempdir()))
        self.staged_uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # The admin API has no WebSocket endpoints, and a handshake carries no signed body.
            await send({"type": "websocket.close", "code": 1008})
            return

        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            headers[raw_name.decode("latin-1").lower()] = raw_value.decode("latin-1")
        method: str = scope["method"]
        path_qs = _path_qs(scope)
        if self._metrics_scrape(scope, method, headers):
            await self.app(scope, receive, send)
            return

        staged = method == "POST" and _STAGED_ROUTE.fullmatch(scope["path"]) is not None
        cap = self.max_import_bytes if staged else self.max_body_bytes
        body: _Body | None = None
        holds_upload_slot = False
        try:
            try:
                signed = self.verifier.check_headers(headers)
            except AuthError as exc:
                raise _Refused(401, str(exc), {"WWW-Authenticate": SCHEME}) from None
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise _Refused(413, f"request body larger than {cap} bytes")
            if staged:
                if self.staged_uploads >= MAX_STAGED_UPLOADS:
                    raise _Refused(503, f"{MAX_STAGED_UPLOADS} imports are being uploaded; "
                                   "retry later", {"Retry-After": "5"})
                self.staged_uploads += 1
                holds_upload_slot = True
            body = await self._read_body(receive, cap, staged)
            await self._authenticate(signed, method, path_qs, body)
        except _Refused as refused:
            if body is not None:
                body.discard()
            # Connection: close, so the server stops reading whatever body is still coming.
            response = _error(refused.status, str(refused),
                              {**refused.headers, "Connection": "close"})
            await response(scope, receive, send)
            return
        except _Disconnected:
            return  # _read_body discarded what had come
        except BaseException:  # cancelled while checking: nothing of the body stays
            if body is not None:
                body.discard()
            raise
        finally:
            if holds_upload_slot:  # a forger's upload is gone by now; a signed one is checked
                self.staged_uploads -= 1

        if body.path is not None:
            scope = {**scope, STAGED_BODY: StagedBody(body.path, body.size)}
        inner_body = bytes(body.memory)
        body.memory = bytearray()
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": inner_body, "more_body": False}
            return await receive()  # after the body, only a disconnect can follow

        async def send_after_discarding(message: Message) -> None:
            # The route has read the staged file by the time it answers: the file goes
            # before the answer does, so a client never sees the answer with it still there.
            if message["type"] == "http.response.start":
                body.discard()
            await send(message)

        try:
            await self.app(scope, replay_receive,
                           send_after_discarding if body.path is not None else send)
        finally:
            body.discard()

    def _metrics_scrape(self, scope: Scope, method: str, headers: dict[str, str]) -> bool:
        """GET /metrics with the metrics bearer token, as Prometheus's `authorization`
        setting sends it: no signature needed (and no body read)."""
        if not self.metrics_bearer or method != "GET" or scope["path"] != "/metrics":
            return False
        sent = headers.get("authorization", "").encode("latin-1")  # the bytes as sent
        return hmac.compare_digest(sent, self.metrics_bearer)

    async def _read_body(self, receive: Receive, cap: int, staged: bool) -> _Body:
        """The whole body, hashed, in memory or (staged) in a new file; on any failure nothing
        of it is kept."""
        try:
            body = _Body(cap, self.staging_dir() if staged else None)
        except OSError as exc:
            raise _Refused(507, f"cannot stage the upload: {exc.strerror or exc}") from exc
        try:
            more_body = True
            while more_body:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                body.add(message.get("body", b""))
                more_body = message.get("more_body", False)
            body.finish()
        except OSError as exc:
            body.discard()
            raise _Refused(507, f"cannot stage the upload: {exc.strerror or exc}") from exc
        except BaseException:
            body.discard()
            raise
        return body

    async def _authenticate(self, signed: SignedHeaders, method: str, path_qs: bytes,
                            body: _Body) -> None:
        try:
            self.verifier.check_signature(signed, method, path_qs, body.sha256.hexdigest())
            # Durable before the route acts; the fsync runs off the event loop.
            await asyncio.to_thread(self.verifier.accept, signed)
        except AuthError as exc:
            raise _Refused(401, str(exc), {"WWW-Authenticate": SCHEME}) from None
        except StorageFailed as exc:
            raise _Refused(507, str(exc)) from None


def _path_qs(scope: Scope) -> bytes:
    """The request target as the client sent it (and signed it): raw path plus ?query."""
    raw_path = scope.get("raw_path")
    path: bytes = raw_path if raw_path else scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path


# --- routes ----------------------------------------------------------------------------------


class _Endpoints:
    def __init__(self, service: TenantService) -> None:
        self.service = service

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def metrics(self, request: Request) -> Response:
        return Response(self.service.metrics_text(), media_type=PROMETHEUS_CONTENT_TYPE)

    async def list_tenants(self, request: Request) -> Response:
        tenants = self.service.list_tenants()
        return JSONResponse({"tenants": [info.to_json() for info in tenants]})

    async def create_tenant(self, request: Request) -> Response:
        payload = json_object(await request.body(), like='{"name": "acme"}')
        names = payload.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            infos = await self.service.create_tenants(names)
            return JSONResponse({"tenants": [info.to_json() for info in infos]},
                                status_code=201)
        name = payload.get("name")
        if not isinstance(name, str):
            return _error(400, 'the body must be a JSON object like {"name": "acme"} or '
                               '{"names": ["acme", "globex"]}')
        info = await self.service.create_tenant(check_tenant_name(name))
        return JSONResponse(info.to_json(), status_code=201)

    async def get_tenant(self, request: Request) -> Response:
        info = self.service.get_tenant(_name(request))
        return JSONResponse(info.to_json())

    async def start_tenant(self, request: Request) -> Response:
        info = await self.service.start_tenant(_name(request))
        return JSONResponse(info.to_json())

    async def checkpoint_tenant(self, request: Request) -> Response:
        result = await self.service.checkpoint_tenant(_name(request))
        return JSONResponse(result.to_json())

    async def stop_tenant(self, request: Request) -> Response:
        info = await self.service.stop_tenant(_name(request))
        return JSONResponse(info.to_json())

    async def remove_tenant(self, request: Request) -> Response:
        await self.service.remove_tenant(_name(request))
        return Response(status_code=204)

    async def export_tenant(self, request: Request) -> Response:
        exported = await self.service.export_tenant(_name(request))
        return FileResponse(
            exported.path,
            media_type="application/octet-stream",
            filename=exported.filename,
            headers={"X-Switchboard-Journal-Pos": str(exported.header.get("journal_pos", ""))},
            background=BackgroundTask(_unlink_quietly, exported.path),
        )

    async def tenant_logs(self, request: Request) -> Response:
        path = self.service.log_file(_name(request))
        lines = _lines_param(request)
        if request.query_params.get("follow", "") in {"1", "true", "yes"}:
            return StreamingResponse(logtail.follow(path, lines), media_type=LOG_CONTENT_TYPE)
        return Response(b"".join(logtail.tail_lines(path, lines)), media_type=LOG_CONTENT_TYPE)

    async def import_tenant(self, request: Request) -> Response:
        staged = request.scope.get(STAGED_BODY)
        if not isinstance(staged, StagedBody) or staged.size == 0:
            return _error(400, "the body must be an export file (switchboard export)")
        info = await self.service.import_tenant(_name(request), staged.path)
        return JSONResponse(info.to_json(), status_code=201)


def _unlink_quietly(path: Any) -> None:
    # The export was streamed (or the client went away): the file is not needed any more.
    with contextlib.suppress(OSError):
        os.unlink(path)


class _BadBody(Exception):
    pass


def json_object(body: bytes, *, like: str | None = None, empty: bool = False
                ) -> dict[str, Any]:
    """A signed route's JSON object body; BadRequest (400) for anything else, naming `like`
    (an example) if given. `empty`: no body at all reads as {}. Every admin route module
    (switchboard/migration_api.py, switchboard/cluster/api.py) parses bodies with this."""
    if empty and not body:
        return {}
    try:
        payload = json.loads(body) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object" + (f" like {like}" if like else ""))
    return payload


def _lines_param(request: Request) -> int:
    raw = request.query_params.get("n", str(logtail.DEFAULT_LINES))
    if not raw.isdigit() or int(raw) > logtail.MAX_LINES:
        raise _BadBody(f"n must be a whole number from 0 to {logtail.MAX_LINES}, not {raw!r}")
    return int(raw)


def _name(request: Request) -> str:
    # Validated here, before the service sees it, so a bad name never reaches the filesystem.
    return check_tenant_name(request.path_params["name"])


# --- error mapping ---------------------------------------------------------------------------


def status_for_error(exc: Exception) -> int:
    """The HTTP status a SwitchboardError answers with (500 for anything else)."""
    return next((code for kind, code in _STATUS_FOR_ERROR if isinstance(exc, kind)), 500)


def _switchboard_error(request: Request, exc: Exception) -> Response:
    status = status_for_error(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, TenantUnavailable) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(0, math.ceil(exc.retry_after_s)))
    return _error(status, str(exc), headers)


def _bad_body(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = exc.detail
    return _error(exc.status_code, message, dict(exc.headers or {}))


def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after sending this, so the traceback still reaches the log.
    return _error(500, f"internal error: {type(exc).__name__}")


def build_admin_app(
    service: TenantService,
    verifier: Verifier,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_import_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
    staging_dir: Callable[[], Path] | None = None,
    metrics_token: str = "",
    extra_routes: Sequence[Route] = (),
) -> ASGIApp:
    """The admin API as an ASGI app, signature checking included (see the module docstring).
    `extra_routes` are mounted too (switchboard/migration_api.py).

    `staging_dir` returns the folder import bodies are streamed into (the router passes
    DataLayout.ensure_transfers_dir); by default the system's temporary folder.
    """
    endpoints = _Endpoints(service)
    dashboard = Dashboard(service)
    tenant = "/v1/tenants/{name}"
    routes = [
        Route("/v1/health", endpoints.health, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
        Route("/v1/tenants", endpoints.list_tenants, methods=["GET"]),
        Route("/v1/tenants", endpoints.create_tenant, methods=["POST"]),
        Route(tenant, endpoints.get_tenant, methods=["GET"]),
        Route(tenant, endpoints.remove_tenant, methods=["DELETE"]),
        Route(tenant + "/start", endpoints.start_tenant, methods=["POST"]),
        Route(tenant + "/checkpoint", endpoints.checkpoint_tenant, methods=["POST"]),
        Route(tenant + "/stop", endpoints.stop_tenant, methods=["POST"]),
        Route(tenant + "/export", endpoints.export_tenant, methods=["GET"]),
        Route(tenant + "/import", endpoints.import_tenant, methods=["POST"]),
        Route("/v1/dashboard/login-url", dashboard.login_url, methods=["POST"]),
        Route(tenant + "/logs", endpoints.tenant_logs, methods=["GET"]),
        *extra_routes,
    ]
    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        SwitchboardError: _switchboard_error,
        _BadBody: _bad_body,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    return dashboard.in_front_of(SignatureMiddleware(
        app, verifier, max_body_bytes, max_import_bytes=max_import_bytes,
        staging_dir=staging_dir, metrics_token=metrics_token))
