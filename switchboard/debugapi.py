"""The admin API's debugging routes (signed like every admin route; switchboard/admin.py).

    POST /v1/tenants/{name}/attach  {"user": str, "uid": int, "read_only": bool}
                                    200 {"tenant", "socket", "pid", "code_version",
                                    "breakpoint_timeout_s"}: starts the tenant if needed and
                                    holds it resident; the worker listens on "socket" (a Unix
                                    socket only the service user can open, contract/console.py)
    POST /v1/tenants/{name}/pin     {"version": str}  200 TenantInfo (restarted if running)
    POST /v1/tenants/{name}/unpin   200 TenantInfo
    POST /v1/tenants/{name}/upgrade {"to": str}  200 {"tenant", "from", "to", "restarted",
                                    "info": TenantInfo}; 422 {"error", "details"} when the
                                    shadow restore or the switch failed (details: the
                                    traceback), the tenant still on its version
    GET  /v1/code-versions          200 {"default": str|null, "versions": {name: dir}}

Errors as every admin route: 400 bad name, body or unknown version, 404 unknown tenant, 503
the tenant cannot start.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.names import is_valid_name
from switchboard.api import TenantInfo
from switchboard.errors import BadTenantName, ConfigError, UnknownCodeVersion, UpgradeFailed


class DebugService(Protocol):
    def code_versions(self) -> dict[str, Any]: ...

    async def attach(self, name: str, user: str, uid: int | None,
                     read_only: bool) -> dict[str, Any]: ...

    async def pin(self, name: str, version: str | None) -> TenantInfo: ...

    async def upgrade(self, name: str, to: str) -> dict[str, Any]: ...


def _error(status: int, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": message, **more}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw:
        return {}
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _name(request: Request) -> str:
    name = request.path_params["name"]
    if not is_valid_name(name):
        raise BadTenantName(name)
    return str(name)


def debug_routes(service: DebugService) -> list[Route]:
    tenant = "/v1/tenants/{name}"

    async def attach(request: Request) -> Response:
        name = _name(request)
        body = await _body(request)
        if body is None:
            return _error(400, 'the body must be a JSON object like {"user": "ops"}')
        uid = body.get("uid")
        try:
            answer = await service.attach(name, str(body.get("user") or "")[:64],
                                          uid if isinstance(uid, int) else None,
                                          bool(body.get("read_only")))
        except ConfigError as exc:
            return _error(400, str(exc))
        return JSONResponse(answer)

    async def pin(request: Request) -> Response:
        name = _name(request)
        body = await _body(request)
        version = None if body is None else body.get("version")
        if not isinstance(version, str) or not version:
            return _error(400, 'the body must be a JSON object like {"version": "v2"}')
        try:
            info = await service.pin(name, version)
        except UnknownCodeVersion as exc:
            return _error(400, str(exc))
        return JSONResponse(info.to_json())

    async def unpin(request: Request) -> Response:
        return JSONResponse((await service.pin(_name(request), None)).to_json())

    async def upgrade(request: Request) -> Response:
        name = _name(request)
        body = await _body(request)
        to = None if body is None else body.get("to")
        if not isinstance(to, str) or not to:
            return _error(400, 'the body must be a JSON object like {"to": "v2"}')
        try:
            return JSONResponse(await service.upgrade(name, to))
        except UnknownCodeVersion as exc:
            return _error(400, str(exc))
        except UpgradeFailed as exc:
            return _error(422, str(exc), details=exc.details)

    async def code_versions(request: Request) -> Response:
        return JSONResponse(service.code_versions())

    return [
        Route(tenant + "/attach", attach, methods=["POST"]),
        Route(tenant + "/pin", pin, methods=["POST"]),
        Route(tenant + "/unpin", unpin, methods=["POST"]),
        Route(tenant + "/upgrade", upgrade, methods=["POST"]),
        Route("/v1/code-versions", code_versions, methods=["GET"]),
    ]
