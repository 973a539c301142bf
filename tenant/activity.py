"""The worker's own count of the requests it serves, reported to the router as the
`activity` control event (contract/worker.py). Runs in the tenant worker.

In direct mode the front server sends a resident tenant's requests straight to its worker, so
the router sees none of them; without this report it would swap out a tenant in full use.
The cost per request is two integer updates and a clock read; at most one frame per
ACTIVITY_INTERVAL_S goes to the router, and none while nothing happens, except one at once
when the last open request ends after a report that said some were open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from contract.worker import ACTIVITY, ACTIVITY_INTERVAL_S

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], None]


class ActivityMeter:
    """An ASGI wrapper around the tenant's app that counts HTTP requests and WebSockets."""

    def __init__(self, app: Any, send_event: Send,
                 interval_s: float = ACTIVITY_INTERVAL_S) -> None:
        self.app = app
        self.send_event = send_event
        self.interval_s = interval_s
        self.requests = 0
        self.in_flight = 0
        self.last_request_at: float | None = None
        self._reported = (0, 0)  # (requests, in_flight) at the last report
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.requests += 1
        self.in_flight += 1
        self.last_request_at = time.time()
        self._schedule()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._reported[1]:
                # The router last heard "in flight": tell it now that nothing is, so the
                # tenant counts as idle (evictable) without waiting for the next tick.
                self.close()
                self.report()
            else:
                self._schedule()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.report)

    def report(self) -> None:
        """Send what changed since the last report; keep reporting while requests are open,
        so a long one (a WebSocket) keeps its tenant resident."""
        self._timer = None
        now = (self.requests, self.in_flight)
        if now != self._reported or self.in_flight:
            self.send_event({"event": ACTIVITY, "requests": self.requests - self._reported[0],
                             "in_flight": self.in_flight,
                             "last_request_at": self.last_request_at})
            self._reported = now
        if self.in_flight:
            self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
