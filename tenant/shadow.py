"""`python -m tenant.shadow SPEC_JSON LISTEN_FD CONTROL_FD`: a shadow restore for `upgrade`.

Runs in a shadow worker: a fresh interpreter of the version being upgraded to (the spec's
code_path first on sys.path). It restores the tenant's newest snapshot and journal exactly as
a worker would (tenant/recovery.py, schema upgrades included) but writes nothing: it takes
no writer's lock (the tenant's live worker holds it), opens no journal for appending, never
checkpoints, and refuses every HTTP method but GET and HEAD. It is not routed: the router
asks it one health request on its own socket, then stops it.

Control channel: the worker's (contract/worker.py), reduced to `ready` or `boot_failed` (with
the whole traceback as "error", so the operator reads why the new version cannot restore),
`ping` and `stop`. It exits 0 after stop, BOOT_FAILED_EXIT when the restore failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from contract.serving import Server
from contract.worker import (
    BOOT_FAILED,
    BOOT_FAILED_EXIT,
    PING,
    PROTOCOL_VERSION,
    READY,
    STOP,
    WorkerSpec,
)
from tenant.context import TenantContext, activate
from tenant.control import open_channel
from tenant.recovery import recover_state, store_for
from tenant.segments import load_all

Message = dict[str, Any]
READ_METHODS = frozenset({"GET", "HEAD"})


class ReadOnlyApp:
    """ASGI middleware: only GET and HEAD reach the app; anything else is a 405."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope.get("method") not in READ_METHODS:
            body = b'{"error": "a shadow restore serves reads only"}'
            await send({"type": "http.response.start", "status": 405, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


async def run_shadow(spec: WorkerSpec, listen_fd: int, control_fd: int) -> int:
    from tenant.runtime import load_app

    channel = await open_channel(control_fd)
    try:
        app = load_app(spec.app)
        recovered = recover_state(app, store_for(spec), spec.tenant)
        load_all(recovered.state)  # segments: now, not after the live worker prunes files
        if app.asgi is None:
            raise TypeError(f"{spec.app} has no asgi app")
    except BaseException:
        channel.send({"event": BOOT_FAILED, "error": traceback.format_exc()})
        with contextlib.suppress(ConnectionError):
            await channel.writer.drain()
        return BOOT_FAILED_EXIT
    context = TenantContext(app, spec.tenant, recovered.state, journal=None,
                            journal_pos=recovered.journal_pos, code_version=spec.code_version)
    activate(context)
    server = Server(ReadOnlyApp(app.asgi), lifespan="off", log_config=None, access_log=False,
                    http="httptools", timeout_graceful_shutdown=2)
    await server.start(sockets=[socket.socket(fileno=listen_fd)])
    channel.send({"event": READY, "pid": 0, "port": 0, "journal_pos": recovered.journal_pos,
                  "generation": recovered.generation, "warnings": recovered.warnings,
                  "protocol": PROTOCOL_VERSION, "restore_s": 0.0,
                  "restore_bytes": recovered.snapshot_bytes})
    stop = asyncio.Event()

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == PING:
            return {"journal_pos": context.journal_pos, "generation": recovered.generation,
                    "schema_version": app.schema_version}
        if request.get("op") == STOP:
            stop.set()
            return {}
        raise ValueError(f"a shadow worker answers ping and stop only, not {request.get('op')!r}")

    tasks = {asyncio.ensure_future(channel.serve(handle)), asyncio.ensure_future(stop.wait()),
             asyncio.ensure_future(server.run())}
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await server.drain(2.0)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.exit("usage: python -m tenant.shadow SPEC_JSON LISTEN_FD CONTROL_FD")
    spec = WorkerSpec.from_json(argv[0])
    if spec.code_path:
        sys.path.insert(0, spec.code_path)
    import setproctitle

    from tenant.limits import set_death_signal
    from tenant.runtime import configure_logging

    setproctitle.setproctitle(f"switchboard: shadow {spec.tenant} {spec.code_version}")
    set_death_signal(os.getppid())
    configure_logging(spec)
    return asyncio.run(run_shadow(spec, int(argv[1]), int(argv[2])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
