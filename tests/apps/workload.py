"""A tenant app for the worker's own guards: declared work in progress, resource limits.

Routes (relative to the tenant's root path):
  GET  /count                 {"count", "pid"}
  POST /add                   {"amount": int} -> 201 {"count"}
  POST /work/start?name=N     starts a background task inside `current().busy(N)` that runs
                              until /work/finish; answers once it is in -> {"work": [...]}
  POST /work/finish?name=N    ends the oldest such task for N and waits for it -> {"work"}
  POST /allocate?mib=N        allocates N MiB (a MemoryError past the address-space limit
                              propagates: the server answers 500)
  POST /open-files?n=N        opens /dev/null up to N times, closes them -> {"opened", "errno"}
                              (errno of the open that failed, or null)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp

app = TenantApp(name="workload", initial_state=lambda: {"count": 0}, app_version="test-1")

# Per work name, the (finish event, task) of each background task holding it, oldest first.
_running: dict[str, list[tuple[asyncio.Event, asyncio.Task[None]]]] = {}


@app.command()
def add(state: dict[str, Any], now: float, amount: int) -> int:
    state["count"] += amount
    return int(state["count"])


async def get_count(request: Request) -> JSONResponse:
    return JSONResponse({"count": tenant.current().state["count"], "pid": os.getpid()})


async def post_add(request: Request) -> JSONResponse:
    count = await tenant.current().execute("add", amount=int((await request.json())["amount"]))
    return JSONResponse({"count": count}, status_code=201)


async def _hold(name: str, entered: asyncio.Event, finish: asyncio.Event) -> None:
    async with tenant.current().busy(name):
        entered.set()
        await finish.wait()


async def work_start(request: Request) -> JSONResponse:
    name = request.query_params["name"]
    entered, finish = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(_hold(name, entered, finish))
    _running.setdefault(name, []).append((finish, task))
    await entered.wait()
    return JSONResponse({"work": tenant.current().work_in_progress})


async def work_finish(request: Request) -> JSONResponse:
    name = request.query_params["name"]
    finish, task = _running[name].pop(0)
    finish.set()
    await task
    return JSONResponse({"work": tenant.current().work_in_progress})


async def allocate(request: Request) -> JSONResponse:
    block = bytearray(int(request.query_params["mib"]) << 20)
    return JSONResponse({"allocated": len(block)})


async def open_files(request: Request) -> JSONResponse:
    wanted = int(request.query_params["n"])
    opened: list[int] = []
    failure: int | None = None
    try:
        for _ in range(wanted):
            opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        failure = exc.errno
    finally:
        for fd in opened:
            os.close(fd)
    return JSONResponse({"opened": len(opened), "errno": failure})


app.asgi = Starlette(routes=[
    Route("/count", get_count),
    Route("/add", post_add, methods=["POST"]),
    Route("/work/start", work_start, methods=["POST"]),
    Route("/work/finish", work_finish, methods=["POST"]),
    Route("/allocate", allocate, methods=["POST"]),
    Route("/open-files", open_files, methods=["POST"]),
])
