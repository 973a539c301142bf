"""The admin API: a JSON HTTP API on its own listener, every request HMAC-signed.

`build_admin_app(service, verifier)` returns an ASGI app. Requests pass through
`SignatureMiddleware` first, whatever their path: it reads the whole body (at most
`max_body_bytes`, else 413), checks the signature with `switchboard.signing.Verifier` (401 with
`{"error": "<which check failed>: <detail>"}` otherwise), then hands the buffered body to the
routes below. The routes speak only to the `switchboard.api.TenantService` protocol.

    GET    /v1/health                   200 {"ok": true}
    GET    /v1/tenants                  200 {"tenants": [TenantInfo, ...]}
    POST   /v1/tenants {"name": NAME}   201 TenantInfo
    GET    /v1/tenants/{name}           200 TenantInfo
    POST   /v1/tenants/{name}/start     200 TenantInfo
    POST   /v1/tenants/{name}/checkpoint 200 CheckpointResult
    POST   /v1/tenants/{name}/stop      200 TenantInfo
    DELETE /v1/tenants/{name}           204
    GET    /v1/tenants/{name}/export    200 the export file (application/octet-stream, streamed;
                                        snapshots/exportfile.py), X-Switchboard-Journal-Pos
    POST   /v1/tenants/{name}/import    201 TenantInfo; body = an export file; 409 if it exists
    GET    /metrics                     200 Prometheus text

Errors are `{"error": message}`: 400 bad name or body, 404 unknown tenant or path, 405 wrong
method, 409 exists or busy, 413 body too large, 422 export or import failed, 503 unavailable
(with Retry-After in whole seconds when the tenant may recover), 502 when a worker broke the
control protocol.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.names import is_valid_name
from switchboard.api import TenantService
from switchboard.errors import (
    BadTenantName,
    StorageFailed,
    SwitchboardError,
    TenantBusy,
    TenantExists,
    TenantUnavailable,
    TransferFailed,
    UnknownTenant,
    WorkerError,
)
from switchboard.signing import SCHEME, AuthError, Verifier

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_STATUS_FOR_ERROR: list[tuple[type[SwitchboardError], int]] = [
    (BadTenantName, 400),
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


class SignatureMiddleware:
    """Pure ASGI middleware: buffer the body, verify the signature, replay the body inward.

    The body must be read before the app runs because the signature covers its digest; the
    size cap keeps an unauthenticated client from making the server buffer without limit.
    """

    def __init__(self, app: ASGIApp, verifier: Verifier, max_body_bytes: int) -> None:
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

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

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; there is nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        body = b"".join(chunks)

        try:
            self.verifier.verify(scope["method"], _path_qs(scope), headers, body)
        except AuthError as exc:
            response = _error(401, str(exc), {"WWW-Authenticate": SCHEME})
            await response(scope, receive, send)
            return

        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body, only a disconnect can follow

        await self.app(scope, replay_receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(
            413, f"request body larger than {self.max_body_bytes} bytes",
            {"Connection": "close"},
        )
        await response(scope, receive, send)


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
        payload = _json_object(await request.body())
        name = payload.get("name")
        if not isinstance(name, str):
            return _error(400, 'the body must be a JSON object like {"name": "acme"}')
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

    async def import_tenant(self, request: Request) -> Response:
        body = await request.body()
        if not body:
            return _error(400, "the body must be an export file (switchboard export)")
        info = await self.service.import_tenant(_name(request), body)
        return JSONResponse(info.to_json(), status_code=201)


def _unlink_quietly(path: Any) -> None:
    # The export was streamed (or the client went away): the file is not needed any more.
    with contextlib.suppress(OSError):
        os.unlink(path)


class _BadBody(Exception):
    pass


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadBody(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _BadBody('the body must be a JSON object like {"name": "acme"}')
    return payload


def _name(request: Request) -> str:
    # Validated here, before the service sees it, so a bad name never reaches the filesystem.
    return check_tenant_name(request.path_params["name"])


# --- error mapping ---------------------------------------------------------------------------


def _switchboard_error(request: Request, exc: Exception) -> Response:
    status = next((code for kind, code in _STATUS_FOR_ERROR if isinstance(exc, kind)), 500)
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
) -> ASGIApp:
    """The admin API as an ASGI app, signature checking included (see the module docstring)."""
    endpoints = _Endpoints(service)
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
    ]
    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        SwitchboardError: _switchboard_error,
        _BadBody: _bad_body,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    return SignatureMiddleware(app, verifier, max_body_bytes)
