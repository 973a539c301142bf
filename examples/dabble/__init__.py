"""Dabble: a small Dabble-DB-like database, the tenant app `switchboard serve` runs by default.

Tables of records with free-form fields, kept in the tenant's in-memory state and changed only
through the commands in `commands.py`; the HTTP API is in `web.py`, the HTML page in `page.py`.
The runtime imports `examples.dabble:app`.
"""

from __future__ import annotations

from typing import Any

from examples.dabble import commands
from examples.dabble.web import build_asgi
from tenant import TenantApp

SCHEMA_VERSION = 1
APP_VERSION = "1.0"


def export_data(state: dict[str, Any]) -> dict[str, Any]:
    """The extract keeps the tables only: live session tokens do not belong in a backup."""
    return {"tables": state["tables"]}


def import_data(data: dict[str, Any]) -> dict[str, Any]:
    return {"tables": data["tables"], "sessions": {}}


app = TenantApp(
    name="dabble",
    initial_state=commands.initial_state,
    schema_version=SCHEMA_VERSION,
    app_version=APP_VERSION,
    codec="msgpack",
    asgi=build_asgi(),
    export_data=export_data,
    import_data=import_data,
    # One segment per table, plus the sessions (tenant/segments.py): a cold start loads only
    # the tables a request reads, and a checkpoint writes only the tables that changed.
    segment_groups=("tables",),
)
for _command in commands.COMMANDS:
    app.command()(_command)

__all__ = ["app"]
