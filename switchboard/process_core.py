"""The core of `TenantProcess` (switchboard/process.py): one tenant's lifecycle.

`TenantCore` holds its state and the one function that changes it, the lifecycle lock, the
worker handle, boot failures and backoff, the single-flight start, stopping, exits and crashes,
and the per-tenant counters. The persisted part (name, port, epoch, pinned code...) is its
`TenantRecord`. What the worker reports is recorded by switchboard/process_reports.py, and
moving to another host is switchboard/process_moves.py; `TenantProcess` is all three.

Locking: every change of state happens under `lock`, the crash of a worker included (the exit
watcher takes the lock before it records the crash, and whoever holds the lock and finds the
worker gone records it first). So a request that arrives while its tenant is checkpointing,
stopping or being evicted waits for the lock and is served by the next worker.

What it does not decide: when to stop an idle tenant, whom to evict, how long a request may
wait. That is the supervisor's policy (switchboard/supervisor.py), which calls in here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from contract import worker as wire
from snapshots.layout import DataLayout
from switchboard import attach, listen, procfs, versions
from switchboard.api import CheckpointResult
from switchboard.config import Config
from switchboard.direct import DirectMap
from switchboard.directory import Directory, TenantRecord
from switchboard.errors import (
    SwitchboardError,
    TenantBusy,
    TenantUnavailable,
    UnknownTenant,
    WorkerError,
)
from switchboard.metrics import Counters
from switchboard.ports import PortPool
from switchboard.spawner import BootFailure, Spawner, WorkerHandle
from switchboard.states import LIVE, SERVING, TenantState, check_transition

if TYPE_CHECKING:
    from switchboard.process import TenantProcess

log = logging.getLogger("switchboard.process")
S = TenantState
CHECKPOINT_TIMEOUT_S = 3600.0
# Retry-After on a 503 (retry_after_s): the start-time average weighs the newest start this
# much; the waiting queue is assumed to drain this many requests per start time; the answer
# is kept within [1, 60] seconds.
START_EMA_WEIGHT = 0.3
WAITING_DRAINED_PER_START = 64
RETRY_AFTER_BOUNDS_S = (1, 60)


@dataclass
class ProcessEnv:
    """What every tenant process shares: the host's settings, the spawner, and the hooks into
    the supervisor's policy."""

    config: Config
    spawner: Spawner
    directory: Directory
    ports: PortPool
    layout: DataLayout
    worker_gid: int | None  # worker_group's gid: it may open run/ and the sockets in it
    counters: Counters
    checkpoint_slots: asyncio.Semaphore
    make_room: Callable[[TenantProcess], Awaitable[None]]
    closing: bool = False
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    direct: DirectMap | None = None  # direct mode: the front server's map of resident workers
    # Cluster mode (switchboard/cluster/routing.py): before a start, make this host the
    # tenant's owner (claim) or mark it moved to its live owner (raises TenantUnavailable
    # "moved"); and find a tenant another host created.
    take_ownership: Callable[[TenantProcess], Awaitable[None]] | None = None
    look_up: Callable[[str], Awaitable[TenantRecord | None]] | None = None
    lease_live: Callable[[], bool] | None = None  # this host holds its lease (serves at all)

    def run_in_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.background.discard)


class TenantCore:
    # Thousands are mapped and few run: slots, and nothing allocated until it is needed.
    __slots__ = ("_address", "_last_error", "_lock", "_oom_watch", "_pinging", "_start_task",
                 "boot_failures", "busy_since", "busy_work", "bytes_in", "bytes_out",
                 "crash_times", "debug", "dirty", "env", "generation", "held", "in_flight",
                 "journal_pos", "journal_since_snapshot", "kill_reason", "last_active",
                 "last_checkpoint_at", "last_error_at", "last_exit", "last_request_at",
                 "ping_misses", "record", "removed", "requests", "restarts", "retry_at",
                 "rss_bytes", "start_ema_s", "started_at", "state", "unsaved", "uss_bytes",
                 "waiting", "warnings", "worker", "worker_in_flight", "writes_unavailable")

    def __init__(self, record: TenantRecord, env: ProcessEnv) -> None:
        self.record = record
        self.env = env
        self._address: str | int | None = None
        self.state = S.MOVED if record.moved_to else S.STOPPED
        self._lock: asyncio.Lock | None = None
        self.worker: WorkerHandle | None = None
        self.removed = False  # set by `rm`: no start from now on
        self.debug: attach.DebugHold | None = None  # a debug console (switchboard/attach.py)
        self.worker_in_flight = 0  # open requests the worker reported (`activity` event)
        # Why no worker may start now (a migration whose outcome is not known yet), else None.
        self.held: str | None = None
        # crash and backoff
        self.restarts = 0
        self.boot_failures = 0
        self.retry_at: float | None = None  # monotonic time of the next start while backing off
        self._last_error: str | None = None
        self.last_error_at: float | None = None  # Unix seconds, when last_error was set
        self.last_exit: str | None = None  # how the last worker ended, and when
        self.crash_times: collections.deque[float] | None = None  # monotonic, once crashed
        self.warnings: list[str] | None = None
        self.ping_misses = 0
        self.rss_bytes: int | None = None  # at the last health ping
        self.uss_bytes: int | None = None  # its private memory, at the same ping
        # The worker's journal as of its last health ping (contract/worker.py "ping").
        self.journal_pos: int | None = None
        self.journal_since_snapshot: int | None = None
        self.dirty: bool | None = None  # changes no snapshot holds yet
        self.unsaved: bool | None = None  # dirty, and the last checkpoint failed
        # Exponential moving average of measured starts (request to ready), for Retry-After.
        self.start_ema_s: float | None = None
        self.kill_reason: str | None = None  # why the router killed the worker, if it did
        self._pinging = False
        self._oom_watch: procfs.OomWatch | None = None  # its cgroup's OOM count at start
        self.writes_unavailable: str | None = None  # why the worker refuses writes, if it does
        self.busy_work: list[str] | None = None  # the app's declared work in progress
        self.busy_since: float | None = None  # monotonic, while busy_work is not empty
        self._start_task: asyncio.Task[None] | None = None
        # activity
        self.last_request_at: float | None = None  # Unix seconds
        self.last_active = 0.0  # monotonic, for idle and LRU decisions
        self.started_at: float | None = None
        self.last_checkpoint_at: float | None = None
        self.generation: int | None = None
        self.in_flight = 0
        self.waiting = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def lock(self) -> asyncio.Lock:
        """The lifecycle lock: every change of state is made holding it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @last_error.setter
    def last_error(self, reason: str | None) -> None:
        if reason is not None and reason != self._last_error:
            self.last_error_at = time.time()
        self._last_error = reason

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The module's logger with this tenant's name on every line (the JSON `tenant` key,
        contract/logs.py)."""
        return logging.LoggerAdapter(log, {"tenant": self.name})

    @property
    def operating(self) -> bool:
        """An operation on the worker (start, stop, checkpoint) is under way."""
        return self._lock is not None and self._lock.locked()

    @property
    def address(self) -> str | int | None:
        """Where the worker listens: its socket path, or its loopback port (None until a TCP
        tenant's first start). Read on every proxied request, so worked out once."""
        if self._address is None:
            if self.env.config.worker_transport == "unix":
                self._address = str(self.env.layout.socket_path(self.record.id))
            else:
                self._address = self.record.port
        return self._address

    @property
    def serving(self) -> bool:
        """A request can be forwarded to the worker now."""
        worker = self.worker
        return self.state in SERVING and worker is not None and not worker.exited.done()

    @property
    def idle(self) -> bool:
        """Nothing is using the worker: no request in flight or waiting (an open WebSocket is a
        request in flight), and no work the app declared busy, unless that has run past
        max_busy_s (a `busy()` that never ends must not pin the worker for ever)."""
        if self.state is not S.RUNNING or self.in_flight or self.waiting or (
                self.worker_in_flight):  # requests the front server sent it directly
            return False
        if attach.holds(self.debug):  # a debug console is attached
            return False
        return self.busy_since is None or (
            time.monotonic() - self.busy_since > self.env.config.max_busy_s)

    # ---- what switchboard/process_reports.py records (declared here, defined there) ----

    def _on_event(self, message: dict[str, Any]) -> None:
        """An unsolicited event from this tenant's worker (contract/worker.py)."""
        raise NotImplementedError

    def _note_ready(self, ready: dict[str, Any]) -> None:
        """What a worker's `ready` event says (contract/worker.py)."""
        raise NotImplementedError

    @property
    def _as_process(self) -> TenantProcess:
        """This object as what it always is: a TenantProcess (switchboard/process.py)."""
        return cast("TenantProcess", self)

    # ---- the one place state changes ----

    def _transition(self, new: TenantState) -> None:
        check_transition(self.state, new)
        if new is not self.state:
            self.log.debug("tenant %s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    # ---- requests ----

    def begin_request(self) -> None:
        self.in_flight += 1
        self.requests += 1
        self.last_active = time.monotonic()
        self.last_request_at = time.time()

    def end_request(self, bytes_in: int, bytes_out: int) -> None:
        self.in_flight -= 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.last_active = time.monotonic()

    def refuse_if_unavailable(self) -> None:
        """Raise what a request for this tenant gets when no start may be tried now."""
        if self.removed:
            raise UnknownTenant(self.name)
        if self.env.closing:
            raise TenantUnavailable("switchboard is shutting down", 5, kind="shutting_down")
        if self.state is S.MOVED:
            raise TenantUnavailable(f"{self.name} moved to {self.record.moved_to}", None,
                                    kind="moved")
        if self.held is not None:
            raise TenantUnavailable(f"{self.name}: {self.held}", 5, kind="migrating")
        if self.state is S.FAILED:
            reason = f"{self.name} failed to start: {self.last_error}"
            if self.retry_at is None:
                raise TenantUnavailable(reason + " (an operator must start it)", None,
                                        kind="failed")
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                raise TenantUnavailable(reason, wait, kind="backoff")

    def retry_after_s(self) -> int:
        """Seconds a client refused for now (start too slow, queue full) should wait: its
        measured start time (the start timeout before any start was measured), stretched by the
        queue ahead of it, within RETRY_AFTER_BOUNDS_S."""
        expected = self.start_ema_s if self.start_ema_s is not None else (
            self.env.config.start_timeout_s)
        estimate = math.ceil(expected * (1 + self.waiting / WAITING_DRAINED_PER_START))
        low, high = RETRY_AFTER_BOUNDS_S
        return max(low, min(high, estimate))

    # ---- start ----

    def start_once(self) -> asyncio.Task[None]:
        """Single flight: every caller shares one start task."""
        task = self._start_task
        if task is None or task.done():
            task = asyncio.ensure_future(self._start())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            self._start_task = task
        return task

    async def wait_started(self) -> None:
        """Return once the start under way, if any, has ended (however it ended)."""
        task = self._start_task
        if task is not None and not task.done():
            await asyncio.wait({task})

    def clear_failures(self) -> None:
        """An operator's start: forget the failure count and try at once."""
        if self.state is S.FAILED:
            self.boot_failures = 0
            self.retry_at = time.monotonic()
            self.last_error = None

    async def _start(self) -> None:
        requested = time.monotonic()  # the cold-start metric runs from here to ready
        async with self.lock:
            self._note_exit_if_gone()
            if self.serving:
                return
            self.refuse_if_unavailable()
            if self.env.take_ownership is not None:
                await self.env.take_ownership(self._as_process)
            await self.env.make_room(self._as_process)
            self.refuse_if_unavailable()  # rm or shutdown may have come while making room
            self._transition(S.STARTING)
            started = time.monotonic()
            try:
                handle = await self._spawn_ready()
            except BootFailure as exc:
                self._boot_failed(str(exc))
                retry_in = None if self.retry_at is None else self.retry_at - time.monotonic()
                raise TenantUnavailable(str(exc), retry_in, kind="boot_failed") from exc
            except BaseException:
                self._transition(S.STOPPED)
                raise
            self._running(handle, requested, started)

    def _running(self, handle: WorkerHandle, requested: float, started: float) -> None:
        """Caller holds the lock: `handle` reported ready; it is this tenant's worker now."""
        self.worker = handle
        self._oom_watch = procfs.OomWatch.of(handle.pid)
        self.started_at = time.time()
        self.last_active = time.monotonic()
        self.retry_at = None
        self.ping_misses = 0
        self.rss_bytes = None
        self.uss_bytes = None
        self.kill_reason = None
        self.writes_unavailable = None
        self.busy_work = None
        self.busy_since = None
        self.worker_in_flight = 0
        self.debug = None
        self.last_error = None  # healthy again: an earlier failure is history (last_exit)
        self._transition(S.RUNNING)
        if self.env.direct is not None:
            self.env.direct.publish(self.name, self.address)
        self.env.counters.starts += 1
        self.env.counters.start_seconds.observe(time.monotonic() - requested)
        took = time.monotonic() - started
        self.start_ema_s = took if self.start_ema_s is None else (
            START_EMA_WEIGHT * took + (1 - START_EMA_WEIGHT) * self.start_ema_s)
        self.log.info("tenant %s started on %s (pid %s) in %.1f ms", self.name, self.address,
                 handle.pid, took * 1000)
        handle.exited.add_done_callback(lambda _: self._exit_seen(handle))

    @property
    def code_version(self) -> str | None:
        """The code version it runs (pinned, else the default; switchboard/versions.py)."""
        config = self.env.config
        return versions.version_of(config.code_versions, config.default_code_version,
                                   self.record)

    def worker_spec(self) -> wire.WorkerSpec:
        """What its next worker is started with (a shadow restore starts from it too)."""
        return self._spec()

    def _spec(self) -> wire.WorkerSpec:
        config = self.env.config
        return wire.WorkerSpec(
            tenant=self.name, port=self.record.port or 0,
            socket_path=str(self.address) if isinstance(self.address, str) else None,
            data_dir=str(config.data_dir.resolve()),
            app=self.record.app or config.app,
            code_path=versions.code_path_of(config.code_versions, config.default_code_version,
                                            self.record),
            code_version=self.code_version,
            root_path=f"/t/{self.name}" if config.routing == "path" else "",
            journal_fsync=config.journal_fsync, keep_generations=config.keep_generations,
            log_format="json" if config.log_format != "text" else "text",
            log_level=config.log_level, epoch=self.record.epoch, host_id=self.record.owner,
            cluster_url=config.cluster_url or None,
            creation_id=self.record.creation_id,
            max_address_space_bytes=config.max_worker_address_space_bytes,
            max_open_files=config.max_worker_open_files,
            snapshot_key_file=str(config.snapshot_key_path.resolve()),
            allow_unsigned=config.allow_unsigned,
            log_file=str(self.env.layout.log_path(self.name).resolve()),
            log_max_bytes=config.tenant_log_max_bytes, log_backups=config.tenant_log_backups,
        )

    async def _spawn_ready(self) -> WorkerHandle:
        sock = await self._bind()
        timeout = self.env.config.start_timeout_s
        try:
            handle = await self.env.spawner.spawn(self._spec(), sock, self._on_event)
        except (OSError, WorkerError) as exc:  # fork or exec failed (EAGAIN, ENOMEM, ...)
            raise BootFailure(f"cannot start a worker: {exc}") from exc
        finally:
            sock.close()  # the worker holds its own copy now
        try:
            ready = await asyncio.wait_for(asyncio.shield(handle.ready), timeout)
        except TimeoutError:
            await handle.kill_and_reap()
            raise BootFailure(f"worker did not become ready within {timeout:g}s") from None
        except BootFailure:
            await handle.kill_and_reap()
            raise
        self._note_ready(ready)
        return handle


    async def _bind(self) -> socket.socket:
        """Bind the worker's socket (switchboard/listen.py). A TCP tenant gets its port at its
        first start; if something else holds it, the tenant moves to a free one."""
        if self.env.config.worker_transport == "unix":
            path = self.env.layout.socket_path(self.record.id)
            try:
                return listen.bind_unix(path, self.env.worker_gid)
            except OSError as exc:
                raise BootFailure(f"cannot listen on {path}: {exc.strerror}") from exc
        for _ in range(5):
            if self.record.port is not None:
                try:
                    return listen.bind_tcp(self.record.port)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise BootFailure(
                            f"cannot bind port {self.record.port}: {exc.strerror}") from exc
            old = self.record.port
            try:
                new = self.env.ports.allocate(avoid=old)
            except SwitchboardError as exc:
                raise BootFailure(str(exc)) from exc
            if old is not None:
                self.log.warning("port %d of tenant %s is taken; moving it to %d", old, self.name,
                            new)
            self.record = await self.env.directory.update(self.name, port=new)
            self._address = None
            if old is not None:
                self.env.ports.release(old)
        raise BootFailure(f"no bindable port found for {self.name}")

    def _boot_failed(self, reason: str) -> None:
        config = self.env.config
        self.boot_failures += 1
        self.last_error = reason
        self.env.counters.boot_failures += 1
        self.worker = None
        if self.state is not S.FAILED:
            self._transition(S.FAILED)
        if self.boot_failures >= config.max_boot_failures:
            self.retry_at = None
            self.log.error("tenant %s failed to boot %d times; stays failed until an operator "
                      "starts it: %s", self.name, self.boot_failures, reason)
            return
        delay = min(config.backoff_max_s, config.backoff_base_s * 2 ** (self.boot_failures - 1))
        delay *= random.uniform(0.8, 1.2)  # jitter: tenants failing together retry apart
        self.retry_at = time.monotonic() + delay
        self.log.error("tenant %s failed to boot (try %d), retrying in %.2fs: %s",
                  self.name, self.boot_failures, delay, reason)

    # ---- exits ----

    def _exit_seen(self, handle: WorkerHandle) -> None:
        """The worker process is gone. Record it under the lock, on the loop."""
        if self.worker is handle and not self.env.closing:
            self.env.run_in_background(self._record_exit(handle))

    async def _record_exit(self, handle: WorkerHandle) -> None:
        async with self.lock:
            if self.worker is handle:
                self._crashed(handle)

    def _note_exit_if_gone(self) -> None:
        """Caller holds the lock: a worker that died since is recorded before anything else."""
        if self.worker is not None and self.worker.exited.done() and self.state in SERVING:
            self._crashed(self.worker)

    def _crashed(self, handle: WorkerHandle) -> None:
        """A worker that had reported ready died. It booted, so this is not a boot failure: the
        next request starts a new one at once, unless crashes come in a loop (then backoff)."""
        config = self.env.config
        uptime = time.time() - (self.started_at or time.time())
        self.worker = None
        handle.close()
        if self.env.direct is not None:
            self.env.direct.discard(self.name)
        if handle.exit_status == wire.FENCED_EXIT:  # cluster mode: not mine any more, no crash
            self._transition(S.STOPPED)
            self.last_exit = "fenced: another host owns it now (or this host lost its lease)"
            self.log.warning("tenant %s: worker %s", self.name, self.last_exit)
            return
        self.restarts += 1
        self.env.counters.crashes += 1
        self._transition(S.STOPPED)
        if (self.kill_reason is None and handle.exit_status == -signal.SIGKILL
                and self._oom_watch is not None and self._oom_watch.fired()):
            self.kill_reason = "out of memory by the kernel's OOM killer"
            self.env.counters.oom_kills += 1
        how = f"killed as {self.kill_reason}" if self.kill_reason else "exited unexpectedly"
        reason = f"worker {how}{handle.status_text()} after {uptime:.1f}s"
        self.kill_reason = None
        self.last_exit = reason
        now = time.monotonic()
        if self.crash_times is None:
            self.crash_times = collections.deque()
        self.crash_times.append(now)
        while self.crash_times and now - self.crash_times[0] > config.crash_loop_window_s:
            self.crash_times.popleft()
        if len(self.crash_times) >= config.crash_loop_crashes:
            reason += (f"; {len(self.crash_times)} crashes within "
                       f"{config.crash_loop_window_s:g}s")
            self.crash_times.clear()
            self._transition(S.FAILED)
            self._boot_failed(reason)
            return
        self.boot_failures = 0
        self.log.error("tenant %s: %s; it restarts on the next request", self.name, reason)

    # ---- stop and checkpoint ----

    async def stop(self, why: str, *, when: Callable[[], bool] | None = None) -> bool:
        """Stop the worker (it checkpoints if dirty) if `when()` still holds under the lock.
        A failed tenant is set back to stopped. True if a worker was stopped."""
        direct = self.env.direct
        if direct is not None and self.state is S.RUNNING and (when is None or when()):
            # Out of the front server's map first: what comes meanwhile reaches the router.
            await direct.withdraw(self.name)
        async with self.lock:
            self._note_exit_if_gone()
            if when is not None and not when():
                if direct is not None and self.serving:  # used again meanwhile: it stays
                    direct.publish(self.name, self.address)
                return False
            if self.state is S.FAILED:
                self.retry_at = None
                self._transition(S.STOPPED)
            return await self._stop_locked(why)

    async def _stop_locked(self, why: str, *, final_checkpoint: bool = True,
                           wait_exit: bool = True) -> bool:
        """Stop the worker. With wait_exit False (a migration's switch), a worker that answers
        that its journal is closed is not waited for: it exits on its own (its kernel teardown
        grows with its memory), and whoever starts the next one waits for `exited` first."""
        handle = self.worker
        if handle is None or self.state not in LIVE:
            return False
        config = self.env.config
        if self.env.direct is not None:
            self.env.direct.discard(self.name)
        self._transition(S.STOPPING)
        try:
            reply: dict[str, Any] = {}
            with contextlib.suppress(WorkerError, TimeoutError):
                if final_checkpoint:
                    await handle.request(wire.STOP, config.ping_timeout_s)
                else:
                    reply = await handle.request(wire.STOP, config.stop_timeout_s,
                                                 checkpoint=False)
            if not wait_exit and reply.get("journal_closed") is True:
                pass  # final: nothing more can be written
            elif not await handle.wait_exited(config.stop_timeout_s):
                self.log.warning("tenant %s did not stop within %gs; SIGTERM then SIGKILL",
                            self.name, config.stop_timeout_s)
                handle.kill(signal.SIGTERM)
                if not await handle.wait_exited(2):
                    await handle.kill_and_reap()
        finally:
            handle.close()
            self.worker = None
            self.last_exit = f"stopped ({why})"
            self._transition(S.STOPPED)
            self.log.info("tenant %s stopped (%s)", self.name, why)
        return True

    async def remove(self) -> None:
        """`rm`: refuse every start from now on and stop the worker. The caller deletes the
        record and the files once this returns."""
        async with self.lock:
            self.removed = True
            self._note_exit_if_gone()
            if self.state is S.FAILED:
                self._transition(S.STOPPED)
            await self._stop_locked("removed")

    async def checkpoint(self) -> CheckpointResult:
        async with self.lock:
            self._note_exit_if_gone()
            handle = self.worker
            if handle is None or self.state is not S.RUNNING:
                return CheckpointResult(self.name, None, False, 0)
            self._transition(S.CHECKPOINTING)
            try:
                async with self.env.checkpoint_slots:
                    reply = await handle.request(wire.CHECKPOINT, CHECKPOINT_TIMEOUT_S)
            except WorkerError as exc:
                self.env.counters.checkpoint_failures += 1
                self.last_error = f"checkpoint failed: {exc}"
                raise TenantBusy(self.last_error) from exc
            finally:
                if self.state is S.CHECKPOINTING:  # type: ignore[comparison-overlap]
                    self._transition(S.RUNNING)
                self._note_exit_if_gone()
        changed = bool(reply.get("changed"))
        return CheckpointResult(self.name, reply.get("generation") if changed else None,
                                changed, int(reply.get("journal_pos", 0)))

    def kill(self) -> None:
        """No more waiting (second signal at shutdown)."""
        if self.worker is not None:
            self.worker.kill(signal.SIGKILL)

