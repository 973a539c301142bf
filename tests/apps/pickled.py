"""A test app that declares the pickle codec: its state holds an object of its own class,
which msgpack cannot encode, so its snapshots are pickle (tests/test_snapshot_security.py).

HTTP: GET /notes -> {"notes": [str, ...], "pid"}; POST /notes {"text": str} -> 201 {"count"}.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tenant
from tenant import CommandRejected, TenantApp


class Notebook:
    """The app's own class: only pickle restores it."""

    def __init__(self) -> None:
        self.notes: list[str] = []


def initial_state() -> Notebook:
    return Notebook()


app = TenantApp(name="pickled", initial_state=initial_state, app_version="test-1",
                codec="pickle")


@app.command()
def add_note(state: Notebook, now: float, text: str) -> int:
    if not isinstance(text, str):
        raise CommandRejected("text must be a string")
    state.notes.append(text)
    return len(state.notes)


async def get_notes(request: Request) -> JSONResponse:
    ctx = tenant.current()
    return JSONResponse({"notes": list(ctx.state.notes), "pid": ctx.pid})


async def post_note(request: Request) -> JSONResponse:
    body = await request.json()
    count = await tenant.current().execute("add_note", text=body.get("text"))
    return JSONResponse({"count": count}, status_code=201)


app.asgi = Starlette(routes=[
    Route("/notes", get_notes),
    Route("/notes", post_note, methods=["POST"]),
])
