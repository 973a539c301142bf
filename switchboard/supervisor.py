"""The supervisor: starts, watches, checkpoints and stops tenant workers.

Request path: `acquire()` returns a serving tenant (starting it if needed, one start however
many requests wait: single flight) and `release()` records the request's end. Every change to
a tenant's process runs under that tenant's lifecycle lock, so a request that arrives while
its tenant is checkpointing, stopping or being evicted waits for the lock and is served by
the next worker: the idle-exit race cannot drop it.

`reconcile()` runs every tick and decides; small methods act: stop idle tenants, ping running
ones, retry tenants backing off. Boot failures back off exponentially with jitter and after
`max_boot_failures` the tenant stays `failed` until an operator starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from switchboard import transfer
from switchboard.api import CheckpointResult, ExportedFile, TenantInfo
from switchboard.config import Config
from switchboard.errors import (
    BadTenantName,
    SwitchboardError,
    TenantBusy,
    TenantUnavailable,
    UnknownTenant,
    WorkerError,
)
from switchboard.routing import is_valid_name
from switchboard.spawner import BootFailure, Spawner, WorkerHandle
from switchboard.states import LIVE, SERVING, TenantState, check_transition
from switchboard.table import Tenant, TenantTable

log = logging.getLogger("switchboard.supervisor")
S = TenantState


class Supervisor:
    def __init__(self, config: Config, table: TenantTable, spawner: Spawner) -> None:
        self.config = config
        self.table = table
        self.spawner = spawner
        self.checkpoint_slots = asyncio.Semaphore(config.max_concurrent_checkpoints)
        self.on_stopped: list[Callable[[Tenant], None]] = []
        self._start_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ping_failures: dict[str, int] = {}
        self.closing = False
        self.counters = {"starts": 0, "boot_failures": 0, "crashes": 0, "evictions": 0,
                         "idle_stops": 0, "checkpoints": 0, "checkpoint_failures": 0}

    # ---- state changes: the one place a tenant's state is set ----

    def transition(self, tenant: Tenant, new: TenantState) -> None:
        check_transition(tenant.state, new)
        if new is not tenant.state:
            log.debug("tenant %s: %s -> %s", tenant.name, tenant.state.value, new.value)
        tenant.state = new

    def _lock(self, tenant: Tenant) -> asyncio.Lock:
        if tenant.lifecycle is None:
            tenant.lifecycle = asyncio.Lock()
        lock: asyncio.Lock = tenant.lifecycle
        return lock

    def resident_count(self) -> int:
        return sum(1 for t in self.table.tenants.values() if t.state in LIVE)

    # ---- request path ----

    async def acquire(self, name: str) -> Tenant:
        """A serving tenant with one more request in flight. Raises UnknownTenant or
        TenantUnavailable (503: still starting past the timeout, backing off, or failed)."""
        tenant = self.table.find(name)
        if tenant is None:
            raise UnknownTenant(name)
        if tenant.state not in SERVING or tenant.worker is None:
            await self._wait_until_serving(tenant)
        tenant.in_flight += 1
        tenant.requests += 1
        tenant.last_active = time.monotonic()
        tenant.last_request_at = time.time()
        return tenant

    async def recover(self, tenant: Tenant, worker: WorkerHandle | None) -> bool:
        """A request in flight could not reach `worker`. Wait (bounded) until the worker is seen
        gone, then until the next one serves (started here if needed, as for a new request).
        False when the worker is still alive: the caller answers 502 and the health ping
        deals with the worker. Raises TenantUnavailable like `acquire`."""
        if worker is not None and tenant.worker is worker and not await _quietly(
                worker.exited, self.config.ping_timeout_s):
            return False
        if tenant.state not in SERVING or tenant.worker is None:
            await self._wait_until_serving(tenant)
        return True

    def release(self, tenant: Tenant, bytes_in: int, bytes_out: int) -> None:
        tenant.in_flight -= 1
        tenant.bytes_in += bytes_in
        tenant.bytes_out += bytes_out
        tenant.last_active = time.monotonic()

    async def _wait_until_serving(self, tenant: Tenant) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        if tenant.waiting >= self.config.max_waiting_requests:
            raise TenantUnavailable(f"too many requests waiting for {tenant.name} to start", 1)
        tenant.waiting += 1
        try:
            while tenant.state not in SERVING or tenant.worker is None:
                self._refuse_if_unavailable(tenant)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TenantUnavailable(
                        f"{tenant.name} did not start within {self.config.start_timeout_s:g}s", 2)
                try:
                    await asyncio.wait_for(asyncio.shield(self._start_once(tenant)), remaining)
                except TimeoutError:
                    continue
        finally:
            tenant.waiting -= 1

    def _refuse_if_unavailable(self, tenant: Tenant) -> None:
        if self.closing:
            raise TenantUnavailable("switchboard is shutting down", 5)
        if tenant.state is S.MOVED:
            raise TenantUnavailable(f"{tenant.name} moved to {tenant.moved_to}", None)
        if tenant.state is S.FAILED:
            reason = f"{tenant.name} failed to start: {tenant.last_error}"
            if tenant.retry_at is None:
                raise TenantUnavailable(reason + " (an operator must start it)", None)
            wait = tenant.retry_at - time.monotonic()
            if wait > 0:
                raise TenantUnavailable(reason, wait)

    def _start_once(self, tenant: Tenant) -> asyncio.Task[None]:
        """Single flight: every caller shares one start task per tenant."""
        task = self._start_tasks.get(tenant.name)
        if task is None or task.done():
            task = asyncio.ensure_future(self._start(tenant))
            self._start_tasks[tenant.name] = task
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return task

    # ---- acting: start ----

    async def _start(self, tenant: Tenant) -> None:
        async with self._lock(tenant):
            if tenant.state in SERVING and tenant.worker is not None:
                return
            self._refuse_if_unavailable(tenant)
            await self._make_room(tenant)
            self.transition(tenant, S.STARTING)
            started = time.monotonic()
            try:
                handle = await self._spawn_ready(tenant)
            except BootFailure as exc:
                self._boot_failed(tenant, str(exc))
                retry_in = None if tenant.retry_at is None else tenant.retry_at - time.monotonic()
                raise TenantUnavailable(str(exc), retry_in) from exc
            except BaseException:
                self.transition(tenant, S.STOPPED)
                raise
            tenant.worker = handle
            tenant.started_at = time.time()
            tenant.last_active = time.monotonic()
            tenant.retry_at = None
            self.transition(tenant, S.RUNNING)
            self.counters["starts"] += 1
            log.info("tenant %s started on :%d (pid %s) in %.1f ms", tenant.name, tenant.port,
                     handle.pid, (time.monotonic() - started) * 1000)
            self._watch(tenant, handle)

    async def _make_room(self, tenant: Tenant) -> None:
        """Evict the least recently used idle tenant while the host is at max_resident."""
        deadline = time.monotonic() + self.config.start_timeout_s
        while self.resident_count() >= self.config.max_resident:
            idle = [t for t in self.table.tenants.values()
                    if t.state is S.RUNNING and t.in_flight == 0 and t is not tenant
                    and not (t.lifecycle and t.lifecycle.locked())]
            if idle:
                victim = min(idle, key=lambda t: t.last_active)
                log.info("evicting %s to make room for %s", victim.name, tenant.name)
                self.counters["evictions"] += 1
                async with self._lock(victim):
                    if victim.state is S.RUNNING and victim.in_flight == 0:
                        await self._stop(victim, "evicted")
                continue
            if time.monotonic() > deadline:
                raise TenantUnavailable(
                    f"{self.config.max_resident} tenants are resident and all are busy", 1)
            await asyncio.sleep(0.02)

    async def _spawn_ready(self, tenant: Tenant) -> WorkerHandle:
        from tenant.runtime import WorkerSpec  # the spec's shape is the wire contract

        sock = self._bind(tenant)
        spec = WorkerSpec(
            tenant=tenant.name, port=tenant.port, data_dir=str(self.config.data_dir.resolve()),
            app=tenant.app or self.config.app, code_path=tenant.code_path,
            root_path=f"/t/{tenant.name}" if self.config.routing == "path" else "",
            journal_fsync=self.config.journal_fsync, keep_generations=self.config.keep_generations,
            log_format="json" if self.config.log_format != "text" else "text",
            log_level=self.config.log_level,
        )
        try:
            handle = await self.spawner.spawn(spec, sock)
        except (OSError, WorkerError) as exc:  # fork or exec failed (EAGAIN, ENOMEM, ...)
            raise BootFailure(f"cannot start a worker: {exc}") from exc
        finally:
            sock.close()  # the worker holds its own copy now
        try:
            ready = await asyncio.wait_for(asyncio.shield(handle.ready),
                                           self.config.start_timeout_s)
        except TimeoutError:
            handle.kill()
            await _quietly(handle.exited, 5)
            raise BootFailure(
                f"worker did not become ready within {self.config.start_timeout_s:g}s") from None
        except BootFailure:
            handle.kill()
            await _quietly(handle.exited, 5)
            raise
        tenant.generation = ready.get("generation")
        tenant.warnings = list(ready.get("warnings") or [])
        for warning in tenant.warnings:
            log.warning("tenant %s: %s", tenant.name, warning)
        return handle

    def _bind(self, tenant: Tenant) -> socket.socket:
        """Bind the tenant's port; if something else holds it, move the tenant to a free one."""
        for _ in range(5):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", tenant.port))
                sock.listen(1024)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise BootFailure(f"cannot bind port {tenant.port}: {exc.strerror}") from exc
                try:
                    new_port = self.table.allocate_port(avoid=tenant.port)
                except SwitchboardError as exc:
                    raise BootFailure(str(exc)) from exc
                log.warning("port %d of tenant %s is taken; moving it to %d", tenant.port,
                            tenant.name, new_port)
                self.table.set_port(tenant, new_port)
        raise BootFailure(f"no bindable port found for {tenant.name}")

    def _boot_failed(self, tenant: Tenant, reason: str) -> None:
        tenant.boot_failures += 1
        tenant.last_error = reason
        self.counters["boot_failures"] += 1
        tenant.worker = None
        if tenant.state is not S.FAILED:
            self.transition(tenant, S.FAILED)
        if tenant.boot_failures >= self.config.max_boot_failures:
            tenant.retry_at = None
            log.error("tenant %s failed to boot %d times; stays failed until an operator "
                      "starts it: %s",
                      tenant.name, tenant.boot_failures, reason)
        else:
            delay = min(self.config.backoff_max_s,
                        self.config.backoff_base_s * 2 ** (tenant.boot_failures - 1))
            delay *= random.uniform(0.8, 1.2)  # jitter: tenants failing together retry apart
            tenant.retry_at = time.monotonic() + delay
            log.error("tenant %s failed to boot (try %d), retrying in %.2fs: %s",
                      tenant.name, tenant.boot_failures, delay, reason)

    def _watch(self, tenant: Tenant, handle: WorkerHandle) -> None:
        def exited(_: asyncio.Future[None]) -> None:
            if tenant.worker is handle and tenant.state in (S.RUNNING, S.CHECKPOINTING):
                self._crashed(tenant, handle)

        handle.exited.add_done_callback(exited)

    def _crashed(self, tenant: Tenant, handle: WorkerHandle) -> None:
        status = handle.exit_status
        uptime = time.time() - (tenant.started_at or time.time())
        tenant.worker = None
        tenant.restarts += 1
        self.counters["crashes"] += 1
        self.transition(tenant, S.STOPPED)
        self._notify_stopped(tenant)
        reason = f"worker exited unexpectedly (status {status}) after {uptime:.1f}s"
        log.error("tenant %s: %s; it restarts on the next request", tenant.name, reason)
        if uptime < self.config.min_uptime_s:
            self.transition(tenant, S.FAILED)
            self._boot_failed(tenant, reason)
        else:
            tenant.boot_failures = 0

    # ---- acting: stop and checkpoint (caller holds the lifecycle lock) ----

    async def _stop(self, tenant: Tenant, why: str) -> None:
        handle = tenant.worker
        if handle is None or tenant.state not in LIVE:
            return
        self.transition(tenant, S.STOPPING)
        try:
            with contextlib.suppress(WorkerError, TimeoutError):
                await handle.request("stop", self.config.ping_timeout_s)
            try:
                await asyncio.wait_for(asyncio.shield(handle.exited), self.config.stop_timeout_s)
            except TimeoutError:
                log.warning("tenant %s did not stop within %gs; SIGTERM then SIGKILL",
                            tenant.name, self.config.stop_timeout_s)
                handle.kill(signal.SIGTERM)
                if not await _quietly(handle.exited, 2):
                    handle.kill(signal.SIGKILL)
                    await _quietly(handle.exited, 5)
        finally:
            handle.close()
            tenant.worker = None
            self.transition(tenant, S.STOPPED)
            self._notify_stopped(tenant)
            log.info("tenant %s stopped (%s)", tenant.name, why)

    def _notify_stopped(self, tenant: Tenant) -> None:
        for callback in self.on_stopped:
            callback(tenant)

    async def _checkpoint(self, tenant: Tenant) -> CheckpointResult:
        handle = tenant.worker
        if handle is None or tenant.state is not S.RUNNING:
            return CheckpointResult(tenant.name, None, False, 0)
        self.transition(tenant, S.CHECKPOINTING)
        try:
            async with self.checkpoint_slots:
                reply = await handle.request("checkpoint", 3600)
        except WorkerError as exc:
            self.counters["checkpoint_failures"] += 1
            tenant.last_error = f"checkpoint failed: {exc}"
            raise TenantBusy(tenant.last_error) from exc
        finally:
            # The worker may have died meanwhile (then it is stopped already).
            if tenant.state is S.CHECKPOINTING:  # type: ignore[comparison-overlap]
                self.transition(tenant, S.RUNNING)
        changed = bool(reply.get("changed"))
        return CheckpointResult(tenant.name, reply.get("generation") if changed else None,
                                bool(reply.get("changed")), int(reply.get("journal_pos", 0)))

    def on_worker_event(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        tenant = self.table.find(handle.tenant)
        if tenant is None:
            return
        event = message.get("event")
        if event == "checkpointed":  # any checkpoint: asked for, or written at stop
            self.counters["checkpoints"] += 1
            tenant.generation = message.get("generation")
            tenant.last_checkpoint_at = time.time()
            if tenant.last_error and tenant.last_error.startswith("checkpoint"):
                tenant.last_error = None
        elif event == "checkpoint_failed":
            tenant.last_error = f"checkpoint failed: {message.get('error')}"
            log.error("tenant %s: %s", tenant.name, tenant.last_error)

    # ---- the reconciliation loop ----

    async def run(self, tick_s: float = 0.25) -> None:
        last_ping = time.monotonic()
        while not self.closing:
            await asyncio.sleep(tick_s)
            now = time.monotonic()
            ping = now - last_ping >= self.config.ping_interval_s
            if ping:
                last_ping = now
            self.reconcile(now, ping=ping)

    def reconcile(self, now: float, *, ping: bool = False) -> None:
        for tenant in self.table.tenants.values():
            busy = tenant.lifecycle is not None and tenant.lifecycle.locked()
            if busy:
                continue
            if (tenant.state is S.RUNNING and tenant.in_flight == 0 and tenant.waiting == 0
                    and now - tenant.last_active >= self.config.idle_timeout_s):
                self._spawn_task(self._stop_if_idle(tenant))
            elif (tenant.state is S.FAILED and tenant.retry_at is not None
                  and now >= tenant.retry_at):
                self._spawn_task(self._retry(tenant))
            elif ping and tenant.state is S.RUNNING and tenant.worker is not None:
                self._spawn_task(self._ping(tenant, tenant.worker))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_if_idle(self, tenant: Tenant) -> None:
        async with self._lock(tenant):
            # Re-check under the lock: a request may have arrived while we waited.
            if (tenant.state is S.RUNNING and tenant.in_flight == 0 and tenant.waiting == 0
                    and time.monotonic() - tenant.last_active >= self.config.idle_timeout_s):
                self.counters["idle_stops"] += 1
                await self._stop(tenant, "idle")

    async def _retry(self, tenant: Tenant) -> None:
        with contextlib.suppress(TenantUnavailable):
            await self._start_once(tenant)

    async def _ping(self, tenant: Tenant, handle: WorkerHandle) -> None:
        try:
            await handle.request("ping", self.config.ping_timeout_s)
            self._ping_failures.pop(tenant.name, None)
        except TimeoutError:
            misses = self._ping_failures.get(tenant.name, 0) + 1
            self._ping_failures[tenant.name] = misses
            log.warning("tenant %s missed a health ping (%d in a row)", tenant.name, misses)
            if misses >= 3:
                log.error("tenant %s is unresponsive; killing it", tenant.name)
                self._ping_failures.pop(tenant.name, None)
                handle.kill(signal.SIGKILL)
        except WorkerError:
            pass  # it exited; the exit watcher handles it

    # ---- operator operations (the admin API's TenantService) ----

    def info(self, tenant: Tenant) -> TenantInfo:
        worker = tenant.worker
        retry_in = None if tenant.retry_at is None else max(0.0, tenant.retry_at - time.monotonic())
        return TenantInfo(
            name=tenant.name, state=tenant.state.value,
            pid=worker.pid if worker is not None and tenant.state in LIVE else None,
            port=tenant.port, restarts=tenant.restarts, last_request_at=tenant.last_request_at,
            in_flight=tenant.in_flight, requests=tenant.requests, bytes_in=tenant.bytes_in,
            bytes_out=tenant.bytes_out, created_at=tenant.created_at, started_at=tenant.started_at,
            last_checkpoint_at=tenant.last_checkpoint_at, generation=tenant.generation,
            last_error=tenant.last_error or ("; ".join(tenant.warnings) or None),
            retry_at=None if retry_in is None else time.time() + retry_in,
            moved_to=tenant.moved_to,
        )

    def list_tenants(self) -> list[TenantInfo]:
        return [self.info(t) for t in sorted(self.table.tenants.values(), key=lambda t: t.name)]

    def get_tenant(self, name: str) -> TenantInfo:
        return self.info(self.table.get(name))

    async def create_tenant(self, name: str) -> TenantInfo:
        if not is_valid_name(name):
            raise BadTenantName(name)
        return self.info(self.table.create(name))

    async def start_tenant(self, name: str) -> TenantInfo:
        tenant = self.table.get(name)
        if tenant.state is S.FAILED:  # an operator's start clears the failure count
            tenant.boot_failures = 0
            tenant.retry_at = time.monotonic()
            tenant.last_error = None
        if tenant.state not in SERVING:
            await self._wait_until_serving(tenant)
        return self.info(tenant)

    async def stop_tenant(self, name: str) -> TenantInfo:
        tenant = self.table.get(name)
        async with self._lock(tenant):
            if tenant.state is S.FAILED:
                tenant.retry_at = None
                self.transition(tenant, S.STOPPED)
            await self._stop(tenant, "operator")
        return self.info(tenant)

    async def checkpoint_tenant(self, name: str) -> CheckpointResult:
        tenant = self.table.get(name)
        async with self._lock(tenant):
            return await self._checkpoint(tenant)

    async def remove_tenant(self, name: str) -> None:
        tenant = self.table.get(name)
        async with self._lock(tenant):
            await self._stop(tenant, "removed")
            self.table.remove(tenant)
        shutil.rmtree(self.config.tenants_dir / name, ignore_errors=True)

    def metrics_text(self) -> str:
        states: dict[str, int] = {s.value: 0 for s in TenantState}
        for tenant in self.table.tenants.values():
            states[tenant.state.value] += 1
        lines = ["# TYPE switchboard_tenants gauge"]
        lines += [f'switchboard_tenants{{state="{k}"}} {v}' for k, v in states.items()]
        for key, value in self.counters.items():
            lines += [f"# TYPE switchboard_{key}_total counter", f"switchboard_{key}_total {value}"]
        lines += ["# TYPE switchboard_tenant_requests_total counter"]
        lines += [f'switchboard_tenant_requests_total{{tenant="{t.name}"}} {t.requests}'
                  for t in self.table.tenants.values() if t.requests]
        lines += ["# TYPE switchboard_spawns_total counter",
                  f'switchboard_spawns_total{{via="zygote"}} {self.spawner.zygote_spawns}',
                  f'switchboard_spawns_total{{via="fresh"}} {self.spawner.fresh_spawns}']
        return "\n".join(lines) + "\n"

    # ---- shutdown ----

    async def shutdown(self) -> None:
        """Checkpoint and stop every worker (graceful SIGTERM path)."""
        self.closing = True
        for task in list(self._background):
            task.cancel()

        async def stop(tenant: Tenant) -> None:
            async with self._lock(tenant):
                await self._stop(tenant, "shutdown")

        await asyncio.gather(*(stop(t) for t in self.table.tenants.values() if t.state in LIVE),
                             return_exceptions=True)

    def kill_all(self) -> None:
        """Second signal: no more waiting."""
        for tenant in self.table.tenants.values():
            if tenant.worker is not None:
                tenant.worker.kill(signal.SIGKILL)

    # ---- export and import: switchboard/transfer.py does the work ----

    async def export_tenant(self, name: str) -> ExportedFile:
        return await transfer.export_tenant(self, name)

    async def import_tenant(self, name: str, data: bytes) -> TenantInfo:
        return await transfer.import_tenant(self, name, data)


async def _quietly(future: asyncio.Future[Any], timeout: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
        return True
    except TimeoutError:
        return False
