"""The demo app's commands: validation before mutation, copies, determinism under replay."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from examples.dabble import app
from examples.dabble.commands import MAX_SESSIONS
from tenant import CommandRejected, NotFound

SESSION = "s" * 16
OTHER_SESSION = "o" * 16


def packed(state: Any) -> bytes:
    data: bytes = msgpack.packb(state, use_bin_type=True)
    return data


HISTORY: list[tuple[str, dict[str, Any], float]] = [
    ("create_record", {"table": "people", "fields": {"name": "Ann", "n": [1, 2.5, None]}}, 1.0),
    ("create_record", {"table": "people", "fields": {"name": "Bob"}}, 2.0),
    ("create_record", {"table": "cities", "fields": {"name": "Oslo", "pop": 700000}}, 3.0),
    ("update_record", {"table": "people", "id": 1, "fields": {"n": None, "x": {"y": True}}}, 4.0),
    ("delete_record", {"table": "people", "id": 2}, 5.0),
    ("login", {"user": "ann", "session_id": SESSION}, 6.0),
    ("login", {"user": "bob", "session_id": OTHER_SESSION}, 7.0),
    ("logout", {"session_id": SESSION}, 8.0),
    ("create_record", {"table": "people", "fields": {}}, 9.0),
]


def replay(history: list[tuple[str, dict[str, Any], float]]) -> Any:
    state = app.initial_state()
    for name, args, now in history:
        app.apply(state, name, args, now)
    return state


def test_replaying_the_same_commands_gives_the_same_state() -> None:
    first, second = replay(HISTORY), replay(HISTORY)
    assert packed(first) == packed(second)
    assert sorted(first["tables"]["people"]["records"]) == [1, 3]
    assert first["sessions"] == {OTHER_SESSION: {"user": "bob", "created_at": 7.0}}
    # as after a restore: arguments and state come back from msgpack and replay the same
    journal = msgpack.unpackb(packed(HISTORY), strict_map_key=False)
    assert packed(replay([(n, a, t) for n, a, t in journal])) == packed(first)
    restored = msgpack.unpackb(packed(first), strict_map_key=False)
    assert restored == first


def test_initial_state_is_fresh_each_time() -> None:
    state = app.initial_state()
    state["tables"]["x"] = {}
    assert app.initial_state() == {"tables": {}, "sessions": {}}
    assert (app.schema_version, app.app_version) == (1, "1.0")
    assert set(app.commands) == {
        "create_record", "update_record", "delete_record", "login", "logout"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "args", "error"),
    [
        ("create_record", {"table": "bad name", "fields": {}}, CommandRejected),
        ("create_record", {"table": "people", "fields": {"x": {1: 2}}}, CommandRejected),
        ("create_record", {"table": "people", "fields": {"x": (1, 2)}}, CommandRejected),
        ("create_record", {"table": "people", "fields": {"x": b"bytes"}}, CommandRejected),
        ("update_record", {"table": "people", "id": 2, "fields": {}}, NotFound),
        ("update_record", {"table": "people", "id": "1", "fields": {}}, NotFound),
        ("update_record", {"table": "people", "id": True, "fields": {}}, NotFound),
        ("update_record", {"table": "people", "id": 1, "fields": {"a": math.nan}}, CommandRejected),
        ("delete_record", {"table": "nope", "id": 1}, NotFound),
        ("login", {"user": "ann", "session_id": "short"}, CommandRejected),
        ("login", {"user": None, "session_id": SESSION}, CommandRejected),
        ("logout", {"session_id": OTHER_SESSION}, NotFound),
        ("drop_everything", {}, CommandRejected),
    ],
)  # fmt: skip
def test_rejected_commands_leave_the_state_as_it_was(
    name: str, args: dict[str, Any], error: type[Exception]
) -> None:
    state = replay(HISTORY[:1] + HISTORY[5:6])
    before = packed(state)
    with pytest.raises(error):
        app.apply(state, name, args, 99.0)
    assert packed(state) == before


def test_commands_copy_what_they_store() -> None:
    state = app.initial_state()
    fields: dict[str, Any] = {"list": [1, 2], "obj": {"a": 1}}
    result = app.apply(state, "create_record", {"table": "t", "fields": fields}, 1.0)
    fields["list"].append(3)
    fields["obj"]["b"] = 2
    fields["new"] = True
    result["fields"]["list"] = "changed"
    assert state["tables"]["t"]["records"][1]["fields"] == {"list": [1, 2], "obj": {"a": 1}}


def test_sessions_are_bounded_oldest_first() -> None:
    state = app.initial_state()
    for n in range(MAX_SESSIONS + 2):
        app.apply(state, "login", {"user": f"u{n}", "session_id": f"{n:016d}"}, float(n))
    sessions = state["sessions"]
    assert len(sessions) == MAX_SESSIONS
    assert f"{0:016d}" not in sessions and f"{1:016d}" not in sessions
    assert sessions[f"{MAX_SESSIONS + 1:016d}"]["user"] == f"u{MAX_SESSIONS + 1}"
