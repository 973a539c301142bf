"""The worker's side of lazy restore: the background load, and a damaged segment.

A segmented tenant (tenant/segments.py) is ready to serve once its snapshot's header and index
are read and the journal replayed (which loads only the segments its commands touch). Then:

- Background load: once the first response has gone out (or `FIRST_RESPONSE_WAIT_S` passed
  without one), the segments not loaded yet are decoded one at a time, yielding to the event
  loop between two, so a request that arrives meanwhile waits for at most one segment's
  decode; each one's bytes are read and verified in a thread while the one before decodes.
  The worker is complete after about one full restore's worth of decoding.
- A damaged segment (its checksum fails when it is loaded, in a request, a command or the
  background load): its file is moved aside (snapshots.segment_files.quarantine), the request
  being served gets 503 {"error": ..., "tenant"} with Retry-After (its response, whatever the
  app made of the error, is replaced, as DurabilityGuard does), and the worker exits without a
  checkpoint (`on_fatal`, DURABILITY_LOST_EXIT). Its next start restores the newest generation
  that does not need the moved file and replays the journal from there: nothing acknowledged
  is lost (a command that hit the damage was never acknowledged: it raised before its journal
  record was written). During the restore itself, the restore starts over the same way
  (tenant/recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from snapshots.errors import SegmentCorrupt
from snapshots.segment_files import quarantine
from snapshots.segments import SegmentEntry, read_segment
from tenant import segments
from tenant.context import TenantContext

log = logging.getLogger("switchboard.tenant")

FIRST_RESPONSE_WAIT_S = 0.2
RETRY_AFTER_S = 1

Message = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


class _Fault:
    error: SegmentCorrupt | None = None


_fault: ContextVar[_Fault | None] = ContextVar("segment_fault", default=None)


def watch_faults(tenant: str) -> None:
    """Install the fault hook: from now on a damaged segment's file is moved aside."""

    def on_fault(error: SegmentCorrupt, entry: SegmentEntry) -> None:
        moved = quarantine(entry)
        log.error("tenant %s: %s; moved %s aside, restarting from an older generation",
                  tenant, error, moved)
        mark = _fault.get()
        if mark is not None:
            mark.error = error
        if LazyLoader.current is not None:
            LazyLoader.current.fatal(error)

    segments.on_fault = on_fault


def _fetch(slot: Any) -> bytes | None:
    """A segment's verified bytes, or None when it was loaded meanwhile (in a thread)."""
    if slot.loaded or slot.entry is None:
        return None
    return read_segment(slot.entry)


class LazyLoader:
    """ASGI middleware that answers 503 for a request that hit a damaged segment, notes the
    first response, and loads the remaining segments in the background after it."""

    current: LazyLoader | None = None

    def __init__(self, app: ASGIApp, context: TenantContext,
                 on_fatal: Callable[[BaseException], None]) -> None:
        self.app = app
        self.context = context
        self.on_fatal = on_fatal
        self.responded = asyncio.Event()
        self.started = time.monotonic()
        self.loaded_s: float | None = None  # seconds from start() until every segment loaded
        self.loaded_at: float | None = None  # time.time() then (bench/segapp.py reports it)
        self.failed = False
        self._task: asyncio.Task[None] | None = None
        LazyLoader.current = self

    def start(self) -> None:
        self.started = time.monotonic()
        self._task = asyncio.ensure_future(self._load_rest())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        LazyLoader.current = None

    def fatal(self, error: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self.on_fatal(error)

    async def _load_rest(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.responded.wait(), FIRST_RESPONSE_WAIT_S)
        loop = asyncio.get_running_loop()
        count = 0
        while not self.failed:
            pending = segments.unloaded(self.context.state)
            if not pending:
                break
            # Read and verify in a thread (pread and BLAKE2b release the GIL), the next one
            # while this one decodes; decode here, one segment per event-loop step.
            ahead = loop.run_in_executor(None, _fetch, pending[0])
            for index, slot in enumerate(pending):
                try:
                    data = await ahead
                except SegmentCorrupt as exc:
                    slot.fault(exc)  # the worker restarts
                    return
                if index + 1 < len(pending):
                    ahead = loop.run_in_executor(None, _fetch, pending[index + 1])
                if data is not None:
                    slot.install(data)
                    count += 1
                await asyncio.sleep(0)  # requests first: at most one decode between them
                if self.failed:
                    ahead.cancel()
                    return
        if not self.failed:
            self.loaded_s = time.monotonic() - self.started
            self.loaded_at = time.time()
            if count:
                log.info("tenant %s: %d segments loaded in the background in %.3fs",
                         self.context.tenant, count, self.loaded_s)

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or self.loaded_at is not None:
            # Every segment is in: nothing left to load, so nothing to guard (the hot path).
            await self.app(scope, receive, send)
            return
        mark = _Fault()
        token = _fault.set(mark)
        replaced = started = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return
            if message["type"] == "http.response.start":
                if mark.error is not None:
                    replaced = True
                    await self._unavailable(send, mark.error)
                    return
                started = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.responded.set()

        try:
            await self.app(scope, receive, guarded_send)
        except SegmentCorrupt as exc:
            if started:
                raise
            if not replaced:
                replaced = True
                await self._unavailable(send, exc)
        finally:
            _fault.reset(token)

    async def _unavailable(self, send: Callable[[Message], Awaitable[None]],
                           error: SegmentCorrupt) -> None:
        body = json.dumps({"error": f"tenant {self.context.tenant} is restarting from an older "
                                    f"snapshot: {error.problem}",
                           "tenant": self.context.tenant}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
        self.responded.set()
