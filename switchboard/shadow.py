"""A shadow restore, the first step of `switchboard upgrade` (router side).

A shadow worker (tenant/shadow.py) of the version being upgraded to restores the tenant's
newest snapshot and journal (schema upgrades included) next to the live worker, which keeps
serving: it reads the tenant's files, never appends, takes no writer's lock and is not
routed. The router then asks it for a health ping and one `GET /` on its own socket
(`<data-dir>/console/<id>.shadow.sock`, snapshots/layout.py). Only if both answer (below 500)
does the upgrade switch; otherwise UpgradeFailed carries why: the shadow's traceback from its
`boot_failed` event, or its answer, or the tail of what it wrote on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import sys
from pathlib import Path

from contract import worker as wire
from snapshots.layout import DataLayout
from switchboard import listen
from switchboard.config import Config
from switchboard.errors import UpgradeFailed, WorkerError
from switchboard.process import TenantProcess
from switchboard.spawner import BootFailure, WorkerHandle

log = logging.getLogger("switchboard.shadow")

MIN_RESTORE_TIMEOUT_S = 60.0  # a fresh interpreter, imports and the whole restore
HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
MAX_STDERR_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024


async def shadow_restore(tenant: TenantProcess, layout: DataLayout, config: Config,
                         version: str, code_path: str) -> None:
    """Restore `tenant` in a shadow worker of `version` and check that it answers. Returns
    when it did (the shadow is stopped by then); raises UpgradeFailed otherwise."""
    layout.ensure_console_dir()
    path = layout.shadow_socket_path(tenant.record.id)
    if len(str(path).encode()) > listen.MAX_UNIX_PATH_BYTES:
        raise UpgradeFailed(f"the data dir's path is too long for a shadow socket ({path})")
    spec = dataclasses.replace(tenant.worker_spec(), code_path=code_path, code_version=version,
                               socket_path=str(path), port=0, log_file=None)
    listening = listen.bind_unix(path, None)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    handle = WorkerHandle(f"{tenant.name} (shadow)", 0, ours, lambda message: None)
    fds = (listening.fileno(), theirs.fileno())
    try:
        handle.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tenant.shadow", spec.to_json(), str(fds[0]), str(fds[1]),
            pass_fds=fds, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        handle.pid = handle.process.pid
    finally:
        theirs.close()
        listening.close()
    stderr = asyncio.ensure_future(_read_tail(handle.process.stderr))
    await handle.open()
    log.info("tenant %s: shadow restore on %s (pid %s)", tenant.name, version, handle.pid,
             extra={"tenant": tenant.name})
    try:
        await _check(handle, path, version, max(config.start_timeout_s, MIN_RESTORE_TIMEOUT_S),
                     stderr)
    finally:
        with contextlib.suppress(WorkerError, TimeoutError):
            await handle.request(wire.STOP, config.ping_timeout_s)
        if not await handle.wait_exited(STOP_TIMEOUT_S):
            await handle.kill_and_reap()
        handle.close()
        stderr.cancel()
        with contextlib.suppress(OSError):
            path.unlink()


async def _check(handle: WorkerHandle, path: Path, version: str, timeout_s: float,
                 stderr: asyncio.Future[bytes]) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(handle.ready), timeout_s)
    except BootFailure as exc:
        details = str(exc)
        if not details.strip().startswith("Traceback"):
            details += "\n" + await _tail(stderr)
        raise UpgradeFailed(f"the shadow restore on {version} failed", details) from exc
    except TimeoutError:
        raise UpgradeFailed(f"the shadow restore on {version} did not finish within "
                            f"{timeout_s:g}s") from None
    try:
        await handle.request(wire.PING, HEALTH_TIMEOUT_S)
        status, answer = await asyncio.wait_for(_get_root(path), HEALTH_TIMEOUT_S)
    except (WorkerError, OSError, TimeoutError, ValueError) as exc:
        raise UpgradeFailed(f"the shadow worker on {version} did not answer its health "
                            f"check: {exc}", await _tail(stderr)) from exc
    if status >= 500:
        raise UpgradeFailed(f"the shadow worker on {version} answered GET / with {status}",
                            answer.decode("utf-8", "replace") + "\n" + await _tail(stderr))


async def _get_root(path: Path) -> tuple[int, bytes]:
    """One `GET /` over the shadow's socket: (status, the answer's first bytes)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: shadow\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read(MAX_ANSWER_BYTES)
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {answer[:80]!r}")
    return int(status_line[1]), answer


async def _read_tail(stream: asyncio.StreamReader | None) -> bytes:
    kept = b""
    if stream is None:
        return kept
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-MAX_STDERR_BYTES:]
    return kept


async def _tail(stderr: asyncio.Future[bytes]) -> str:
    """What the shadow wrote on stderr, once it has exited (briefly waited for)."""
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(stderr), 2.0)
    if stderr.done() and not stderr.cancelled():
        return stderr.result().decode("utf-8", "replace")
    return ""
