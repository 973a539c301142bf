"""The console's pieces that run without a worker (issue 12): which statements may change
state (and so mark the tenant dirty), compiling with top-level await, and breakpoints
installed and removed on a real function object."""

from __future__ import annotations

import types

import pytest

from tenant.breakpoints import Breakpoints, resolve
from tenant.statements import Compiler, may_write, writes_through_reference


def tree(source: str) -> types.CodeType | object:
    compiled = Compiler()(source)
    assert compiled is not None
    return compiled[1]


@pytest.mark.parametrize("source", [
    'len(state["tables"]["people"]["records"])',
    "x = sorted(state)",
    'state["tables"].get("people")',
    "requests()[-1]",
    'run("create_record", table="t", fields={})',  # journaled: not a direct change
    "a, b = 1, 2",
])
def test_readers_do_not_mark_dirty(source: str) -> None:
    assert not may_write(tree(source))


@pytest.mark.parametrize("source", [
    'state["tables"]["t"]["records"][1]["fields"]["x"] = 1',
    'del state["sessions"]["abc"]',
    'state["tables"].clear()',
    "await asyncio.sleep(0)",
    "obj.attr = 1",
    'state["n"] += 1',
])
def test_possible_writes_mark_dirty(source: str) -> None:
    assert may_write(tree(source))


def test_only_writes_through_a_reference_are_refused_read_only() -> None:
    assert writes_through_reference(tree('state["tables"] = {}'))
    assert writes_through_reference(tree('del state["x"]'))
    assert not writes_through_reference(tree("x = 1"))
    assert not writes_through_reference(tree('state["tables"].clear()'))  # best effort


def test_incomplete_input_asks_for_more_and_syntax_errors_raise() -> None:
    compile_ = Compiler()
    assert compile_("for i in range(3):") is None
    assert compile_("for i in range(3):\n    print(i)\n") is not None
    assert compile_("await something()") is not None  # top-level await compiles
    with pytest.raises(SyntaxError):
        compile_("1 +* 2")


class Session:
    closed = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def debug_call(self, target: str, fn: types.FunctionType, args: tuple[object, ...],
                   kwargs: dict[str, object]) -> object:
        self.calls.append((target, args))
        return fn(*args, **kwargs)


def test_a_breakpoint_reaches_every_reference_and_is_removed_cleanly() -> None:
    from examples.dabble import app, commands

    original = commands.create_record.__code__
    session = Session()
    points = Breakpoints()
    target = "examples.dabble.commands:create_record"
    points.add(target, session)
    state = commands.initial_state()
    try:
        # Called through the app's command table, which holds the function object itself.
        record = app.apply(state, "create_record", {"table": "t", "fields": {"a": 1}}, 1.0)
        assert record["fields"] == {"a": 1}
        assert session.calls == [(target, (state, 1.0))]
        with pytest.raises(ValueError, match="already has a breakpoint"):
            points.add(target, session)
    finally:
        points.remove_session(session)
    assert commands.create_record.__code__ is original
    app.apply(state, "create_record", {"table": "t", "fields": {"a": 2}}, 2.0)
    assert len(session.calls) == 1  # removed: no more stops


@pytest.mark.parametrize(("target", "message"), [
    ("nocolon", "MODULE:FUNCTION"),
    ("no.such.module:f", "cannot import"),
    ("examples.dabble.commands:nope", "has no 'nope'"),
    ("examples.dabble.commands:MAX_SESSIONS", "not a Python function"),
    ("examples.dabble.diagnostics:worker", "coroutine or generator"),
])
def test_bad_breakpoint_targets_say_why(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(target)
