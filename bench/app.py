"""The apps the benchmarks run, and the states they restore.

`app` is the tenant app the bench's routers serve (`--app bench.app:app`): one tiny JSON route,
a counter command to make a tenant dirty, and a `records` table that the big-state cases fill.
`UVICORN_APP_SOURCE` is the same tiny route as a plain Starlette app, written to a temp dir and
started with `python -m uvicorn` as the fresh-interpreter baseline.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp

SCHEMA_VERSION = 1
APP_VERSION = "bench-1"
HELLO = {"hello": "world"}


def initial_state() -> dict[str, Any]:
    return {"count": 0, "records": []}


app = TenantApp(name="bench", initial_state=initial_state, schema_version=SCHEMA_VERSION,
                app_version=APP_VERSION)


@app.command()
def add(state: dict[str, Any], now: float, amount: int = 1) -> int:
    state["count"] += amount
    return int(state["count"])


async def hello(request: Request) -> JSONResponse:
    return JSONResponse(HELLO)


async def count(request: Request) -> JSONResponse:
    state = tenant.current().state
    return JSONResponse({"count": state["count"], "records": len(state["records"])})


async def post_add(request: Request) -> JSONResponse:
    return JSONResponse({"count": await tenant.current().execute("add", amount=1)}, status_code=201)


app.asgi = Starlette(routes=[
    Route("/hello", hello), Route("/count", count), Route("/add", post_add, methods=["POST"]),
])

UVICORN_APP_SOURCE = '''
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request):
    return JSONResponse({"hello": "world"})


app = Starlette(routes=[Route("/hello", hello)])
'''

_NOTE = "x" * 180  # keeps a record near 320 bytes packed, like a row with a text field


def make_state(target_mb: float) -> dict[str, Any]:
    """A bench-app state whose msgpack payload is about `target_mb` MB (1 MB = 10**6 bytes).

    Plain data only (dicts, lists, str, int, float), so the codec's extension hooks never run
    and the runtime's restore is compared with msgpack itself, not with the hooks.
    """
    n = max(1, int(target_mb * 1e6 / 318))
    records = [
        {"id": i, "fields": {"name": f"customer {i}", "email": f"user{i}@example.com",
                             "age": 20 + i % 60, "score": i * 0.5, "note": _NOTE + str(i)},
         "created_at": 1.7e9 + i, "updated_at": 1.7e9 + i}
        for i in range(n)
    ]
    return {"count": 0, "records": records}
