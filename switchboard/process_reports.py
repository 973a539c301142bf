"""What a tenant's worker reports, as `TenantProcess` (switchboard/process.py) records it:
its `ready` event, unsolicited events (checkpoints, write failures, declared busy work, its
own request activity, a debug console), health pings and the memory read at each, and the
`TenantInfo` operators see. The events and replies are contract/worker.py's.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from contract import worker as wire
from switchboard import attach, procfs
from switchboard.api import TenantInfo
from switchboard.errors import WorkerError
from switchboard.metrics import Buckets
from switchboard.process_core import TenantCore
from switchboard.states import LIVE, TenantState

S = TenantState
MISSED_PINGS_BEFORE_KILL = 3


class WorkerReports(TenantCore):
    __slots__ = ()

    def _note_ready(self, ready: dict[str, Any]) -> None:
        """What a worker's `ready` event says (contract/worker.py)."""
        self.generation = ready.get("generation")
        _observe(self.env.counters.restore_seconds, ready.get("restore_s"))
        _observe(self.env.counters.restore_bytes, ready.get("restore_bytes"))
        self.warnings = list(ready.get("warnings") or []) or None
        for warning in self.warnings or ():
            self.log.warning("tenant %s: %s", self.name, warning)

    def _on_event(self, message: dict[str, Any]) -> None:
        """An unsolicited event from this tenant's worker (contract/worker.py)."""
        event = message.get("event")
        if event == wire.CHECKPOINTED:  # any checkpoint: asked for, or written at stop
            self.env.counters.checkpoints += 1
            _observe(self.env.counters.checkpoint_seconds, message.get("duration_s"))
            _observe(self.env.counters.checkpoint_bytes, message.get("bytes"))
            self.generation = message.get("generation")
            self.last_checkpoint_at = time.time()
            if self.last_error and self.last_error.startswith("checkpoint"):
                self.last_error = None
        elif event == wire.CHECKPOINT_FAILED:
            self.last_error = f"checkpoint failed: {message.get('error')}"
            self.log.error("tenant %s: %s", self.name, self.last_error)
        elif event == wire.WRITES_UNAVAILABLE:
            # The journal failed (disk full...): reads go on, writes get 503, the worker retries.
            self.writes_unavailable = str(message.get("error"))
            self.last_error = self.writes_unavailable
            self.env.counters.writes_unavailable += 1
            self.log.error("tenant %s: %s", self.name, self.writes_unavailable)
        elif event == wire.BUSY:
            work = [str(name) for name in message.get("work") or ()]
            self.busy_work = work or None
            if not work:
                self.busy_since = None
                self.last_active = time.monotonic()  # idle time counts from the work's end
            elif self.busy_since is None:
                self.busy_since = time.monotonic()
        elif event == wire.ACTIVITY:
            self._note_activity(message)
        elif event in attach.EVENTS:
            self.debug = attach.on_event(self.name, self.debug, message)
        elif event == wire.WRITES_RESTORED:
            self.log.info("tenant %s accepts writes again after %.1fs", self.name,
                     float(message.get("unavailable_s") or 0))
            if self.last_error == self.writes_unavailable:
                self.last_error = None
            self.writes_unavailable = None

    def _note_activity(self, message: dict[str, Any]) -> None:
        """The worker's own request count (contract/worker.py `activity`): in direct mode the
        only sign of requests that never passed through the router."""
        in_flight = message.get("in_flight")
        self.worker_in_flight = in_flight if isinstance(in_flight, int) else 0
        requests = message.get("requests")
        if (isinstance(requests, int) and requests > 0) or self.worker_in_flight:
            self.last_active = time.monotonic()
        at = message.get("last_request_at")
        if isinstance(at, int | float) and at > (self.last_request_at or 0):
            self.last_request_at = float(at)

    async def ping(self) -> None:
        """One health ping, which also reads the worker's memory. The third miss in a row
        kills the worker, SIGTERM then SIGKILL (its exit is recorded as a crash, and the next
        request starts a new one)."""
        handle = self.worker
        if handle is None or self.state is not S.RUNNING or self._pinging:
            return
        if attach.pings_paused(self.debug):  # at a breakpoint or a console statement
            return
        timeout = self.env.config.ping_timeout_s
        self._pinging = True  # one ping at a time, so misses count in a row
        try:
            reply = await handle.request(wire.PING, timeout)
            self.ping_misses = 0
            self._note_ping(reply)
            self.env.counters.fsync_seconds.merge(reply.get("fsync"))
        except TimeoutError:
            if attach.pings_paused(self.debug):
                return  # the worker said it would block (a breakpoint): not a miss
            self.ping_misses += 1
            self.log.warning("tenant %s missed a health ping (%d in a row)", self.name,
                        self.ping_misses)
            if self.ping_misses >= MISSED_PINGS_BEFORE_KILL:
                self.env.counters.unresponsive_kills += 1
                self.kill_reason = f"unresponsive (missed {self.ping_misses} health pings)"
                self.log.error("tenant %s is unresponsive; killing it", self.name)
                self.ping_misses = 0
                handle.kill(signal.SIGTERM)  # a wedged event loop cannot act on it: a deadline
                if not await handle.wait_exited(timeout):
                    handle.kill(signal.SIGKILL)
            return
        except WorkerError:
            return  # it exited; the exit watcher records it
        finally:
            self._pinging = False
        if handle.pid is not None:
            self.rss_bytes = procfs.rss_bytes(handle.pid)
            self.uss_bytes = procfs.uss_bytes(handle.pid)

    def _note_ping(self, reply: dict[str, Any]) -> None:
        def count(key: str) -> int | None:
            value = reply.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        self.journal_pos = count("journal_pos")
        self.journal_since_snapshot = count("journal_since_snapshot")
        self.dirty = bool(reply.get("dirty"))
        self.unsaved = bool(reply.get("unsaved"))
        if count("generation") is not None:
            self.generation = count("generation")

    @property
    def over_memory_limit(self) -> bool:
        limit = self.env.config.max_worker_rss_bytes
        return bool(limit) and self.rss_bytes is not None and self.rss_bytes > limit

    def info(self) -> TenantInfo:
        worker = self.worker
        retry_in = None if self.retry_at is None else max(0.0, self.retry_at - time.monotonic())
        record = self.record
        # Cluster mode: where a worker listens only while it runs on this host (DESIGN.md).
        address = (None if self.env.config.cluster_url and self.state not in LIVE
                   else self.address)
        return TenantInfo(
            name=self.name, state=self.state.value,
            pid=worker.pid if worker is not None and self.state in LIVE else None,
            port=address if isinstance(address, int) else None,
            socket=address if isinstance(address, str) else None,
            restarts=self.restarts, last_request_at=self.last_request_at,
            in_flight=self.in_flight, requests=self.requests, bytes_in=self.bytes_in,
            bytes_out=self.bytes_out, created_at=record.created_at, started_at=self.started_at,
            last_checkpoint_at=self.last_checkpoint_at, generation=self.generation,
            last_error=self.last_error or ("; ".join(self.warnings or ()) or None),
            retry_at=None if retry_in is None else time.time() + retry_in,
            moved_to=record.moved_to, host=record.owner, epoch=record.epoch,
            last_exit=self.last_exit, rss_bytes=self.rss_bytes, uss_bytes=self.uss_bytes,
            writes_unavailable=self.writes_unavailable, busy=self.busy_work or [],
            waiting=self.waiting, last_error_at=self.last_error_at if self.last_error else None,
            journal_pos=self.journal_pos, journal_since_snapshot=self.journal_since_snapshot,
            dirty=self.dirty, unsaved=self.unsaved, start_ema_s=self.start_ema_s,
            code_version=self.code_version,
            attached=self.debug.users() if self.debug is not None else [],
        )


def _observe(histogram: Buckets, value: Any) -> None:
    """Add a number a worker reported (contract/worker.py); one it left out is skipped."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        histogram.observe(value)
