"""One attached console session: its namespace and its statements (runs in the tenant
worker; the listener is tenant/console.py, the wire contract/console.py).

In scope at the prompt: `state` (the tenant's state root), `app` (its TenantApp), `tenant`
(its name), `run(command, **args)` (applies a command through the journal like a request: the
change is durable once the statement finishes; returns a task, whose result is shown),
`checkpoint()`, `requests()` (the recent requests, tenant/requestlog.py), and
`breakpoint_on("module:function")` / `breakpoint_off(...)` / `breakpoints()`
(tenant/breakpoints.py). Statements run one at a time per session (tenant/statements.py).

Direct changes to `state` are allowed, for emergencies, and are not journaled: a statement
that may write marks the tenant dirty, and the session checkpoints when it detaches (a crash
before that loses them; the welcome says so). `--read-only` refuses run(), checkpoint(),
breakpoints, rebinding `state` and assignments through attributes or subscripts; Python
cannot stop a mutation through a method call on a reference, so read-only is best effort.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import pwd
import rlcompleter
import time
from typing import TYPE_CHECKING, Any

from contract.console import decode, encode
from tenant.pdbio import SocketPdbIO
from tenant.statements import (
    Capture,
    Compiler,
    format_exception,
    format_value,
    may_write,
    writes_through_reference,
)

if TYPE_CHECKING:
    from tenant.console import ConsoleServer

log = logging.getLogger("switchboard.tenant.console")

MAX_MATCHES = 200
PAUSE_GRACE_S = 5.0  # added to the breakpoint deadline in the `paused` event
WARNING = ("direct changes to `state` are not journaled: a statement that may change it marks "
           "the tenant dirty and it is checkpointed when you detach (a crash before that loses "
           "them); run(command, **args) is durable at once")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ConsoleSession:
    """One attached client: its namespace, its statements, its breakpoints."""

    def __init__(self, server: ConsoleServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, fd: int, uid: int, pid: int,
                 hello: dict[str, Any]) -> None:
        self.server = server
        self.context = server.context
        self.reader = reader
        self.writer = writer
        self.fd = fd
        self.uid = uid
        self.pid = pid
        self.user = user_name(uid)
        self.claimed_user = str(hello.get("user") or "")[:64]
        self.read_only = bool(hello.get("read_only"))
        self.breaks = [str(b) for b in hello.get("breaks") or []]
        self.since = time.time()
        self.statements = 0
        self.dirtied = False
        self._closed = False
        self._compile = Compiler()
        self._running: asyncio.Task[None] | None = None
        self._runs: list[asyncio.Future[Any]] = []
        self.namespace: dict[str, Any] = {
            "__name__": "__console__", "__builtins__": builtins, "asyncio": asyncio,
            "app": self.context.app, "tenant": self.context.tenant, "state": self.context.state,
            "run": self.run, "checkpoint": self.checkpoint, "requests": self.recent_requests,
            "breakpoint_on": self.breakpoint_on, "breakpoint_off": self.breakpoint_off,
            "breakpoints": self.list_breakpoints,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> dict[str, Any]:
        return {"uid": self.uid, "user": self.user, "pid": self.pid, "since": self.since,
                "read_only": self.read_only}

    def send(self, frame: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(frame))

    # --- the session's life ----------------------------------------------------------------

    async def attend(self) -> None:
        """The session, from its welcome to its detach."""
        server = self.server
        welcome: dict[str, Any] = {
            "event": "welcome", "tenant": self.context.tenant, "pid": os.getpid(),
            "code_version": server.code_version, "read_only": self.read_only,
            "warning": "" if self.read_only else WARNING, "breaks": []}
        errors = []
        for target in self.breaks:
            try:
                welcome["breaks"].append(self._add_breakpoint(target))
            except (ValueError, PermissionError) as exc:
                errors.append(f"breakpoint {target}: {exc}")
        if errors:
            self.send({"event": "refused", "error": "; ".join(errors)})
            server.breakpoints.remove_session(self)
            return
        server.sessions.append(self)
        log.info("console attached: uid %d (%s, says %r), pid %d, read-only %s, breakpoints %s",
                 self.uid, self.user, self.claimed_user, self.pid, self.read_only,
                 welcome["breaks"] or "none")
        server.sessions_changed()
        self.send(welcome)
        try:
            await self._serve()
        finally:
            self._closed = True
            if self._running is not None:
                self._running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._running
            server.breakpoints.remove_session(self)
            server.sessions.remove(self)
            saved = await self._checkpoint_if_dirtied()
            log.info("console detached: uid %d (%s) after %.1fs, %d statements%s", self.uid,
                     self.user, time.time() - self.since, self.statements, saved)
            server.sessions_changed()

    async def _serve(self) -> None:
        while True:
            try:
                line = await self.reader.readline()
            except (ConnectionError, ValueError):
                return
            if not line:
                return
            try:
                frame = decode(line)
            except ValueError:
                continue
            op = frame.get("op")
            if op == "exec":
                if self._running is not None and not self._running.done():
                    self.send({"out": "a statement is still running (Ctrl-C interrupts it)\n"})
                    self.send({"event": "done", "more": False})
                    continue
                self._running = asyncio.ensure_future(self._execute(str(frame.get("source"))))
            elif op == "complete":
                self.send({"event": "matches", "matches": self._complete(str(frame.get("text")))})
            elif op == "interrupt" and self._running is not None:
                self._running.cancel()

    async def _checkpoint_if_dirtied(self) -> str:
        if not self.dirtied:
            return ""
        try:
            outcome = await self.server.checkpointer.checkpoint(fork=True)
        except Exception as exc:  # the journal still has every command; the state is dirty
            log.error("console: checkpoint at detach failed: %s", exc)
            return f"; checkpoint at detach failed: {exc}"
        if outcome.changed:
            self._report_checkpoint(outcome)
            return f"; checkpointed generation {outcome.generation}"
        return ""

    # --- statements ------------------------------------------------------------------------

    async def _execute(self, source: str) -> None:
        try:
            compiled = self._compile(source)
        except (SyntaxError, OverflowError, ValueError) as exc:
            self.send({"out": format_exception(exc)})
            self.send({"event": "done", "more": False})
            return
        if compiled is None:
            self.send({"event": "done", "more": True})
            return
        code, tree = compiled
        self.statements += 1
        if self.read_only and writes_through_reference(tree):
            self.send({"out": "read-only console: assignments into objects are refused\n"})
            self.send({"event": "done", "more": False})
            return
        if not self.read_only and may_write(tree):
            self._mark_dirty()
        self.namespace["state"] = self.context.state
        self._runs = []
        shown: list[Any] = []
        capture = Capture(lambda value: self._show(value, shown))
        hold_s = self.server.breakpoint_timeout_s + PAUSE_GRACE_S
        self.server.notify({"event": "paused", "hold_s": hold_s})
        try:
            with capture as out:
                await self._call(code, out)
                for value in shown:
                    await self._display(value, out)
                await self._finish_runs(out, shown)
        finally:
            self.server.notify({"event": "paused", "hold_s": 0})
        self._check_state_binding(out)
        self.send({"out": out.getvalue()})
        self.send({"event": "done", "more": False})

    async def _call(self, code: Any, out: Any) -> None:
        import inspect
        import types

        try:
            result = types.FunctionType(code, self.namespace)()
            if inspect.iscoroutine(result):
                await result
        except asyncio.CancelledError:
            if self._closed:
                raise
            out.write("KeyboardInterrupt\n")
        except SystemExit:
            out.write("SystemExit is not for the console: Ctrl-D detaches\n")
        except BaseException as exc:
            out.write(format_exception(exc))

    def _show(self, value: Any, shown: list[Any]) -> None:
        if value is not None:
            shown.append(value)
            self.namespace["_"] = value

    async def _display(self, value: Any, out: Any) -> None:
        if isinstance(value, asyncio.Future) and value in self._runs:
            try:
                value = await value
            except asyncio.CancelledError:
                out.write("KeyboardInterrupt\n")
                return
            except Exception as exc:
                out.write(format_exception(exc))
                return
            if value is None:
                return
            self.namespace["_"] = value
        out.write(format_value(value) + "\n")

    async def _finish_runs(self, out: Any, shown: list[Any]) -> None:
        """Every run() of the statement is durable (or failed) before the prompt is back."""
        for future in self._runs:
            if future in shown:
                continue
            try:
                await future
            except asyncio.CancelledError:
                out.write("KeyboardInterrupt\n")
            except Exception as exc:
                out.write(format_exception(exc))

    def _check_state_binding(self, out: Any) -> None:
        bound = self.namespace.get("state")
        if bound is self.context.state:
            return
        if self.read_only:
            self.namespace["state"] = self.context.state
            out.write("read-only console: `state` was not replaced\n")
            return
        self.context.state = bound
        self._mark_dirty()
        out.write("the tenant's state root was replaced (not journaled; checkpointed when you "
                  "detach)\n")

    def _mark_dirty(self) -> None:
        if not self.dirtied:
            log.warning("console of uid %d (%s) may have changed state directly: marked dirty",
                        self.uid, self.user)
        self.dirtied = True
        self.context.mark_dirty()

    def _complete(self, text: str) -> list[str]:
        completer = rlcompleter.Completer(self.namespace)
        matches: list[str] = []
        for index in range(MAX_MATCHES):
            try:
                match = completer.complete(text, index)
            except Exception:  # a property that raises while being looked at
                break
            if match is None:
                break
            matches.append(match)
        return matches

    # --- what the namespace offers ---------------------------------------------------------

    def _refuse_if_read_only(self, what: str) -> None:
        if self.read_only:
            raise PermissionError(f"read-only console: {what} is refused")

    def run(self, command: str, /, **args: Any) -> asyncio.Future[Any]:
        """Apply `command` through the journal (as a request does); durable once done."""
        self._refuse_if_read_only("run()")
        future = asyncio.ensure_future(self.context.execute(command, **args))
        self._runs.append(future)
        return future

    def checkpoint(self) -> asyncio.Future[Any]:
        """Write a snapshot now if anything changed (forked, like the router's checkpoint)."""
        self._refuse_if_read_only("checkpoint()")

        async def write() -> dict[str, Any]:
            outcome = await self.server.checkpointer.checkpoint(fork=True)
            if outcome.changed:
                self._report_checkpoint(outcome)
            return {"changed": outcome.changed, "generation": outcome.generation,
                    "journal_pos": outcome.journal_pos}

        future = asyncio.ensure_future(write())
        self._runs.append(future)
        return future

    def _report_checkpoint(self, outcome: Any) -> None:
        self.server.notify({"event": "checkpointed", "generation": outcome.generation,
                            "journal_pos": outcome.journal_pos,
                            "duration_s": outcome.duration_s, "bytes": outcome.bytes})

    def recent_requests(self) -> list[dict[str, Any]]:
        """The worker's recent requests, oldest first: method, path, status, timings."""
        return self.server.requests.snapshot()

    def breakpoint_on(self, target: str) -> str:
        """Stop in `module:function` (in this tenant only), with pdb on this console."""
        return self._add_breakpoint(target)

    def _add_breakpoint(self, target: str) -> str:
        self._refuse_if_read_only("a breakpoint")
        return self.server.breakpoints.add(target, self)

    def breakpoint_off(self, target: str) -> bool:
        return self.server.breakpoints.remove(target)

    def list_breakpoints(self) -> list[str]:
        return self.server.breakpoints.targets()

    # --- a breakpoint fired ----------------------------------------------------------------

    def debug_call(self, target: str, fn: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """Run `fn` under pdb on this connection. Blocks the event loop (see
        tenant/breakpoints.py); the router was told to hold its health pings meanwhile."""
        from tenant.debugger import ConsolePdb

        timeout_s = self.server.breakpoint_timeout_s
        self.server.notify({"event": "paused", "hold_s": timeout_s + PAUSE_GRACE_S})
        started = time.monotonic()
        io = SocketPdbIO(self.fd, started + timeout_s)
        log.warning("breakpoint on %s hit; pdb on the console of uid %d (%s), at most %gs",
                    target, self.uid, self.user, timeout_s)
        io.send({"event": "break", "target": target, "deadline_s": timeout_s})
        try:
            return ConsolePdb(io).runcall(fn, *args, **kwargs)
        finally:
            reason = io.released or "continued"
            io.flush()
            io.send({"event": "released", "reason": reason})
            self.server.notify({"event": "paused", "hold_s": 0})
            log.warning("breakpoint on %s released after %.1fs: %s", target,
                        time.monotonic() - started, reason)
