"""The worker's recent requests, for the console's `requests()` (runs in the tenant worker).

An ASGI middleware keeps the last MAX_REQUESTS HTTP requests in a ring buffer: method, path,
status, when it started and how long it took. A bounded deque: its memory does not grow with
traffic, and the cost per request is two clock reads and an append.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

MAX_REQUESTS = 100
Message = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int | None  # None: the app never started a response (it raised)
    started_at: float  # Unix seconds
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """ASGI middleware that records each HTTP request; WebSocket and lifespan pass through."""

    def __init__(self, app: ASGIApp, size: int = MAX_REQUESTS) -> None:
        self.app = app
        # Plain tuples (RequestRecord's fields): made on every request, so the cheapest kind.
        self.recent: collections.deque[tuple[str, str, int | None, float, float]] = (
            collections.deque(maxlen=size))

    def snapshot(self) -> list[dict[str, Any]]:
        """The recorded requests, oldest first."""
        return [RequestRecord(*fields).to_json() for fields in self.recent]

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.time()
        started = time.monotonic()
        status: int | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.recent.append((scope.get("method", ""), scope.get("path", ""), status,
                                started_at, round((time.monotonic() - started) * 1000, 3)))
