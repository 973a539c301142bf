"""Per-tenant breakpoints (runs in the tenant worker).

`switchboard attach NAME --break module:function` or `breakpoint_on("module:function")` at the
console sets a breakpoint in this worker only: every tenant has its own process (forked from
the zygote), so what is patched here changes nothing for any other tenant.

How a function is made to stop. Its code object is swapped for a trampoline's (same number of
free variables, so the swap is allowed, and every reference to the function object -- a
command table, a route, a bound method -- reaches it; no sys.settrace while nobody hits it).
The trampoline calls `hit()`, which runs a copy of the original function under pdb
(`Pdb.runcall`: the prompt appears at the function's first line, in its own frame) with
pdb's input and output on the console connection that set the breakpoint (tenant/console.py).
Removing the breakpoint puts the original code object back.

While pdb waits, the worker's event loop is blocked: the tenant's other requests wait (other
tenants are other processes). The session first tells the router (the `paused` event), which
stops health-pinging the worker until the deadline; a breakpoint left open past the deadline
is released (pdb continues) and logged. Plain functions only: a coroutine or generator
function returns before its body runs, so a breakpoint there would stop nowhere useful.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
import types
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("switchboard.tenant.breakpoints")

HOOK = "__switchboard_breakpoint__"  # the name the trampoline calls, in the function's globals


class BreakSession(Protocol):
    """The console session a breakpoint reports to."""

    @property
    def closed(self) -> bool: ...

    def debug_call(self, target: str, fn: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any: ...


@dataclass
class _Breakpoint:
    target: str
    function: types.FunctionType
    original: types.CodeType
    copy: types.FunctionType  # the original function under another object: what pdb runs
    session: BreakSession


def resolve(target: str) -> types.FunctionType:
    """The plain function `module:qualname` names; ValueError saying why not."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"a breakpoint is MODULE:FUNCTION (e.g. examples.dabble.commands:"
                         f"create_record), not {target!r}")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no {qualname!r}") from None
    found = getattr(found, "__func__", found)  # a classmethod or bound method
    if not isinstance(found, types.FunctionType):
        raise ValueError(f"{target} is a {type(found).__name__}, not a Python function")
    if inspect.iscoroutinefunction(found) or inspect.isgeneratorfunction(found) or (
            inspect.isasyncgenfunction(found)):
        raise ValueError(f"{target} is a coroutine or generator function: set the breakpoint "
                         "on a plain function it calls")
    return found


def _trampoline_code(function: types.FunctionType, ident: int) -> types.CodeType:
    """Code that calls HOOK(ident, args, kwargs), with the function's free variables."""
    names = function.__code__.co_freevars
    keep = f"        if False:\n            ({', '.join(names)},)\n" if names else ""
    source = (f"def outer({', '.join(names)}):\n"
              f"    def trampoline(*args, **kwargs):\n{keep}"
              f"        return {HOOK}({ident}, args, kwargs)\n"
              f"    return trampoline\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, "<switchboard breakpoint>", "exec"), namespace)
    trampoline = namespace["outer"](*([None] * len(names)))
    code: types.CodeType = trampoline.__code__
    return code.replace(co_name=function.__code__.co_name,
                        co_qualname=function.__code__.co_qualname)


class Breakpoints:
    """This worker's breakpoints, each owned by the console session that set it."""

    def __init__(self) -> None:
        self._by_id: dict[int, _Breakpoint] = {}
        self._ids = itertools.count(1)
        self._active = False  # a pdb session is open: calls from inside it run plainly

    def targets(self, session: BreakSession | None = None) -> list[str]:
        return sorted(bp.target for bp in self._by_id.values()
                      if session is None or bp.session is session)

    def add(self, target: str, session: BreakSession) -> str:
        """Stop in `target` from now on, with pdb on `session`. ValueError for a bad one."""
        function = resolve(target)
        if any(bp.function is function for bp in self._by_id.values()):
            raise ValueError(f"{target} already has a breakpoint")
        ident = next(self._ids)
        copy = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                                  function.__defaults__, function.__closure__)
        copy.__kwdefaults__ = function.__kwdefaults__
        copy.__qualname__ = function.__qualname__
        trampoline = _trampoline_code(function, ident)
        function.__globals__[HOOK] = self.hit
        self._by_id[ident] = _Breakpoint(target, function, function.__code__, copy, session)
        function.__code__ = trampoline
        log.info("breakpoint set on %s", target)
        return target

    def remove(self, target: str) -> bool:
        for ident, bp in list(self._by_id.items()):
            if bp.target == target:
                bp.function.__code__ = bp.original
                del self._by_id[ident]
                log.info("breakpoint on %s removed", target)
                return True
        return False

    def remove_session(self, session: BreakSession) -> None:
        """A console session ended: its breakpoints go with it."""
        for target in self.targets(session):
            self.remove(target)

    def hit(self, ident: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called by a trampoline in place of the function."""
        bp = self._by_id[ident]
        if self._active or bp.session.closed:
            return bp.copy(*args, **kwargs)
        self._active = True
        try:
            return bp.session.debug_call(bp.target, bp.copy, args, kwargs)
        finally:
            self._active = False
