"""The live debug console inside a tenant worker: its listener (runs in the tenant worker).

`switchboard attach NAME` (ops/attach.py) talks to this module over a Unix socket; the wire
(path, modes, frames) is documented in contract/console.py. The router asks for it with the
control op `console_open`; only then does the worker listen, and it stops when its last
session ends (or nobody connected in time): no socket exists for a tenant nobody debugs.

Who may connect: console/ is 0700 and the socket 0600 (the service user's), and each peer's
uid is read with SO_PEERCRED and must be the worker's own; anyone else is refused and logged.
Every attach and detach is logged in the tenant's log (who, read-only or not, how long) and
reported to the router (the `attached` event), which logs it too and keeps the tenant
resident (no idle stop, no eviction) while a session is open. What a session offers is in
tenant/session.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.console import CONNECT_TIMEOUT_S, HELLO_TIMEOUT_S, MAX_LINE_BYTES, decode, encode
from tenant.breakpoints import Breakpoints
from tenant.checkpoint import Checkpointer
from tenant.context import TenantContext
from tenant.requestlog import RequestLog
from tenant.session import ConsoleSession, user_name
from tenant.statements import install_routing

log = logging.getLogger("switchboard.tenant.console")

Notify = Callable[[dict[str, Any]], None]


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
        self._expect_until = 0.0  # loop time: a client asked for by console_open may come
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
        loop = asyncio.get_running_loop()
        self._expect_until = loop.time() + CONNECT_TIMEOUT_S
        self._unused_timer = loop.call_later(CONNECT_TIMEOUT_S, self._close_if_unused)
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
            # The last session ended and no other client was asked for: stop listening (one
            # still expected is left to the timer, which closes if it never comes).
            if not self.sessions and self._server is not None and (
                    asyncio.get_running_loop().time() >= self._expect_until):
                self._stop_listening()
