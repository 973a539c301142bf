"""A tenant app that writes to its output, for the per-tenant log tests (tests/test_tenant_logs.py).

Routes (relative to the tenant's root path):
  GET /say?text=T        print(T), logs "logged T" at info, and writes "raw T" to fd 2
                         with os.write (a C-level write, no Python buffering) -> 200 "ok"
  GET /spam?n=N&size=S   prints N lines of S characters each -> 200 "ok"
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tenant import TenantApp

log = logging.getLogger("chatty")

app = TenantApp(name="chatty", initial_state=dict, app_version="test-1")


async def say(request: Request) -> PlainTextResponse:
    text = request.query_params.get("text", "")
    print(text)
    log.info("logged %s", text)
    os.write(2, f"raw {text}\n".encode())
    return PlainTextResponse("ok")


async def spam(request: Request) -> PlainTextResponse:
    lines = int(request.query_params.get("n", "10"))
    size = int(request.query_params.get("size", "100"))
    for i in range(lines):
        print(f"{i:06d} " + "x" * size)
    return PlainTextResponse("ok")


app.asgi = Starlette(routes=[Route("/say", say), Route("/spam", spam)])
