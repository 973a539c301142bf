"""Which host serves a tenant, in cluster mode (DESIGN.md "Between hosts"; docs/cluster.md).

Any host's router serves any tenant. Before a tenant starts here (`take_ownership`, called by
switchboard/process.py under the tenant's lock):

    owner in the directory                    this host
    this host                                 starts it at the directory's epoch
    another host with a live lease            forwards (the tenant is MOVED to that host's
                                              router; switchboard/forwarding.py relays)
    none, and this host is at max_resident    forwards to the live host with the most room
    with nothing idle to evict
    none, or a host whose lease expired       claims it (epoch + 1, one conditional UPDATE:
                                              of concurrent claimers one wins, the others
                                              forward to it) and restores it from PostgreSQL

A host that creates, claims, moves or removes a tenant tells the other live hosts at once
(`announce`; they look it up: `refresh_one`), so they stop forwarding to its previous owner.
`watch` keeps this host's view current anyway: every WATCH_INTERVAL_S it reads the hosts (a
few rows) and a tenant forwarded to a host whose lease has expired goes back to stopped (its
next request claims it); every FULL_REFRESH_S it reads the whole directory: a worker running
here for a tenant another host now owns is stopped, tenants other hosts created are mapped
and removed ones unmapped. A request for a tenant not mapped yet looks it up (`look_up`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from switchboard.cluster.leases import LeaseKeeper
from switchboard.cluster.pgdirectory import HostRecord, PgDirectory
from switchboard.directory import EpochConflict, TenantRecord
from switchboard.errors import StorageFailed, TenantUnavailable, UnknownTenant
from switchboard.process import TenantProcess
from switchboard.states import LIVE, TenantState
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.cluster")
S = TenantState
WATCH_INTERVAL_S = 0.5  # the hosts' leases
FULL_REFRESH_S = 5.0  # the whole directory
CLAIM_TRIES = 3


class ClusterRouting:
    def __init__(self, directory: PgDirectory, supervisor: Supervisor, lease: LeaseKeeper
                 ) -> None:
        self.directory = directory
        self.supervisor = supervisor
        self.lease = lease
        self.host_id = lease.host_id
        # Tells the other live hosts that this one claimed a tenant (switchboard/cluster/node.py)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    # ---- the start path ----

    async def take_ownership(self, process: TenantProcess) -> None:
        name = process.name
        if not self.lease.live:
            raise TenantUnavailable(f"host {self.host_id} holds no live cluster lease now", 1)
        try:
            for _ in range(CLAIM_TRIES):
                record, owner = await self.directory.owner_of(name)
                if record.owner == self.host_id:
                    process.record = dataclasses.replace(record, moved_to=None)
                    return
                if owner is not None and owner.alive:
                    self._forward(process, record, owner)
                if record.owner is None and self._full():
                    roomiest = await self._roomiest_other_host()
                    if roomiest is not None:
                        self._forward(process, record, roomiest)
                try:
                    process.record = await self.directory.claim(name, self.host_id,
                                                                expect_epoch=record.epoch)
                except EpochConflict:
                    continue  # someone else changed it: decide again on the new record
                log.info("host %s claimed tenant %s at epoch %d", self.host_id, name,
                         process.record.epoch, extra={"tenant": name})
                if self.announce is not None:  # the other hosts stop forwarding elsewhere
                    self.supervisor.env.run_in_background(self.announce(name))
                return
        except StorageFailed as exc:
            raise TenantUnavailable(f"{name}: {exc}", 1) from exc
        except UnknownTenant:
            process.removed = True
            raise
        raise TenantUnavailable(f"{name}: its owner keeps changing", 1)

    def _forward(self, process: TenantProcess, record: TenantRecord, host: HostRecord) -> None:
        process.placed(dataclasses.replace(record, moved_to=host.router_url))
        raise TenantUnavailable(f"{process.name} lives on host {host.id}", None, kind="moved")

    def _full(self) -> bool:
        supervisor = self.supervisor
        return (supervisor.resident_count() >= supervisor.config.max_resident
                and not any(t.idle for t in supervisor))

    async def _roomiest_other_host(self) -> HostRecord | None:
        others = [h for h in await self.directory.hosts()
                  if h.alive and h.id != self.host_id and h.resident < h.max_resident]
        return max(others, key=lambda h: h.max_resident - h.resident, default=None)

    async def look_up(self, name: str) -> TenantRecord | None:
        try:
            return await self.directory.get(name)
        except UnknownTenant:
            return None
        except StorageFailed as exc:
            raise TenantUnavailable(f"{name}: {exc}", 1) from exc

    # ---- keeping the view current ----

    async def lose_all(self, why: str) -> None:
        """The lease is gone: stop every worker here (they serve nothing now)."""
        running = [t for t in self.supervisor if t.state in LIVE]
        await asyncio.gather(*(t.lose(why) for t in running), return_exceptions=True)

    async def watch(self) -> None:
        interval_s = min(WATCH_INTERVAL_S, self.lease.ttl_s / 3)
        full_every = max(1, round(FULL_REFRESH_S / interval_s))
        ticks = 0
        while True:
            await asyncio.sleep(interval_s)
            ticks += 1
            try:
                if ticks % full_every == 0:
                    await self.refresh()
                else:
                    await self.refresh_hosts()
            except StorageFailed as exc:
                log.warning("cannot refresh the cluster view: %s", exc)
            except Exception:  # a bug must not end the refreshing for good
                log.exception("refreshing the cluster view failed")

    async def refresh(self) -> None:
        records = await self.directory.list()
        hosts = {h.id: h for h in await self.directory.hosts()}
        for record in records:
            self._apply(record, hosts.get(record.owner) if record.owner else None)
        listed = {record.name for record in records}
        for process in list(self.supervisor):
            if process.name not in listed and not process.operating:
                self._removed(process)

    def _removed(self, process: TenantProcess) -> None:
        """The tenant is gone from the directory (`rm` on another host), or it is another
        tenant of that name now: unmap this one (stopping its worker first)."""
        async def stop_and_forget() -> None:
            await process.lose("removed from the cluster")
            process.removed = True
            if self.supervisor.tenants.get(process.name) is process:
                self.supervisor.forget(process)

        if process.state in LIVE:
            self.supervisor.env.run_in_background(stop_and_forget())
        else:
            process.removed = True
            self.supervisor.forget(process)

    async def refresh_hosts(self) -> None:
        """The cheap part of `refresh`: stop forwarding to owners whose lease expired."""
        hosts = {h.id: h for h in await self.directory.hosts()}
        for process in self.supervisor:
            owner_id = process.record.owner
            if process.state is S.MOVED and owner_id and owner_id != self.host_id:
                owner = hosts.get(owner_id)
                if owner is None or not owner.alive:
                    process.placed(dataclasses.replace(process.record, moved_to=None))

    async def refresh_one(self, name: str) -> None:
        """Another host says `name` changed owner (it claimed it): look now, not at the
        next refresh, so requests stop going to the old owner at once."""
        try:
            record, owner = await self.directory.owner_of(name)
        except UnknownTenant:  # removed (`rm` through another host)
            process = self.supervisor.tenants.get(name)
            if process is not None and not process.operating:
                self._removed(process)
            return
        self._apply(record, owner)

    def _apply(self, record: TenantRecord, owner: HostRecord | None) -> None:
        """Bring this host's view of one tenant in line with the directory's `record`."""
        supervisor = self.supervisor
        process = supervisor.tenants.get(record.name)
        if process is not None and process.record.creation_id != record.creation_id and (
                not process.operating):
            self._removed(process)  # removed and created again: another tenant of the name
            process = supervisor.tenants.get(record.name)
        if process is None:
            supervisor.adopt(record)
            return
        if process.record.creation_id != record.creation_id:
            return  # its old worker is still stopping: the next refresh maps the new one
        if record.epoch < process.record.epoch:
            return  # read before this host's own claim: older than what it knows
        if process.state is S.MOVED:
            if owner is not None and owner.alive and owner.id != self.host_id:
                if process.record.moved_to != owner.router_url or (
                        process.record.epoch != record.epoch):
                    process.placed(dataclasses.replace(record, moved_to=owner.router_url))
            else:  # its owner is gone (or none): the next request decides again
                process.placed(dataclasses.replace(record, moved_to=None))
        elif process.state is S.STOPPED and not process.operating:
            if owner is not None and owner.alive and owner.id != self.host_id:
                # lives there: `ls` says moved (to its router), requests go there at once
                process.placed(dataclasses.replace(record, moved_to=owner.router_url))
            else:
                process.record = record  # `ls` shows the owner as the directory has it
        elif process.state in LIVE and not process.operating and (
                record.owner != self.host_id or record.epoch != process.record.epoch):
            log.warning("tenant %s is owned by %s at epoch %d now: stopping its worker here",
                        record.name, record.owner, record.epoch, extra={"tenant": record.name})
            supervisor.env.run_in_background(
                process.lose(f"host {record.owner} owns it now (epoch {record.epoch})"))
