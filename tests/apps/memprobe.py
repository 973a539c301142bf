"""A tenant app for memory tests: a counter, plus a route that runs a full garbage collection
inside the worker, so a test can check that the collector does not copy the zygote's heap
(the zygote's `gc.freeze()` keeps preloaded objects out of the child's collections)."""

from __future__ import annotations

import gc
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


app = TenantApp(name="memprobe", initial_state=initial_state, app_version="test-1")


@app.command()
def add(state: dict[str, Any], now: float, amount: int) -> int:
    state["count"] += amount
    return int(state["count"])


async def get_count(request: Request) -> JSONResponse:
    return JSONResponse({"count": tenant.current().state["count"], "pid": os.getpid()})


async def full_gc(request: Request) -> JSONResponse:
    unreachable = gc.collect()  # all generations
    return JSONResponse({"pid": os.getpid(), "unreachable": unreachable,
                         "frozen": gc.get_freeze_count()})


app.asgi = Starlette(routes=[Route("/count", get_count), Route("/gc", full_gc, methods=["POST"])])
