"""A test app at schema version 3, with the upgrade functions from versions 1 and 2.

    schema 1  {"items": {name: qty}}
    schema 2  {"items": {name: {"qty": qty}}}                       (upgrade 1 -> 2)
    schema 3  {"items": {name: {"qty": qty, "tags": set[str]}},     (upgrade 2 -> 3)
               "log": [[now, name], ...]}

Sets of strings make it a determinism check too: their iteration order changes with
PYTHONHASHSEED, their packed form must not. Export hooks write a layout-free list of rows.

HTTP: GET /items -> {"items": {name: {"qty", "tags": sorted}}, "schema_version"};
POST /put {"name", "qty", "tags"?} -> 201; POST /delete {"name"} -> 200.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import CommandRejected, NotFound, TenantApp

State = dict[str, Any]


def initial_state() -> State:
    return {"items": {}, "log": []}


def export_data(state: State) -> list[dict[str, Any]]:
    return [{"name": name, "qty": item["qty"], "tags": sorted(item["tags"])}
            for name, item in sorted(state["items"].items())]


def import_data(rows: list[dict[str, Any]]) -> State:
    return {"items": {row["name"]: {"qty": row["qty"], "tags": set(row["tags"])} for row in rows},
            "log": []}


app = TenantApp(name="schema-v3", initial_state=initial_state, schema_version=3,
                app_version="schema-3", export_data=export_data, import_data=import_data)


@app.upgrade(1)
def v1_to_v2(state: State) -> State:
    return {"items": {name: {"qty": qty} for name, qty in state["items"].items()}}


@app.upgrade(2)
def v2_to_v3(state: State) -> State:
    items = {name: {"qty": item["qty"], "tags": set()} for name, item in state["items"].items()}
    return {"items": items, "log": []}


@app.command()
def put(state: State, now: float, name: str, qty: int, tags: list[str] | None = None) -> State:
    if not isinstance(name, str) or not name:
        raise CommandRejected("name must be a non-empty string")
    if not isinstance(qty, int) or isinstance(qty, bool):
        raise CommandRejected("qty must be an integer")
    tags = list(tags or [])
    if not all(isinstance(t, str) for t in tags):
        raise CommandRejected("tags must be strings")
    state["items"][name] = {"qty": qty, "tags": set(tags)}
    state["log"].append([now, name])
    return {"name": name, "qty": qty, "tags": sorted(tags)}


@app.command()
def delete(state: State, now: float, name: str) -> None:
    if name not in state["items"]:
        raise NotFound(f"no item {name!r}")
    del state["items"][name]
    state["log"].append([now, "-" + name])


def view(state: State) -> dict[str, Any]:
    return {name: {"qty": item["qty"], "tags": sorted(item["tags"])}
            for name, item in state["items"].items()}


async def get_items(request: Request) -> JSONResponse:
    ctx = tenant.current()
    return JSONResponse({"items": view(ctx.state), "schema_version": ctx.schema_version,
                         "pid": ctx.pid})


async def post_put(request: Request) -> JSONResponse:
    body = await request.json()
    try:
        result = await tenant.current().execute("put", **body)
    except CommandRejected as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return JSONResponse(result, status_code=201)


async def post_delete(request: Request) -> JSONResponse:
    body = await request.json()
    try:
        await tenant.current().execute("delete", name=body["name"])
    except CommandRejected as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return JSONResponse({"ok": True})


app.asgi = Starlette(routes=[
    Route("/items", get_items),
    Route("/put", post_put, methods=["POST"]),
    Route("/delete", post_delete, methods=["POST"]),
])
