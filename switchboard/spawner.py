"""Starting tenant workers: through the zygote, or as a fresh interpreter when it is down.

The router binds the tenant's listening socket itself and hands it to the worker, so requests
queue in the kernel while the worker restores, and a port that is taken is noticed (and
replaced) before anything starts. The worker also gets one end of a control socket pair
(the protocol is the wire contract in contract/worker.py); `WorkerHandle` is the router's end.
The zygote's own channel is documented in tenant/zygote.py.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from contract import worker as wire
from switchboard.errors import WorkerError

log = logging.getLogger("switchboard.spawner")

ZYGOTE_RESTART_DELAY_S = 1.0
EventCallback = Callable[[dict[str, Any]], None]
REAP_TIMEOUT_S = 5.0  # from a worker's channel closing to its exit, before it is killed
EXIT_REPORT_WAIT_S = 0.5  # for the zygote's word on how a vanished worker ended


def _process_exists(pid: int) -> bool:
    """True while `pid` exists, zombie included (a zombie is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BootFailure(WorkerError):
    """The worker did not become ready: it reported an error, exited, or timed out."""


class WorkerHandle:
    """The router's end of one worker's control channel."""

    def __init__(self, tenant: str, port: int, sock: socket.socket,
                 on_event: EventCallback) -> None:
        self.tenant = tenant
        self.port = port
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._sock = sock
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        # Set once the process is reaped, not merely when its channel closes: until then it still
        # holds its memory and its port, and counts against max_resident.
        self.exited: asyncio.Future[None] = loop.create_future()
        self.reaped: asyncio.Future[None] = loop.create_future()  # the zygote reported its exit
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self._sock, limit=1 << 20)
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                try:
                    message = wire.decode(line)
                except ValueError:
                    log.warning("tenant %s: garbled control frame %r", self.tenant, line[:200],
                                extra={"tenant": self.tenant})
                    continue
                self._dispatch(message)
        except (ConnectionError, ValueError):
            pass
        finally:
            await self._closed()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            future = self._pending.pop(message["id"], None)
            if future is not None and not future.done():
                if message.get("ok"):
                    future.set_result(message)
                else:
                    future.set_exception(WorkerError(str(message.get("error"))))
            return
        event = message.get("event")
        if event == wire.READY and not self.ready.done():
            self.ready.set_result(message)
        elif event == wire.BOOT_FAILED and not self.ready.done():
            self.ready.set_exception(BootFailure(str(message.get("error"))))
        else:
            self._on_event(message)

    async def _closed(self) -> None:
        if not await self._wait_reaped(REAP_TIMEOUT_S):
            log.warning("tenant %s: worker %s closed its control channel but did not exit; "
                        "killing it",
                        self.tenant, self.pid, extra={"tenant": self.tenant})
            self._signal(signal.SIGKILL)
            await self._wait_reaped(REAP_TIMEOUT_S)
        error = WorkerError(f"worker of {self.tenant} exited" + self.status_text())
        if not self.ready.done():
            self.ready.set_exception(
                BootFailure(f"worker exited before it was ready{self.status_text()}"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()
        if not self.exited.done():
            self.exited.set_result(None)

    async def _wait_reaped(self, timeout: float) -> bool:
        """Wait until the process is gone (reaped). False if it still runs after `timeout`."""
        if self.process is not None:  # our child: wait() reaps it
            try:
                self.exit_status = await asyncio.wait_for(
                    asyncio.shield(self.process.wait()), timeout)
            except TimeoutError:
                return False
            except ProcessLookupError:
                pass
            return True
        if self.pid is None:
            return True
        # The zygote's child: the zygote reaps it and reports the exit. If the zygote is gone
        # too, init reaps it and only its disappearance tells.
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.reaped.done() and _process_exists(self.pid):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait({self.reaped}, timeout=min(remaining, 0.05))
        if not self.reaped.done():
            # Gone, but the zygote's report of how it ended may be a moment behind (it reaps,
            # then writes): wait for it briefly, so the exit reads "killed by signal 9" and not
            # a bare "exited". A dead zygote never reports; the wait is bounded.
            await asyncio.wait({self.reaped}, timeout=EXIT_REPORT_WAIT_S)
        return True

    def status_text(self) -> str:
        """How the process ended, e.g. " (killed by signal 9)"; empty while unknown."""
        if self.exit_status is None:
            return ""
        if self.exit_status < 0:
            return f" (killed by signal {-self.exit_status})"
        return f" (exit status {self.exit_status})"

    async def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send a control request (with `fields`, contract/worker.py) and wait for its answer.
        Raises WorkerError or TimeoutError."""
        if self.exited.done() or self._writer is None:
            raise WorkerError(f"worker of {self.tenant} is gone")
        op_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[op_id] = future
        self._writer.write(wire.encode({"id": op_id, "op": op, **fields}))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(op_id, None)

    async def wait_exited(self, timeout: float) -> bool:
        """Wait up to `timeout` for the process to be gone; False if it still runs."""
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            return True
        except TimeoutError:
            return False

    async def kill_and_reap(self, timeout: float = REAP_TIMEOUT_S) -> None:
        """SIGKILL, then wait (bounded) until the process is reaped."""
        self.kill(signal.SIGKILL)
        await self.wait_exited(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker; a process that is already gone is not an error."""
        if not self.exited.done():
            self._signal(sig)

    def _signal(self, sig: int) -> None:
        if self.pid is not None and not self.reaped.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class ZygoteClient:
    """One zygote process for one app; forks workers on request."""

    def __init__(self, app: str, code_path: str | None, on_exit: Callable[[int, int], None],
                 on_lost: Callable[[], None] | None = None) -> None:
        self.on_lost = on_lost
        self.app = app
        self.code_path = code_path
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self.alive = False

    async def start(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tenant.zygote", str(theirs.fileno()), self.app,
                self.code_path or "", pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.pid = self.process.pid
        try:
            ready = await asyncio.wait_for(self._ready, timeout)
        except BaseException:
            self.close()
            raise
        if ready.get("preload_error"):
            log.warning("zygote for %s could not preload the app: %s", self.app,
                        ready["preload_error"])
        self.alive = True
        log.info("zygote for %s ready (pid %s)", self.app, self.pid)

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            message = json.loads(data)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("event") == "ready" and self._ready and not self._ready.done():
                self._ready.set_result(message)
            elif message.get("event") == "exit":
                self.on_exit(int(message["pid"]), int(message["status"]))

    def _lost(self) -> None:
        was_alive = self.alive
        if was_alive:
            log.warning("zygote for %s (pid %s) is gone; fresh interpreters until it is back",
                        self.app, self.pid)
        self.close()
        if was_alive and self.on_lost is not None:
            self.on_lost()
        error = WorkerError("zygote is gone")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

    async def spawn(self, spec_json: str, fds: tuple[int, int], timeout: float = 10.0) -> int:
        if not self.alive or self._sock is None:
            raise WorkerError("zygote is not running")
        op_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[op_id] = future
        message = json.dumps({"op": "spawn", "id": op_id, "spec": json.loads(spec_json)}).encode()
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))
        self._sock.sendmsg([message], [rights])
        reply = await asyncio.wait_for(future, timeout)
        if "pid" not in reply:
            raise WorkerError(f"zygote refused to spawn: {reply.get('error')}")
        return int(reply["pid"])

    def close(self) -> None:
        self.alive = False
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def stop(self, timeout: float = 5.0) -> None:
        self.close()  # end of file on its channel makes it exit
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


class Spawner:
    """Starts workers: zygote first, a fresh interpreter when the zygote is unavailable."""

    def __init__(self, *, use_zygote: bool, zygote_wait_s: float = 2.0) -> None:
        self.use_zygote = use_zygote
        self.zygote_wait_s = zygote_wait_s
        self.zygotes: dict[tuple[str, str | None], ZygoteClient] = {}
        self._zygote_starting: dict[tuple[str, str | None], asyncio.Task[None]] = {}
        self._handles_by_pid: dict[int, WorkerHandle] = {}
        self.fresh_spawns = 0
        self.zygote_spawns = 0
        self.closing = False

    async def start_zygote(self, app: str, code_path: str | None = None) -> None:
        key = (app, code_path)
        zygote = ZygoteClient(app, code_path, self._on_zygote_child_exit,
                              on_lost=lambda: self._restart_later(key))
        await zygote.start()
        self.zygotes[key] = zygote

    def _restart_later(self, key: tuple[str, str | None]) -> None:
        """A lost zygote comes back by itself, a second later (so one that keeps dying at
        start cannot spin the router); spawns meanwhile use fresh interpreters."""
        def restart() -> None:
            if not self.closing:
                self._ensure_zygote_soon(key)

        if not self.closing:
            asyncio.get_running_loop().call_later(ZYGOTE_RESTART_DELAY_S, restart)

    def prestart_zygote(self, app: str, code_path: str | None = None) -> None:
        """Start the zygote for `app` in the background, so the first spawn finds it ready."""
        self._ensure_zygote_soon((app, code_path))

    def _ensure_zygote_soon(self, key: tuple[str, str | None]) -> None:
        """Restart a missing zygote in the background; spawns use fresh interpreters meanwhile."""
        task = self._zygote_starting.get(key)
        if task is not None and not task.done():
            return

        async def restart() -> None:
            try:
                await self.start_zygote(*key)
            except Exception as exc:
                log.error("zygote for %s failed to start: %s", key[0], exc)

        self._zygote_starting[key] = asyncio.ensure_future(restart())

    async def _zygote_for(self, key: tuple[str, str | None]) -> ZygoteClient | None:
        """The live zygote for `key`, waiting up to `zygote_wait_s` for one that is starting.

        Worth the wait: a fresh interpreter costs about as long (~0.2 s of imports) and its
        worker keeps four times the private memory of a forked one for its whole life.
        """
        zygote = self.zygotes.get(key)
        if zygote is not None and zygote.alive:
            return zygote
        self._ensure_zygote_soon(key)
        starting = self._zygote_starting.get(key)
        if starting is not None and not starting.done() and self.zygote_wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(starting), self.zygote_wait_s)
        zygote = self.zygotes.get(key)
        return zygote if zygote is not None and zygote.alive else None

    def _on_zygote_child_exit(self, pid: int, status: int) -> None:
        handle = self._handles_by_pid.pop(pid, None)
        if handle is not None:
            handle.exit_status = status
            if not handle.reaped.done():
                handle.reaped.set_result(None)

    async def spawn(self, spec: wire.WorkerSpec, listen_sock: socket.socket,
                    on_event: EventCallback) -> WorkerHandle:
        """Start a worker for `spec` serving on `listen_sock`; its unsolicited control events go
        to `on_event`. Returns once the process exists; await `handle.ready` for readiness."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handle = WorkerHandle(spec.tenant, spec.port, ours, on_event)
        fds = (listen_sock.fileno(), theirs.fileno())
        spec_json = spec.to_json()
        key = (spec.app, spec.code_path)
        try:
            zygote = await self._zygote_for(key) if self.use_zygote else None
            if zygote is not None:
                try:
                    handle.pid = await zygote.spawn(spec_json, fds)
                    self._handles_by_pid[handle.pid] = handle
                    self.zygote_spawns += 1
                except (WorkerError, OSError, TimeoutError) as exc:
                    log.warning("zygote spawn failed (%s); using a fresh interpreter", exc)
            if handle.pid is None:
                handle.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tenant", spec_json, str(fds[0]), str(fds[1]),
                    pass_fds=fds, cwd=spec.code_path or None,
                )
                handle.pid = handle.process.pid
                self.fresh_spawns += 1
        finally:
            theirs.close()
        await handle.open()
        return handle

    async def close(self) -> None:
        self.closing = True
        for task in self._zygote_starting.values():
            task.cancel()
        await asyncio.gather(*(z.stop() for z in self.zygotes.values()), return_exceptions=True)
        self.zygotes.clear()
