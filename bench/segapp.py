"""The apps the segmented-snapshot bench runs (bench/cases/segments.py): a state of many tables
of records, as the same app twice, segmented (`app`: one segment per table,
tenant/segments.py) and not (`whole_app`: today's one whole-state snapshot).

Routes: GET /tables/{name}/count (reads one table), GET /loaded ({"pending": segments not
loaded yet, "loaded_at"}), POST /touch/{name} (changes one record of a table: a command).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import TenantApp
from tenant.lazyload import LazyLoader
from tenant.segments import unloaded

APP_VERSION = "bench-seg-1"
_NOTE = "x" * 180  # a record near 320 bytes packed, as in bench.app


def initial_state() -> dict[str, Any]:
    return {"tables": {}}


def make_state(target_mb: float, tables: int) -> dict[str, Any]:
    """About `target_mb` MB of msgpack payload in `tables` equal tables (plain data only)."""
    per_table = max(1, int(target_mb * 1e6 / 318 / tables))
    return {"tables": {f"t{t}": {"records": [
        {"id": i, "fields": {"name": f"customer {i}", "email": f"user{i}@example.com",
                             "age": 20 + i % 60, "score": i * 0.5, "note": _NOTE + str(i)},
         "created_at": 1.7e9 + i, "updated_at": 1.7e9 + i}
        for i in range(per_table)]} for t in range(tables)}}


def touch(state: dict[str, Any], now: float, table: str, value: float) -> float:
    state["tables"][table]["records"][0]["fields"]["score"] = value
    return value


async def count(request: Request) -> JSONResponse:
    table = tenant.current().state["tables"][request.path_params["name"]]
    return JSONResponse({"records": len(table["records"])})


async def loaded(request: Request) -> JSONResponse:
    """How many segments are not loaded yet, and when the background load finished (Unix
    time, from the worker's LazyLoader; null while it runs)."""
    loader = LazyLoader.current
    return JSONResponse({"pending": len(unloaded(tenant.current().state)),
                         "loaded_at": None if loader is None else loader.loaded_at})


async def post_touch(request: Request) -> JSONResponse:
    value = await tenant.current().execute("touch", table=request.path_params["name"],
                                           value=-1.0)
    return JSONResponse({"score": value}, status_code=201)


def _app(segment_groups: tuple[str, ...] | None) -> TenantApp:
    made = TenantApp(name="bench-seg", initial_state=initial_state, app_version=APP_VERSION,
                     segment_groups=segment_groups)
    made.command()(touch)
    made.asgi = Starlette(routes=[
        Route("/tables/{name}/count", count), Route("/loaded", loaded),
        Route("/touch/{name}", post_touch, methods=["POST"]),
    ])
    return made


app = _app(("tables",))
whole_app = _app(None)
