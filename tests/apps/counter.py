"""A minimal tenant app: one counter, for lifecycle tests that need a fast, tiny worker.

Routes (all relative to the tenant's root path):
  GET  /count        {"count", "pid"}
  POST /add          {"amount": int} -> 201 {"count"}
  GET  /headers      what the worker saw: headers, root_path, client, scheme, a built link
  GET  /empty        204, no body
  GET  /hop          200 with hop-by-hop headers the router must drop (Connection: x-hop, ...)
  GET  /stream?n=&size=   n chunks of `size` bytes, streamed (for client-disconnect tests)
  POST /echo         streams the body in -> {"bytes", "sha256"}

Boot failures on purpose (runs in the tenant worker, at restore of a tenant without snapshot):
SWITCHBOARD_TEST_BOOT_FAIL_TENANTS (comma-separated tenant names) makes `initial_state` raise for
those tenants only, so one tenant fails to boot while the others on the router serve. With
SWITCHBOARD_TEST_BOOT_FAIL_FILE also set, they fail only while that file exists, so a test can
"fix the deploy" by removing it. The tenant is read from the process title the runtime sets
(`switchboard: tenant NAME :PORT`), since `initial_state` runs before the context exists.
SWITCHBOARD_TEST_BOOT_DELAY_S makes every such restore take that long (a slow start).
SWITCHBOARD_TEST_IMPORT_DELAY_S makes importing this module that slow (a zygote slow to be ready).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp

time.sleep(float(os.environ.get("SWITCHBOARD_TEST_IMPORT_DELAY_S", "0")))


def _booting_tenant() -> str:
    import setproctitle

    title = setproctitle.getproctitle()
    prefix = "switchboard: tenant "
    return title[len(prefix):].split(" ")[0] if title.startswith(prefix) else ""


def initial_state() -> dict[str, Any]:
    failing = {n for n in os.environ.get("SWITCHBOARD_TEST_BOOT_FAIL_TENANTS", "").split(",") if n}
    gate = os.environ.get("SWITCHBOARD_TEST_BOOT_FAIL_FILE")
    name = _booting_tenant()
    if name in failing and (gate is None or os.path.exists(gate)):
        raise RuntimeError(f"boot failure injected for {name}")
    time.sleep(float(os.environ.get("SWITCHBOARD_TEST_BOOT_DELAY_S", "0")))
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


async def get_headers(request: Request) -> JSONResponse:
    return JSONResponse({
        "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in request.scope["headers"]],
        "root_path": request.scope.get("root_path", ""),
        "path": request.scope["path"],
        "client": request.client.host if request.client else None,
        "peer_port": request.scope["client"][1] if request.scope.get("client") else None,
        "scheme": request.url.scheme,
        "link": str(request.url_for("count")),
    })


async def empty(request: Request) -> Response:
    return Response(status_code=204)


async def hop(request: Request) -> Response:
    return Response(b"hop", headers={"connection": "x-hop", "x-hop": "1", "keep-alive": "timeout=5",
                                      "x-end-to-end": "kept"})


async def stream(request: Request) -> StreamingResponse:
    chunks = int(request.query_params.get("n", "100"))
    size = int(request.query_params.get("size", "65536"))
    pause_s = float(request.query_params.get("pause", "0"))  # between chunks: a slow response

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"x" * size
            await asyncio.sleep(pause_s)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def echo(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    received = 0
    async for chunk in request.stream():
        digest.update(chunk)
        received += len(chunk)
    return JSONResponse({"bytes": received, "sha256": digest.hexdigest()})


app.asgi = Starlette(routes=[
    Route("/count", get_count, name="count"),
    Route("/add", post_add, methods=["POST"]),
    Route("/headers", get_headers),
    Route("/empty", empty),
    Route("/hop", hop),
    Route("/stream", stream),
    Route("/echo", echo, methods=["POST"]),
])
