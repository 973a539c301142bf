"""The Dabble demo's state and the commands that change it (runs in the tenant worker).

State (plain data, packs with msgpack; record ids are int keys):

    {"tables": {name: {"next_id": int, "created_at": now,
                       "records": {id: {"id": id, "fields": {...},
                                        "created_at": now, "updated_at": now}}}},
     "sessions": {session_id: {"user": name, "created_at": now}}}

Every command validates all of its arguments before it mutates anything, reads no clock and no
random source (`now` and the session id are arguments), and copies what it stores, so replaying
the journal rebuilds the same state. Records keep insertion order, which is id order because
ids only grow. The read helpers at the bottom never mutate.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from examples.dabble.validation import (
    MAX_FIELDS,
    check_record_id,
    check_session_id,
    check_table_name,
    check_user,
    clean_fields,
)
from tenant import CommandRejected, NotFound

State = dict[str, Any]
Record = dict[str, Any]

MAX_SESSIONS = 10_000  # the oldest session is dropped past this, so logins cannot grow the state


def initial_state() -> State:
    return {"tables": {}, "sessions": {}}


def record_view(record: Record) -> Record:
    """What the API answers for a record: a copy, so a later command cannot change it."""
    return {
        "id": record["id"],
        "fields": dict(record["fields"]),
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
    }


def create_record(state: State, now: float, table: str, fields: dict[str, Any]) -> Record:
    """Add a record to `table`, creating the table on first use."""
    check_table_name(table)
    cleaned = clean_fields(fields, allow_null=True)
    tables = state["tables"]
    if table not in tables:
        tables[table] = {"next_id": 1, "created_at": now, "records": {}}
    entry = tables[table]
    record_id = entry["next_id"]
    entry["next_id"] = record_id + 1
    record = {"id": record_id, "fields": cleaned, "created_at": now, "updated_at": now}
    entry["records"][record_id] = record
    return record_view(record)


def update_record(state: State, now: float, table: str, id: int, fields: dict[str, Any]) -> Record:
    """Shallow-merge `fields` into the record; a field set to null is removed (RFC 7396)."""
    record = _find_record(state, table, id)
    patch = clean_fields(fields, allow_null=True)
    merged = dict(record["fields"])
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_FIELDS:
        raise CommandRejected(
            f"a record has at most {MAX_FIELDS} fields, the merge gives {len(merged)}"
        )
    record["fields"] = merged
    record["updated_at"] = now
    return record_view(record)


def delete_record(state: State, now: float, table: str, id: int) -> None:
    _find_record(state, table, id)
    del state["tables"][table]["records"][id]


def login(state: State, now: float, user: str, session_id: str) -> None:
    """Open a server-side session; the HTTP handler draws `session_id` at random."""
    check_user(user)
    check_session_id(session_id)
    sessions = state["sessions"]
    sessions.pop(session_id, None)
    while len(sessions) >= MAX_SESSIONS:
        del sessions[next(iter(sessions))]
    sessions[session_id] = {"user": user, "created_at": now}


def logout(state: State, now: float, session_id: str) -> None:
    check_session_id(session_id)
    if session_id not in state["sessions"]:
        raise NotFound("no such session")
    del state["sessions"][session_id]


COMMANDS: tuple[Callable[..., Any], ...] = (
    create_record,
    update_record,
    delete_record,
    login,
    logout,
)


def _find_record(state: State, table: str, record_id: object) -> Record:
    check_table_name(table)
    check_record_id(record_id)
    entry = state["tables"].get(table)
    record: Record | None = None if entry is None else entry["records"].get(record_id)
    if record is None:
        raise NotFound(f"no record {record_id} in table {table!r}")
    return record


# --- reads (no command: they change nothing and are not journaled) -------------------------


def list_tables(state: State) -> list[dict[str, Any]]:
    return [
        {"name": name, "count": len(entry["records"])}
        for name, entry in sorted(state["tables"].items())
    ]


def list_records(state: State, table: str, offset: int, limit: int) -> tuple[list[Record], int]:
    """One page of `table`'s records in id order, and the table's record count."""
    check_table_name(table)
    entry = state["tables"].get(table)
    if entry is None:
        return [], 0
    records = entry["records"]
    page = islice(records.values(), offset, offset + limit)
    return [record_view(record) for record in page], len(records)


def get_record(state: State, table: str, record_id: int) -> Record:
    return record_view(_find_record(state, table, record_id))


def session_user(state: State, session_id: str | None) -> str | None:
    if session_id is None:
        return None
    session = state["sessions"].get(session_id)
    return None if session is None else str(session["user"])
