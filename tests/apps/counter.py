"""A minimal tenant app: one counter, for lifecycle tests that need a fast, tiny worker.

SWITCHBOARD_TEST_BOOT_FAIL_TENANTS (comma-separated tenant names) makes `initial_state` raise
for those tenants only, so one tenant fails to boot while the others on the router serve.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp


def initial_state() -> dict[str, Any]:
    return {"count": 0}


app = TenantApp(name="counter", initial_state=initial_state, app_version="test-1")


@app.command()
def add(state: dict[str, Any], now: float, amount: int) -> int:
    if not isinstance(amount, int):
        raise tenant.CommandRejected("amount must be an integer")
    state["count"] += amount
    return int(state["count"])


async def get_count(request: Request) -> JSONResponse:
    ctx = tenant.current()
    return JSONResponse({"count": ctx.state["count"], "pid": ctx.pid})


async def post_add(request: Request) -> JSONResponse:
    body = await request.json()
    count = await tenant.current().execute("add", amount=body.get("amount", 1))
    return JSONResponse({"count": count}, status_code=201)


app.asgi = Starlette(routes=[Route("/count", get_count), Route("/add", post_add, methods=["POST"])])

if tenant_names := os.environ.get("SWITCHBOARD_TEST_BOOT_FAIL_TENANTS"):
    _original = app.initial_state

    def _failing_initial_state() -> dict[str, Any]:
        current = os.environ.get("SWITCHBOARD_TEST_CURRENT_TENANT", "")
        raise RuntimeError(f"boot failure injected for {current}")

    app.initial_state = _failing_initial_state
