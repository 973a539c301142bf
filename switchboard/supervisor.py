"""The supervisor: the policy over all tenant processes.

It holds one `TenantProcess` (switchboard/process.py) per mapped tenant and decides; the
process objects act. Two kinds of decisions:

- Admission (the request path). `acquire()` returns a serving tenant with one more request in
  flight, starting it if needed (one start however many requests wait) within a bounded queue
  and `start_timeout_s`; `release()` records the request's end; `recover()` handles a worker
  that vanished under a request. Starting a tenant at `max_resident` first evicts the least
  recently used idle one (`make_room`).
- Reconciliation. `run()` ticks `reconcile()`, which compares what is wanted with what is:
  stop tenants idle past `idle_timeout_s`, retry tenants whose backoff has passed, ping
  running workers every `ping_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from snapshots.layout import DataLayout
from switchboard.config import Config
from switchboard.directory import Directory, TenantRecord
from switchboard.errors import TenantUnavailable, UnknownTenant
from switchboard.metrics import Counters
from switchboard.ports import PortPool
from switchboard.process import ProcessEnv, TenantProcess
from switchboard.spawner import Spawner, WorkerHandle
from switchboard.states import LIVE, TenantState

log = logging.getLogger("switchboard.supervisor")
S = TenantState
ROOM_POLL_S = 0.02


class Supervisor:
    def __init__(self, config: Config, directory: Directory, spawner: Spawner,
                 records: list[TenantRecord], layout: DataLayout,
                 worker_gid: int | None = None) -> None:
        self.config = config
        self.spawner = spawner
        self.counters = Counters()
        self.ports = PortPool(config.port_range, (r.port for r in records if r.port))
        self.env = ProcessEnv(
            config=config, spawner=spawner, directory=directory, ports=self.ports,
            layout=layout, worker_gid=worker_gid,
            counters=self.counters,
            checkpoint_slots=asyncio.Semaphore(config.max_concurrent_checkpoints),
            make_room=self.make_room,
        )
        self.tenants: dict[str, TenantProcess] = {}
        self._ahead: asyncio.Future[None] | None = None  # the eviction that keeps a slot free
        for record in records:
            self.adopt(record)

    @property
    def closing(self) -> bool:
        return self.env.closing

    # ---- the set of tenants ----

    def adopt(self, record: TenantRecord) -> TenantProcess:
        process = TenantProcess(record, self.env)
        self.tenants[record.name] = process
        return process

    def forget(self, process: TenantProcess) -> None:
        if self.tenants.get(process.name) is process:
            del self.tenants[process.name]
        if process.record.port is not None:
            self.ports.release(process.record.port)

    def get(self, name: str) -> TenantProcess:
        try:
            return self.tenants[name]
        except KeyError:
            raise UnknownTenant(name) from None

    def __iter__(self) -> Iterator[TenantProcess]:
        return iter(list(self.tenants.values()))

    def __len__(self) -> int:
        return len(self.tenants)

    def resident_count(self) -> int:
        return sum(1 for t in self.tenants.values() if t.state in LIVE)

    # ---- admission: the request path ----

    async def acquire(self, name: str) -> TenantProcess:
        """A serving tenant with one more request in flight. Raises UnknownTenant or
        TenantUnavailable (503: still starting past the timeout, backing off, or failed)."""
        tenant = self.tenants.get(name)
        if tenant is None:
            tenant = await self._look_up(name)
        lease_live = self.env.lease_live
        if lease_live is not None and not lease_live() and tenant.state is not S.MOVED:
            raise TenantUnavailable("this host holds no live cluster lease now: it serves "
                                    "none of its tenants", 1)
        if not tenant.serving:
            await self.wait_until_serving(tenant)
        tenant.begin_request()
        return tenant

    async def _look_up(self, name: str) -> TenantProcess:
        """A tenant not mapped here: in cluster mode, one another host created (its record
        is adopted); else UnknownTenant."""
        look_up = self.env.look_up
        record = None if look_up is None else await look_up(name)
        if record is None:
            raise UnknownTenant(name)
        return self.tenants.get(name) or self.adopt(record)

    def serving_now(self, name: str) -> TenantProcess | None:
        tenant = self.tenants.get(name)
        if tenant is None or not tenant.serving:
            return None
        lease_live = self.env.lease_live  # cluster mode: nothing served without a lease
        return tenant if lease_live is None or lease_live() else None

    def release(self, tenant: TenantProcess, bytes_in: int, bytes_out: int) -> None:
        tenant.end_request(bytes_in, bytes_out)

    async def recover(self, tenant: TenantProcess, worker: WorkerHandle | None) -> bool:
        """A request in flight could not reach `worker`. Wait (bounded) until the worker is seen
        gone, then until the next one serves (started here if needed, as for a new request).
        False when the worker is still alive: the caller answers 502 and the health ping
        deals with the worker. Raises TenantUnavailable like `acquire`."""
        if worker is not None and tenant.worker is worker and not await worker.wait_exited(
                self.config.ping_timeout_s):
            return False
        if not tenant.serving:
            await self.wait_until_serving(tenant)
        return True

    async def wait_until_serving(self, tenant: TenantProcess) -> None:
        """Wait, in a bounded queue and up to `start_timeout_s`, for the tenant's start."""
        deadline = time.monotonic() + self.config.start_timeout_s
        if tenant.waiting >= self.config.max_waiting_requests:
            raise TenantUnavailable(f"too many requests waiting for {tenant.name} to start",
                                    tenant.retry_after_s(), kind="queue_full")
        tenant.waiting += 1
        entered = time.monotonic()
        try:
            while not tenant.serving:
                remaining = deadline - time.monotonic()
                try:
                    tenant.refuse_if_unavailable()
                except TenantUnavailable as exc:
                    # Backing off for less than this request may still wait: wait, then try.
                    wait = exc.retry_after_s
                    if tenant.state is not S.FAILED or wait is None or wait >= remaining:
                        raise
                    await asyncio.sleep(wait)
                    continue
                if remaining <= 0:
                    raise TenantUnavailable(
                        f"{tenant.name} did not start within {self.config.start_timeout_s:g}s",
                        tenant.retry_after_s(), kind="start_timeout")
                try:
                    await asyncio.wait_for(asyncio.shield(tenant.start_once()), remaining)
                except TimeoutError:
                    continue
        finally:
            tenant.waiting -= 1
            self.counters.start_wait_seconds.observe(time.monotonic() - entered)

    async def make_room(self, starting: TenantProcess) -> None:
        """Evict the least recently used idle tenant while the host is at max_resident.

        A host that had to evict is churning (more tenants in use than slots): once
        `starting` serves, the next victim is evicted in the background (`_evict_ahead`), so
        the next cold start finds a slot free instead of waiting for a victim's checkpoint.
        """
        deadline = time.monotonic() + self.config.start_timeout_s
        evicted = False
        while self.resident_count() >= self.config.max_resident:
            ahead = self._ahead
            if ahead is not None and not ahead.done():
                # A slot is being freed already: wait for it rather than evict a second.
                await asyncio.wait({ahead}, timeout=max(0.0, deadline - time.monotonic()))
                if time.monotonic() < deadline:
                    continue
            victim = self._victim(starting)
            if victim is not None:
                log.info("evicting %s to make room for %s", victim.name, starting.name,
                         extra={"tenant": victim.name})
                if await victim.stop("evicted", when=_still_idle(victim)):
                    self.counters.evictions += 1
                    evicted = True
                continue
            if time.monotonic() > deadline:
                raise TenantUnavailable(
                    f"{self.config.max_resident} tenants are resident and all are busy", 1,
                    kind="no_room")
            await asyncio.sleep(ROOM_POLL_S)
        if evicted and (self._ahead is None or self._ahead.done()):
            self._ahead = asyncio.ensure_future(self._evict_ahead(starting))
            self.env.background.add(self._ahead)
            self._ahead.add_done_callback(self.env.background.discard)

    def _victim(self, starting: TenantProcess) -> TenantProcess | None:
        """The least recently used idle tenant, other than the one starting."""
        idle = [t for t in self.tenants.values()
                if t.idle and t is not starting and not t.operating]
        return min(idle, key=lambda t: t.last_active) if idle else None

    async def _evict_ahead(self, starting: TenantProcess) -> None:
        """After `starting` has started (never competing with its start for the CPU), evict
        the least recently used idle tenant if the host is full, to keep one slot free."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(starting.wait_started(), self.config.start_timeout_s)
        if self.resident_count() < self.config.max_resident:
            return
        victim = self._victim(starting)
        if victim is not None and await victim.stop("evicted ahead", when=_still_idle(victim)):
            self.counters.evictions += 1

    # ---- reconciliation ----

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
        idle_timeout = self.config.idle_timeout_s
        for tenant in self.tenants.values():
            if tenant.operating:
                continue
            if tenant.idle and now - tenant.last_active >= idle_timeout:
                self.env.run_in_background(self._stop_idle(tenant))
            elif tenant.idle and tenant.over_memory_limit:
                self.env.run_in_background(self._recycle(tenant))
            elif (tenant.state is S.FAILED and tenant.retry_at is not None
                  and now >= tenant.retry_at):
                self.env.run_in_background(self._retry(tenant))
            elif ping and tenant.state is S.RUNNING:
                self.env.run_in_background(tenant.ping())

    async def _stop_idle(self, tenant: TenantProcess) -> None:
        def still_idle() -> bool:  # re-checked under the lock: a request may have come
            return tenant.idle and (
                time.monotonic() - tenant.last_active >= self.config.idle_timeout_s)

        if await tenant.stop("idle", when=still_idle):
            self.counters.idle_stops += 1

    async def _recycle(self, tenant: TenantProcess) -> None:
        """Past max_worker_rss_bytes: stop it between requests (it checkpoints first); the
        next request starts a fresh worker from the snapshot."""
        rss = tenant.rss_bytes or 0
        if await tenant.stop(f"recycled: {rss} bytes resident, over max_worker_rss_bytes",
                             when=lambda: tenant.idle and tenant.over_memory_limit):
            self.counters.rss_recycles += 1
            tenant.rss_bytes = None

    async def _retry(self, tenant: TenantProcess) -> None:
        # A failure is recorded on the tenant; the next tick or request tries again.
        with contextlib.suppress(TenantUnavailable, UnknownTenant):
            await tenant.start_once()

    # ---- shutdown ----

    async def shutdown(self) -> None:
        """Checkpoint and stop every worker (graceful SIGTERM path)."""
        self.env.closing = True
        for task in list(self.env.background):
            task.cancel()
        await asyncio.gather(*(t.stop("shutdown") for t in self.tenants.values()
                               if t.state in LIVE), return_exceptions=True)

    def kill_all(self) -> None:
        """Second signal: no more waiting."""
        for tenant in self.tenants.values():
            tenant.kill()


def _still_idle(tenant: TenantProcess) -> Callable[[], bool]:
    return lambda: tenant.idle
