"""The dashboard's routes (switchboard/dashboard has the overview): sign-in, pages, the JSON
the page polls, and the actions, all behind the session cookie; POSTs behind its CSRF token."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.names import is_valid_name
from switchboard import logtail
from switchboard.api import TenantService
from switchboard.dashboard.render import (
    ACTIONS,
    HOME,
    SIGNIN,
    Listing,
    escape,
    header_cell,
    layout,
    pager,
    rows_html,
    status_html,
)
from switchboard.dashboard.sessions import LOGIN_TOKEN_TTL_S, SESSION_TTL_S, Session, Sessions
from switchboard.errors import SwitchboardError

MAX_FORM_BYTES = 4096
LOG_TAIL_LINES = 40  # on a tenant's page, refreshed with its fields
COOKIE = "sb_dashboard"
# Cookies are per host, not per port: a cookie for `/` would also go with the operator's
# requests to the router's port on the same host, and so reach tenants' apps. Under
# /dashboard it never does: tenants live under /t/ (path mode) or on hosts of their own.
COOKIE_PATH = "/dashboard"
STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login URL's token must not leak onwards
    "Cache-Control": "no-store",
}


class _Forbidden(Exception):
    pass


class Dashboard:
    """The dashboard's routes and its sessions; `login_url` is mounted on the signed API."""

    def __init__(self, service: TenantService, sessions: Sessions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.sessions = sessions or Sessions()
        self.clock = clock  # wall time, for "12 s ago" against TenantInfo's Unix times
        routes = [
            Route("/", self.home, methods=["GET"]),
            Route(HOME, self.index, methods=["GET"]),
            Route("/dashboard/rows", self.rows, methods=["GET"]),
            Route("/dashboard/t/{name}", self.tenant_page, methods=["GET"]),
            Route("/dashboard/t/{name}/fields", self.tenant_fields, methods=["GET"]),
            Route("/dashboard/t/{name}/{action}", self.act, methods=["POST"]),
            Route("/dashboard/logout", self.logout, methods=["POST"]),
            Route("/dashboard/login", self.login, methods=["GET"]),
            Route("/dashboard/signin", self.signin, methods=["GET"]),
            Route("/dashboard/static/{file}", self.static, methods=["GET"]),
            Route("/favicon.ico", self.favicon, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={
            _Forbidden: _forbidden, SwitchboardError: self._service_error,
            HTTPException: _http_error,
        })

    def in_front_of(self, signed_api: ASGIApp) -> ASGIApp:
        """An ASGI app sending the dashboard's paths here and every other to `signed_api`."""
        dashboard = self.app

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and (path in ("/", "/favicon.ico")
                                            or path.startswith("/dashboard/")):
                await dashboard(scope, receive, send)
            else:
                await signed_api(scope, receive, send)

        return dispatch

    # the signed route, on the admin API

    async def login_url(self, request: Request) -> Response:
        token = self.sessions.issue_login_token()
        return JSONResponse({"path": f"/dashboard/login?token={token}",
                             "expires_in_s": LOGIN_TOKEN_TTL_S})

    # signing in and out

    async def login(self, request: Request) -> Response:
        cookie = self.sessions.redeem(request.query_params.get("token", ""))
        if cookie is None:
            return _page(layout("Switchboard · sign in", SIGNIN.format(
                lead="This login link was already used, has expired or is not valid.")), 403)
        response = RedirectResponse(HOME, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, cookie, max_age=int(SESSION_TTL_S), path=COOKIE_PATH,
                            httponly=True, samesite="strict")
        return response

    async def signin(self, request: Request) -> Response:
        return _page(layout("Switchboard · sign in", SIGNIN.format(
            lead="You are not signed in to this dashboard.")))

    async def logout(self, request: Request) -> Response:
        await self._posted(request)
        self.sessions.end(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/dashboard/signin", status_code=303,
                                    headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    # pages

    async def home(self, request: Request) -> Response:
        # The cookie is not sent to `/` (COOKIE_PATH), so this cannot tell who is signed in.
        return RedirectResponse(HOME, status_code=303, headers=SECURITY_HEADERS)

    async def index(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _to_signin()
        listing = Listing.from_query(request)
        tenants = self.service.list_tenants()
        shown, pages = listing.slice(tenants)
        heads = "".join(header_cell(listing, key, label) for key, label in [
            ("name", "Tenant"), ("state", "State"), ("memory", "Memory"),
            ("request", "Last request"), ("snapshot", "Snapshot age")])
        body = (f'<h1>Tenants</h1>{pager(listing, pages, len(tenants))}'
                f'<table class="tenants" data-poll="/dashboard/rows{escape(listing.query())}">'
                f'<thead><tr>{heads}<th>Actions</th></tr></thead>'
                f'<tbody id="rows">{rows_html(shown, session.csrf, self.clock())}</tbody></table>')
        return _page(layout("Switchboard · tenants", body, session.csrf))

    async def rows(self, request: Request) -> Response:
        session = self._session(request)
        listing = Listing.from_query(request)
        tenants = self.service.list_tenants()
        shown, pages = listing.slice(tenants)
        return _json({"html": rows_html(shown, session.csrf, self.clock()),
                      "total": len(tenants), "pages": pages})

    async def tenant_page(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _to_signin()
        info = self.service.get_tenant(_name(request))
        log_tail = self._log_tail(info.name)
        name = quote(info.name)
        body = (f'<p class="crumbs"><a href="{HOME}">All tenants</a> &rsaquo; '
                f"{escape(info.name)}</p>"
                f'<h1>{escape(info.name)} <span class="badge {escape(info.state)}">'
                f"{escape(info.state)}</span></h1>"
                f'<section id="status" data-poll="/dashboard/t/{name}/fields">'
                f"{status_html(info, session.csrf, self.clock(), log_tail)}</section>")
        return _page(layout(f"Switchboard · {info.name}", body, session.csrf))

    async def tenant_fields(self, request: Request) -> Response:
        session = self._session(request)
        info = self.service.get_tenant(_name(request))
        html = status_html(info, session.csrf, self.clock(), self._log_tail(info.name))
        return _json({"html": html, "state": info.state})

    # actions

    async def act(self, request: Request) -> Response:
        await self._posted(request)
        name = _name(request)
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404)
        if action == "checkpoint":
            result = await self.service.checkpoint_tenant(name)
            done = (f"{name}: snapshot generation {result.generation} written" if result.changed
                    else f"{name}: nothing changed since the last snapshot")
        elif action == "stop":
            info = await self.service.stop_tenant(name)
            done = f"{name}: {info.state}"
        else:
            info = await self.service.start_tenant(name)
            done = f"{name}: {info.state}"
        if "application/json" in request.headers.get("accept", ""):
            return _json({"message": done})
        # Without the script a form posted here; pages send no Referer (SECURITY_HEADERS).
        return RedirectResponse(HOME, status_code=303, headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        file = request.path_params["file"]
        if file not in STATIC_FILES:
            raise HTTPException(404)
        return FileResponse(STATIC_DIR / file, media_type=STATIC_FILES[file],
                            headers=SECURITY_HEADERS)

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204, headers=SECURITY_HEADERS)  # browsers ask; none here

    def _log_tail(self, name: str) -> list[bytes]:
        # A bounded read from the file's end (switchboard/logtail.py), as the logs route does.
        return logtail.tail_lines(self.service.log_file(name), LOG_TAIL_LINES)

    # checks

    def _session(self, request: Request) -> Session:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise _Forbidden("not signed in: run `switchboard dashboard` for a login URL")
        return session

    async def _posted(self, request: Request) -> dict[str, list[str]]:
        """The form of a POST from a signed-in page carrying its session's CSRF token."""
        session = self._session(request)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise HTTPException(413, f"request body larger than {MAX_FORM_BYTES} bytes")
        form = parse_qs(body.decode("latin-1"))
        sent = request.headers.get("x-csrf-token") or (form.get("csrf") or [""])[0]
        if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
            raise _Forbidden("missing or wrong CSRF token: reload the dashboard and try again")
        return form

    def _service_error(self, request: Request, exc: Exception) -> Response:
        from switchboard.admin import status_for_error

        return _message(status_for_error(exc), str(exc), request)



def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not is_valid_name(name):
        raise HTTPException(404, f"no tenant named {name!r}")
    return name


def _page(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _json(value: dict[str, Any]) -> JSONResponse:
    return JSONResponse(value, headers=SECURITY_HEADERS)


def _to_signin() -> Response:
    return RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)


def _message(status: int, message: str, request: Request) -> Response:
    if request.method == "GET" and "application/json" not in request.headers.get("accept", ""):
        body = f'<section class="signin"><h1>{status}</h1><p>{escape(message)}</p></section>'
        return _page(layout("Switchboard", body), status)
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _forbidden(request: Request, exc: Exception) -> Response:
    return _message(403, str(exc), request)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _message(exc.status_code, str(exc.detail), request)
