"""The Dabble demo's HTTP API (runs in the tenant worker, mounted at root_path `/t/<tenant>`).

    GET    /                                    the HTML page (examples/dabble/page.py)
    GET    /api/tables                          {"tables": [{"name", "count"}]}
    POST   /api/tables/{table}/records          JSON object -> 201 record (table made on first use)
    GET    /api/tables/{table}/records          ?offset=0&limit=100 (<= 1000) -> records, total
    GET    /api/tables/{table}/records/{id}     200 record, 404 when missing
    PATCH  /api/tables/{table}/records/{id}     shallow merge (null removes a field) -> 200 record
    DELETE /api/tables/{table}/records/{id}     204
    POST   /login                               {"user": NAME} -> 200 {"user"}, cookie sb_session
    POST   /logout                              200 {"ok": true}, cookie cleared
    GET    /api/me                              {"user"}, or 401 {"error": "not logged in"}
    and the routes in examples/dabble/diagnostics.py (/api/worker, /api/blob, /api/upload,
    /ws/echo).

A record is `{"id", "fields", "created_at", "updated_at"}`. Every error is `{"error": message}`:
400 for bad input (bad JSON, bad table name, bad paging), 404 for a missing record or route,
405 for a wrong method, 413 for a JSON body over 1 MiB. Writes go through the tenant's commands,
so a 2xx answer to a write means the change is journaled and durable.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from examples.dabble import commands, diagnostics, page
from examples.dabble.validation import TABLE_NAME_RE, check_table_name
from tenant import CommandRejected, NotFound, current

SESSION_COOKIE = "sb_session"
MAX_JSON_BYTES = 1 << 20
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_DIGITS = re.compile(r"[0-9]{1,18}")


async def read_json(request: Request, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The request body parsed as JSON; CommandRejected (400 or 413) when it is not."""
    too_large = CommandRejected(f"request body is larger than {max_bytes} bytes", status=413)
    declared = request.headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if not body:
        raise CommandRejected("expected a JSON body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise CommandRejected(f"request body is not valid JSON: {exc}") from exc


def query_int(request: Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else -1
    if value < 0 or (maximum is not None and value > maximum):
        bound = f"from 0 to {maximum}" if maximum is not None else "of 0 or more"
        raise CommandRejected(f"{name} must be an integer {bound}, not {raw!r}")
    return value


def path_record_id(request: Request) -> tuple[str, int]:
    table = check_table_name(request.path_params["table"])
    raw = request.path_params["id"]
    if _DIGITS.fullmatch(raw) is None:
        raise NotFound(f"no record {raw!r} in table {table!r}: record ids are integers")
    return table, int(raw)


def cookie_path(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path or "/"


def session_user(request: Request) -> str | None:
    return commands.session_user(current().state, request.cookies.get(SESSION_COOKIE))


# --- endpoints ---------------------------------------------------------------------------


async def homepage(request: Request) -> Response:
    context = current()
    root: str = request.scope.get("root_path", "")
    table = request.query_params.get("table") or None
    notice = None
    if table is not None and TABLE_NAME_RE.fullmatch(table) is None:
        notice, table = f"No table can be named {table!r}.", None
    raw_offset = request.query_params.get("offset", "0")
    offset = int(raw_offset) if _DIGITS.fullmatch(raw_offset) else 0
    records: list[dict[str, Any]] = []
    total = 0
    if table is not None:
        records, total = commands.list_records(context.state, table, offset, page.PAGE_SIZE)
    view = page.PageView(
        root=root.rstrip("/"),
        tenant=context.tenant,
        nonce=secrets.token_urlsafe(16),
        user=session_user(request),
        tables=commands.list_tables(context.state),
        table=table,
        records=records,
        total=total,
        offset=offset,
        notice=notice,
    )
    return HTMLResponse(page.render_page(view), headers=page.security_headers(view.nonce))


async def get_tables(request: Request) -> Response:
    return JSONResponse({"tables": commands.list_tables(current().state)})


async def create_record(request: Request) -> Response:
    table = check_table_name(request.path_params["table"])
    fields = await read_json(request)
    record = await current().execute("create_record", table=table, fields=fields)
    return JSONResponse(record, status_code=201)


async def list_records(request: Request) -> Response:
    table = check_table_name(request.path_params["table"])
    offset = query_int(request, "offset", 0)
    limit = query_int(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    records, total = commands.list_records(current().state, table, offset, limit)
    return JSONResponse({"records": records, "total": total})


async def get_record(request: Request) -> Response:
    table, record_id = path_record_id(request)
    return JSONResponse(commands.get_record(current().state, table, record_id))


async def update_record(request: Request) -> Response:
    table, record_id = path_record_id(request)
    fields = await read_json(request)
    record = await current().execute("update_record", table=table, id=record_id, fields=fields)
    return JSONResponse(record)


async def delete_record(request: Request) -> Response:
    table, record_id = path_record_id(request)
    await current().execute("delete_record", table=table, id=record_id)
    return Response(status_code=204)


async def login(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict) or "user" not in body:
        raise CommandRejected('expected a JSON object {"user": NAME}')
    user = body["user"]
    previous = request.cookies.get(SESSION_COOKIE)
    had_session = session_user(request) is not None
    session_id = secrets.token_urlsafe(32)
    await current().execute("login", user=user, session_id=session_id)
    if had_session and previous is not None:
        with contextlib.suppress(NotFound):  # a concurrent logout got there first
            await current().execute("logout", session_id=previous)
    response = JSONResponse({"user": user})
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        path=cookie_path(request),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is not None and session_user(request) is not None:
        with contextlib.suppress(NotFound):
            await current().execute("logout", session_id=session_id)
    response = JSONResponse({"ok": True})
    response.delete_cookie(
        SESSION_COOKIE,
        path=cookie_path(request),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def me(request: Request) -> Response:
    user = session_user(request)
    if user is None:
        return JSONResponse({"error": "not logged in"}, status_code=401)
    return JSONResponse({"user": user})


async def records(request: Request) -> Response:
    if request.method == "POST":
        return await create_record(request)
    return await list_records(request)


async def record(request: Request) -> Response:
    if request.method == "PATCH":
        return await update_record(request)
    if request.method == "DELETE":
        return await delete_record(request)
    return await get_record(request)


# --- errors and the app ------------------------------------------------------------------


async def command_rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommandRejected)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def build_asgi() -> Starlette:
    routes = [
        Route("/", homepage, methods=["GET"]),
        Route("/api/tables", get_tables, methods=["GET"]),
        Route("/api/tables/{table}/records", records, methods=["GET", "POST"]),
        Route("/api/tables/{table}/records/{id}", record, methods=["GET", "PATCH", "DELETE"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/worker", diagnostics.worker, methods=["GET"]),
        Route("/api/blob", diagnostics.blob, methods=["GET"]),
        Route("/api/upload", diagnostics.upload, methods=["POST"]),
        WebSocketRoute("/ws/echo", diagnostics.ws_echo),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={CommandRejected: command_rejected, HTTPException: http_error},
    )
