"""The operator dashboard: server-rendered HTML on the admin listener, behind a session cookie.

Signing in (Jupyter's token URL is the model): `switchboard dashboard` makes a signed
`POST /v1/dashboard/login-url`, which answers `{"path": "/dashboard/login?token=T",
"expires_in_s": 300}`; the CLI prints its admin URL plus that path. Opening it once redeems
the token (single use, LOGIN_TOKEN_TTL_S; a used, expired or unknown one gets 403) for a
session: an HttpOnly, SameSite=Strict cookie `sb_dashboard`, and a redirect to `/`.

The dashboard's own routes are not HMAC-signed (a browser cannot sign); `Dashboard.in_front_of`
sends `/`, `/favicon.ico` and `/dashboard/...` here and everything else on to the signed admin API:

    GET  /                                 the tenant list, one page
                                           (?page=N&sort=KEY&order=asc|desc)
    GET  /dashboard/rows                   the same page's rows as {"html", "total", "pages"},
                                           polled every 2 s by the page's script
    GET  /dashboard/t/{name}               one tenant: every TenantInfo field, with the actions
    GET  /dashboard/t/{name}/fields        that page's fields as {"html"}, polled the same way
    POST /dashboard/t/{name}/{action}      action = checkpoint | stop | start, through the same
                                           TenantService as the signed routes
    POST /dashboard/logout                 ends the session
    GET  /dashboard/login?token=T          redeems a login token (above)
    GET  /dashboard/signin                 says to run `switchboard dashboard`
    GET  /dashboard/static/{file}          the stylesheet and the script
    GET  /favicon.ico                      204 (browsers ask for it)

Without a valid session a page redirects to /dashboard/signin and anything else gets 403.
Every POST must carry the session's CSRF token, as the form field `csrf` or the header
`X-CSRF-Token` (the page holds it; a cross-site form cannot read it): without it, 403.
POST bodies are read under MAX_FORM_BYTES (413 beyond). Pages are paginated server-side
(PAGE_SIZE rows) so a host with 10,000 tenants renders 100 rows, not 10,000.
"""

from __future__ import annotations

import html
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.names import is_valid_name
from switchboard.api import TenantInfo, TenantService
from switchboard.errors import SwitchboardError

LOGIN_TOKEN_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0
MAX_PENDING_TOKENS = 32  # bounds what a flood of signed login-url calls can hold
MAX_SESSIONS = 64
MAX_FORM_BYTES = 4096
PAGE_SIZE = 100
POLL_INTERVAL_MS = 2000
COOKIE = "sb_dashboard"
STATIC_DIR = Path(__file__).with_name("dashboard_static")
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
ACTIONS = ("checkpoint", "stop", "start")
SORT_KEYS = {
    "name": "name", "state": "state", "memory": "rss_bytes",
    "request": "last_request_at", "snapshot": "last_checkpoint_at",
}  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login URL's token must not leak onwards
    "Cache-Control": "no-store",
}


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    csrf: str
    expires_at: float


class Sessions:
    """One-time login tokens and the sessions they open, in memory (a router restart signs
    everyone out). Both are bounded: the oldest goes first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[str, float] = {}  # token -> expires at
        self._sessions: dict[str, Session] = {}  # cookie value -> session

    def issue_login_token(self) -> str:
        self._drop_expired()
        while len(self._tokens) >= MAX_PENDING_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = self.clock() + LOGIN_TOKEN_TTL_S
        return token

    def redeem(self, token: str) -> str | None:
        """A new session's cookie value for a live token (which is then spent), else None."""
        expires_at = self._tokens.pop(token, None)
        if expires_at is None or expires_at <= self.clock():
            return None
        self._drop_expired()
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        cookie = secrets.token_urlsafe(32)
        self._sessions[cookie] = Session(secrets.token_urlsafe(32), self.clock() + SESSION_TTL_S)
        return cookie

    def get(self, cookie: str | None) -> Session | None:
        session = self._sessions.get(cookie) if cookie else None
        if session is None or session.expires_at <= self.clock():
            return None
        return session

    def end(self, cookie: str) -> None:
        self._sessions.pop(cookie, None)

    def _drop_expired(self) -> None:
        now = self.clock()
        self._tokens = {t: at for t, at in self._tokens.items() if at > now}
        self._sessions = {c: s for c, s in self._sessions.items() if s.expires_at > now}


# --- formatting -------------------------------------------------------------------------------


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = max(0, int(now - when))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _field_text(name: str, value: Any, now: float) -> str:
    if value is None or value == []:
        return "-"
    if name.endswith("_at") and isinstance(value, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        return f"{_ago(value, now)} ({stamp})"
    if name == "rss_bytes":
        return _bytes(value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Listing:
    """One page of the tenant list, as asked for in the query string (bad values: defaults)."""

    page: int
    sort: str
    descending: bool

    @classmethod
    def from_query(cls, request: Request) -> Listing:
        sort = request.query_params.get("sort", "name")
        page = request.query_params.get("page", "1")
        return cls(int(page) if page.isdigit() and int(page) > 0 else 1,
                   sort if sort in SORT_KEYS else "name",
                   request.query_params.get("order") == "desc")

    def query(self, **changes: Any) -> str:
        values = {"page": self.page, "sort": self.sort,
                  "order": "desc" if self.descending else "asc", **changes}
        return "?" + urlencode(values)

    def slice(self, tenants: list[TenantInfo]) -> tuple[list[TenantInfo], int]:
        """This page's tenants, sorted (no value sorts last either way), and the page count."""
        attr = SORT_KEYS[self.sort]
        known = [t for t in tenants if getattr(t, attr) is not None]
        unknown = [t for t in tenants if getattr(t, attr) is None]
        known.sort(key=lambda t: (getattr(t, attr), t.name), reverse=self.descending)
        ordered = known + unknown
        pages = max(1, math.ceil(len(ordered) / PAGE_SIZE))
        page = min(self.page, pages)
        return ordered[(page - 1) * PAGE_SIZE: page * PAGE_SIZE], pages


# --- HTML -------------------------------------------------------------------------------------


def _layout(title: str, body: str, csrf: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{_e(csrf)}">
<title>{_e(title)}</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script>
</head><body>
<header><a class="brand" href="/">Switchboard</a>{_logout(csrf)}</header>
<main>{body}</main>
<div id="message" role="status" hidden></div>
</body></html>"""


def _logout(csrf: str) -> str:
    if not csrf:
        return ""
    return ('<form class="logout" method="post" action="/dashboard/logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<button type="submit" class="link">Sign out</button></form>')


def _actions(name: str, state: str, csrf: str) -> str:
    forms = []
    for action in ACTIONS:
        disabled = ((action == "start" and state in ("running", "starting"))
                    or (action in ("stop", "checkpoint") and state != "running"))
        forms.append(
            f'<form method="post" action="/dashboard/t/{quote(name)}/{action}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<button type="submit" class="{action}"{" disabled" if disabled else ""}>'
            f"{action}</button></form>")
    return f'<div class="actions">{"".join(forms)}</div>'


def _rows(tenants: list[TenantInfo], csrf: str, now: float) -> str:
    if not tenants:
        return '<tr><td colspan="6" class="empty">No tenants yet.</td></tr>'
    return "".join(
        f'<tr data-name="{_e(t.name)}">'
        f'<td class="name"><a href="/dashboard/t/{quote(t.name)}">{_e(t.name)}</a></td>'
        f'<td class="state"><span class="badge {_e(t.state)}">{_e(t.state)}</span></td>'
        f'<td class="memory num">{_bytes(t.rss_bytes)}</td>'
        f'<td class="request">{_ago(t.last_request_at, now)}</td>'
        f'<td class="snapshot">{_ago(t.last_checkpoint_at, now)}</td>'
        f"<td>{_actions(t.name, t.state, csrf)}</td></tr>"
        for t in tenants)


def _header_cell(listing: Listing, key: str, label: str) -> str:
    descending = not listing.descending if listing.sort == key else False
    arrow = ""
    if listing.sort == key:
        arrow = " ▼" if listing.descending else " ▲"
    query = listing.query(sort=key, order="desc" if descending else "asc", page=1)
    return f'<th><a href="/{query}" class="sort">{label}{arrow}</a></th>'


def _pager(listing: Listing, pages: int, total: int) -> str:
    page = min(listing.page, pages)
    previous = (f'<a href="/{listing.query(page=page - 1)}" rel="prev">&lsaquo; previous</a>'
                if page > 1 else '<span class="off">&lsaquo; previous</span>')
    following = (f'<a href="/{listing.query(page=page + 1)}" rel="next">next &rsaquo;</a>'
                 if page < pages else '<span class="off">next &rsaquo;</span>')
    return (f'<nav class="pager">{previous}<span class="where">page {page} of {pages}'
            f' · {total} tenants</span>{following}</nav>')


def _fields(info: TenantInfo, now: float) -> str:
    rows = "".join(
        f'<dt>{_e(f.name)}</dt><dd data-field="{_e(f.name)}">'
        f"{_e(_field_text(f.name, getattr(info, f.name), now))}</dd>"
        for f in fields(info))
    return f'<dl class="fields">{rows}</dl>'


def _status(info: TenantInfo, csrf: str, now: float) -> str:
    """A tenant page's live part: its actions (enabled by state) and every field."""
    return _actions(info.name, info.state, csrf) + _fields(info, now)


# --- routes -----------------------------------------------------------------------------------


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
            Route("/", self.index, methods=["GET"]),
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
            return _page(_layout("Switchboard · sign in", _SIGNIN.format(
                lead="This login link was already used, has expired or is not valid.")), 403)
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, cookie, max_age=int(SESSION_TTL_S), path="/",
                            httponly=True, samesite="strict")
        return response

    async def signin(self, request: Request) -> Response:
        return _page(_layout("Switchboard · sign in", _SIGNIN.format(
            lead="You are not signed in to this dashboard.")))

    async def logout(self, request: Request) -> Response:
        await self._posted(request)
        self.sessions.end(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/dashboard/signin", status_code=303,
                                    headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # pages

    async def index(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _to_signin()
        listing = Listing.from_query(request)
        tenants = self.service.list_tenants()
        shown, pages = listing.slice(tenants)
        heads = "".join(_header_cell(listing, key, label) for key, label in [
            ("name", "Tenant"), ("state", "State"), ("memory", "Memory"),
            ("request", "Last request"), ("snapshot", "Snapshot age")])
        body = (f'<h1>Tenants</h1>{_pager(listing, pages, len(tenants))}'
                f'<table class="tenants" data-poll="/dashboard/rows{_e(listing.query())}">'
                f'<thead><tr>{heads}<th>Actions</th></tr></thead>'
                f'<tbody id="rows">{_rows(shown, session.csrf, self.clock())}</tbody></table>')
        return _page(_layout("Switchboard · tenants", body, session.csrf))

    async def rows(self, request: Request) -> Response:
        session = self._session(request)
        listing = Listing.from_query(request)
        tenants = self.service.list_tenants()
        shown, pages = listing.slice(tenants)
        return _json({"html": _rows(shown, session.csrf, self.clock()),
                      "total": len(tenants), "pages": pages})

    async def tenant_page(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _to_signin()
        info = self.service.get_tenant(_name(request))
        name = quote(info.name)
        body = (f'<p class="crumbs"><a href="/">All tenants</a> &rsaquo; {_e(info.name)}</p>'
                f'<h1>{_e(info.name)} <span class="badge {_e(info.state)}">'
                f"{_e(info.state)}</span></h1>"
                f'<section id="status" data-poll="/dashboard/t/{name}/fields">'
                f"{_status(info, session.csrf, self.clock())}</section>")
        return _page(_layout(f"Switchboard · {info.name}", body, session.csrf))

    async def tenant_fields(self, request: Request) -> Response:
        session = self._session(request)
        info = self.service.get_tenant(_name(request))
        return _json({"html": _status(info, session.csrf, self.clock()), "state": info.state})

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
        return RedirectResponse(request.headers.get("referer") or "/", status_code=303,
                                headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        file = request.path_params["file"]
        if file not in STATIC_FILES:
            raise HTTPException(404)
        return FileResponse(STATIC_DIR / file, media_type=STATIC_FILES[file],
                            headers=SECURITY_HEADERS)

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204, headers=SECURITY_HEADERS)  # browsers ask; none here

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


_SIGNIN = """<section class="signin"><h1>Sign in</h1><p>{lead}</p>
<p>Run <code>switchboard dashboard</code> on the host (with the admin key) and open the
one-time login URL it prints.</p></section>"""


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
        body = f'<section class="signin"><h1>{status}</h1><p>{_e(message)}</p></section>'
        return _page(_layout("Switchboard", body), status)
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _forbidden(request: Request, exc: Exception) -> Response:
    return _message(403, str(exc), request)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _message(exc.status_code, str(exc.detail), request)
