"""A tenant changing hosts: the part of `TenantProcess` (switchboard/process.py) that a
migration (switchboard/migration.py, switchboard/receiving.py) and cluster mode
(switchboard/cluster/) call. Same lock and state rules as switchboard/process_core.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from contract import worker as wire
from switchboard import listen
from switchboard.directory import TenantRecord
from switchboard.errors import WorkerError
from switchboard.process_core import TenantCore
from switchboard.spawner import BootFailure, WorkerHandle
from switchboard.states import LIVE, TenantState

S = TenantState


class MovingWorker(TenantCore):
    __slots__ = ()

    async def stop_for_move(self, drain_timeout_s: float) -> WorkerHandle | None:
        """The switch of a migration; the caller holds `lock`. New requests wait from now on
        (as for a start), the ones in flight get up to `drain_timeout_s` to finish, then the
        worker stops without a final checkpoint: its journal is the tail the target replays.
        Returns the worker, which may still be exiting (its journal is final): wait for its
        `exited` before the tenant may start here again."""
        self._note_exit_if_gone()
        if self.state is S.FAILED:
            self.retry_at = None
            self._transition(S.STOPPED)
        handle = self.worker
        if handle is None or self.state not in LIVE:
            return None
        self._transition(S.STOPPING)
        deadline = time.monotonic() + drain_timeout_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        if self.in_flight:
            self.log.warning("tenant %s: %d requests still in flight after %gs; stopping anyway",
                             self.name, self.in_flight, drain_timeout_s)
        await self._stop_locked("moving to another host", final_checkpoint=False,
                                wait_exit=False)
        return handle

    def set_record(self, record: TenantRecord) -> None:
        """A new placement (caller holds `lock`): moved away (state `moved`), or back here."""
        self.record = record
        self._address = None
        if record.moved_to and self.state is not S.MOVED:
            self._transition(S.MOVED)
        elif not record.moved_to and self.state is S.MOVED:
            self._transition(S.STOPPED)

    async def spawn_parked(self, socket_path: Path, timeout_s: float) -> WorkerHandle:
        """A migration's target (switchboard/receiving.py): start a worker for this tenant,
        not yet owned here, listening on `socket_path`, that restores the staged snapshot and
        waits (contract/worker.py `park`), so the switch does not wait for that restore.
        BootFailure when it does not get that far within `timeout_s`."""
        loop = asyncio.get_running_loop()
        parked: asyncio.Future[dict[str, Any]] = loop.create_future()

        def on_event(message: dict[str, Any]) -> None:
            if message.get("event") != wire.PARKED:
                self._on_event(message)
            elif not parked.done():
                parked.set_result(message)

        try:
            sock = listen.bind_unix(socket_path, self.env.worker_gid)
        except OSError as exc:
            raise BootFailure(f"cannot listen on {socket_path}: {exc.strerror}") from exc
        spec = dataclasses.replace(self._spec(), socket_path=str(socket_path), park=True)
        try:
            handle = await self.env.spawner.spawn(spec, sock, on_event)
        except (OSError, WorkerError) as exc:
            raise BootFailure(f"cannot start a worker: {exc}") from exc
        finally:
            sock.close()
        await asyncio.wait({parked, handle.ready}, timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if parked.done():
            return handle
        await handle.kill_and_reap()
        failure = handle.ready.exception() if handle.ready.done() else None
        raise BootFailure(str(failure) if failure else
                          f"the worker did not restore within {timeout_s:g}s")

    async def resume_parked(self, handle: WorkerHandle) -> bool:
        """Caller holds `lock`; the tenant is this host's now, stopped, and its journal tail is
        in place: the parked worker replays it and serves. False when it cannot (it is gone;
        the next request starts a worker as usual)."""
        if self.state is not S.STOPPED or handle.exited.done():
            await handle.kill_and_reap()
            return False
        requested = time.monotonic()
        self._transition(S.STARTING)
        timeout = self.env.config.start_timeout_s
        try:
            await handle.request(wire.RESUME, timeout)
            ready = await asyncio.wait_for(asyncio.shield(handle.ready), timeout)
        except (WorkerError, BootFailure, TimeoutError) as exc:
            self.log.error("tenant %s: its parked worker did not resume (%s); it starts anew",
                           self.name, exc or type(exc).__name__)
            await handle.kill_and_reap()
            self._transition(S.STOPPED)
            return False
        self._note_ready(ready)
        self._running(handle, requested, requested)
        return True

    def placed(self, record: TenantRecord) -> None:
        """Cluster mode (switchboard/cluster/routing.py): `record` is where the tenant lives
        now. With moved_to (its live owner's router) it is forwarded there (MOVED); without,
        a MOVED tenant may be started (claimed) here again on its next request."""
        self.record = record
        if record.moved_to and self.state in (S.STOPPED, S.FAILED):
            self._transition(S.MOVED)
        elif not record.moved_to and self.state is S.MOVED:
            self._transition(S.STOPPED)

    async def lose(self, why: str) -> bool:
        """Cluster mode: this host does not own the tenant any more (or lost its lease): stop
        the worker without a final checkpoint (its writes would be fenced anyway)."""
        async with self.lock:
            self._note_exit_if_gone()
            return await self._stop_locked(why, final_checkpoint=False)
