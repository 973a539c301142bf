"""The one adapter over uvicorn: start, run, drain and stop a server step by step.

Used by the router's admin listener (switchboard/server.py) and by every tenant worker
(tenant/runtime.py). Both need more than `uvicorn.Server.serve()` gives: the worker serves a
socket the router bound before it was forked, answers the control channel while it serves,
and drains faster than uvicorn's own shutdown (which sleeps 0.1 s unconditionally, and a new
tenant waits for an evicted one to stop); the router needs its admin listener up before it
announces its ports, and a bind failure as an exception, not a process exit.

That takes uvicorn's private API, all of it here and nowhere else:

    Server.lifespan = Config.lifespan_class(config)   serve() sets it; startup() alone needs it
    Server.startup(sockets=...), Server.main_loop()   the two halves of serve()
    Server.servers                                    the asyncio servers startup() created
    Server.server_state.connections / .tasks          open connections and running requests
    <protocol>.shutdown()                             close a connection once idle

pyproject.toml pins uvicorn to the range this was checked against; a new uvicorn version is
admitted after the worker and admin tests pass with it. uvicorn is imported inside the
functions, so `import contract.serving` stays cheap (the router does not import it until the
admin listener starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

__all__ = ["Server", "ServerStartError"]


class ServerStartError(OSError):
    """The server could not start listening (the address is in use, say); uvicorn has logged
    why. An OSError, as a failed bind is."""


class Server:
    """One uvicorn server for `app`; `options` are `uvicorn.Config` keyword arguments.

    Nothing listens until `start`. Then `run` serves (it returns once `should_exit` is set,
    or is cancelled), and `drain` or `shutdown` stops it.
    """

    def __init__(self, app: Any, **options: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, **options)
        config.load()
        self._server: uvicorn.Server = uvicorn.Server(config)
        # serve() would set this; start() runs startup() without serve().
        self._server.lifespan = config.lifespan_class(config)

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on `sockets` (already bound, e.g. by the router before the fork), or else on
        the configured host and port. ServerStartError when it cannot."""
        try:
            await self._server.startup(sockets=sockets)
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind
            raise ServerStartError(f"the server could not start (uvicorn exit {exc.code})"
                                   ) from exc
        if not self._server.started:
            raise ServerStartError("the server did not start")

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, with the addresses really bound (port 0 resolved)."""
        return [sock for server in self._server.servers for sock in server.sockets]

    @property
    def should_exit(self) -> bool:
        return self._server.should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._server.should_exit = value

    async def run(self) -> None:
        """Serve until `should_exit` is set: uvicorn's housekeeping tick (the Date header,
        max_requests). Connections are served by the event loop whether or not this runs."""
        await self._server.main_loop()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, close idle keep-alive connections at once, let responses in flight
        finish (up to `timeout_s`), then cancel what is left.

        Unlike `shutdown`, never sleeps when nothing is in flight: on the eviction path a new
        tenant waits for this stop.
        """
        for listener in self._server.servers:
            listener.close()
        state = self._server.server_state
        for connection in list(state.connections):
            connection.shutdown()  # closes an idle connection now, a busy one after its response
        deadline = time.monotonic() + timeout_s
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()
        for listener in self._server.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1)

    async def shutdown(self) -> None:
        """uvicorn's graceful shutdown: stop accepting, wait for connections to finish (up to
        the configured timeout_graceful_shutdown), run the lifespan shutdown."""
        await self._server.shutdown()
