"""A tenant app that misbehaves on request, for the stuck- and bloated-worker tests: a counter,
plus routes that spin the event loop, deadlock it, or grow the heap. Every fault is bounded
in time, so a worker the router fails to replace still ends by itself."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp

MAX_FAULT_S = 120.0
_held: list[bytes] = []  # what /grow keeps alive
_lock = threading.Lock()

app = TenantApp(name="faulty", initial_state=lambda: {"count": 0}, app_version="test-1")


@app.command()
def add(state: dict[str, Any], now: float, amount: int) -> int:
    state["count"] += amount
    return int(state["count"])


async def get_count(request: Request) -> JSONResponse:
    state = tenant.current().state
    return JSONResponse({"count": state["count"], "pid": os.getpid()})


async def post_add(request: Request) -> JSONResponse:
    count = await tenant.current().execute("add", amount=int((await request.json())["amount"]))
    return JSONResponse({"count": count}, status_code=201)


async def spin(request: Request) -> JSONResponse:
    """A busy loop on the event loop: nothing else in this worker runs meanwhile."""
    deadline = time.monotonic() + min(float(request.query_params.get("s", 30)), MAX_FAULT_S)
    while time.monotonic() < deadline:
        pass
    return JSONResponse({"spun": True})


async def deadlock(request: Request) -> JSONResponse:
    """Take a lock this thread already holds: the event loop blocks on it."""
    with _lock:
        _lock.acquire(timeout=min(float(request.query_params.get("s", 30)), MAX_FAULT_S))
    return JSONResponse({"deadlocked": True})


async def sleep(request: Request) -> JSONResponse:
    """Answer after `s` seconds without blocking the event loop (a slow handler)."""
    await asyncio.sleep(min(float(request.query_params.get("s", 5)), MAX_FAULT_S))
    return JSONResponse({"slept": True})


async def grow(request: Request) -> JSONResponse:
    """Keep `mb` more megabytes alive (touched, so they are resident)."""
    mb = int(request.query_params.get("mb", 100))
    _held.extend(os.urandom(1) * (1 << 20) for _ in range(mb))
    return JSONResponse({"held_mb": len(_held)})


app.asgi = Starlette(routes=[
    Route("/count", get_count), Route("/add", post_add, methods=["POST"]),
    Route("/spin", spin, methods=["POST"]), Route("/deadlock", deadlock, methods=["POST"]),
    Route("/grow", grow, methods=["POST"]), Route("/sleep", sleep),
])
