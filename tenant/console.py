"""The live debug console inside a tenant worker (runs in the tenant worker).

`switchboard attach NAME` (ops/attach.py) talks to this module over a Unix socket; the wire
(path, modes, frames) is documented in contract/console.py. The router asks for it with the
control op `console_open`; only then does the worker listen, and it stops when its last
session ends (or nobody connected in time): no socket exists for a tenant nobody debugs.

Who may connect: console/ is 0700 and the socket 0600 (the service user's), and each peer's
uid is read with SO_PEERCRED and must be the worker's own; anyone else is refused and logged.
Every attach and detach is logged in the tenant's log (who, read-only or not, how long) and
reported to the router (the `attached` event), which logs it too and keeps the tenant
resident (no idle stop, no eviction) while a session is open.

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
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.console import CONNECT_TIMEOUT_S, HELLO_TIMEOUT_S, MAX_LINE_BYTES, decode, encode
from tenant.breakpoints import Breakpoints
from tenant.checkpoint import Checkpointer
from tenant.context import TenantContext
from tenant.pdbio import SocketPdbIO
from tenant.requestlog import RequestLog
from tenant.statements import (
    Capture,
    Compiler,
    format_exception,
    format_value,
    install_routing,
    may_write,
    writes_through_reference,
)

log = logging.getLogger("switchboard.tenant.console")

MAX_MATCHES = 200
PAUSE_GRACE_S = 5.0  # added to the breakpoint deadline in the `paused` event
WARNING = ("direct changes to `state` are not journaled: a statement that may change it marks "
           "the tenant dirty and it is checkpointed when you detach (a crash before that loses "
           "them); run(command, **args) is durable at once")
Notify = Callable[[dict[str, Any]], None]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_uid(sock_fd: int) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    with socket.socket(fileno=os.dup(sock_fd)) as dup:
        raw = dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


class ConsoleServer:
    """The worker's console listener and its sessions."""

    def __init__(self, context: TenantContext, checkpointer: Checkpointer, requests: RequestLog,
                 notify: Notify, code_version: str) -> None:
        self.context = context
        self.checkpointer = checkpointer
        self.requests = requests
        self.notify = notify
        self.code_version = code_version
        self.breakpoints = Breakpoints()
        self.breakpoint_timeout_s = 300.0
        self.sessions: list[ConsoleSession] = []
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._unused_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, path: str, breakpoint_timeout_s: float) -> dict[str, Any]:
        """Listen on `path` (if not already) for CONNECT_TIMEOUT_S at least."""
        self.breakpoint_timeout_s = float(breakpoint_timeout_s)
        if self._server is None:
            self._server = await self._listen(Path(path))
            self.path = Path(path)
            install_routing()
        if self._unused_timer is not None:
            self._unused_timer.cancel()
        self._unused_timer = asyncio.get_running_loop().call_later(
            CONNECT_TIMEOUT_S, self._close_if_unused)
        return {"socket": str(self.path), "pid": os.getpid(), "code_version": self.code_version}

    async def _listen(self, path: Path) -> asyncio.AbstractServer:
        info = os.lstat(path.parent)
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                or stat.S_IMODE(info.st_mode) & 0o077):
            raise PermissionError(f"{path.parent} must be a folder of uid {os.getuid()} that "
                                  f"only it may open (0700), not {oct(info.st_mode)}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        return await asyncio.start_unix_server(self._accept, sock=sock, limit=MAX_LINE_BYTES)

    def _close_if_unused(self) -> None:
        if not self.sessions:
            self._stop_listening()

    def _stop_listening(self) -> None:
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def close(self) -> None:
        """The worker stops: end every session (each checkpoints if it changed state)."""
        self._stop_listening()
        for session in list(self.sessions):
            session.writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    def sessions_changed(self) -> None:
        self.notify({"event": "attached", "sessions": [s.describe() for s in self.sessions]})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            fd = writer.get_extra_info("socket").fileno()
            pid, uid = peer_uid(fd)
            if uid != os.getuid():
                log.warning("console refused for uid %d (%s), pid %d: not the service user",
                            uid, user_name(uid), pid)
                writer.write(encode({"event": "refused",
                                     "error": f"uid {uid} may not attach to this tenant"}))
                return
            try:
                hello = decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S))
            except (TimeoutError, ValueError, ConnectionError):
                return
            session = ConsoleSession(self, reader, writer, fd, uid, pid, hello)
            await session.attend()
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
            if not self.sessions and self._server is not None and (
                    self._unused_timer is None or self._unused_timer.cancelled()):
                self._stop_listening()


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
