"""This host's lease in the cluster (DESIGN.md "Between hosts"; docs/cluster.md).

The host registers at start and renews every lease_ttl_s / 3; PostgreSQL's clock judges the
lease (switchboard/cluster/pgdirectory.py). Locally the host counts its lease as held until
RENEW_MARGIN of the TTL before it could expire, measured from when the last successful
renewal was sent (so a renewal that PostgreSQL applied late only shortens it): past that, or
when PostgreSQL says the lease had already expired (a paused or partitioned host coming
back), `on_lost` runs (the router stops its workers: they serve nothing, reads included) and
the host registers again. The workers cannot acknowledge a write after the lease expired
either way: their commits check it in PostgreSQL (tenant/pgstore.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from switchboard.cluster.pgdirectory import PgDirectory
from switchboard.errors import StorageFailed

log = logging.getLogger("switchboard.cluster")

RENEW_MARGIN = 0.25  # of the TTL: the local view ends this much before PostgreSQL's


class LeaseKeeper:
    def __init__(self, directory: PgDirectory, host_id: str, *, router_url: str,
                 admin_url: str, ttl_s: float, max_resident: int,
                 resident: Callable[[], int], on_lost: Callable[[str], Awaitable[None]]) -> None:
        self.directory = directory
        self.host_id = host_id
        self.router_url = router_url
        self.admin_url = admin_url
        self.ttl_s = ttl_s
        self.max_resident = max_resident
        self.resident = resident
        self.on_lost = on_lost
        self.valid_until = 0.0  # monotonic
        self.held = False

    @property
    def live(self) -> bool:
        """This host may serve its tenants now."""
        return self.held and time.monotonic() < self.valid_until

    async def register(self) -> None:
        """Add this host with a fresh lease (StorageFailed when PostgreSQL is unreachable)."""
        sent = time.monotonic()
        await self.directory.register(self.host_id, router_url=self.router_url,
                                      admin_url=self.admin_url, ttl_s=self.ttl_s,
                                      max_resident=self.max_resident)
        self._held_from(sent)
        log.info("host %s holds a %gs lease (router %s)", self.host_id, self.ttl_s,
                 self.router_url)

    def _held_from(self, sent: float) -> None:
        self.held = True
        self.valid_until = sent + self.ttl_s * (1 - RENEW_MARGIN)

    async def _lose(self, why: str) -> None:
        if not self.held:
            return
        self.held = False
        log.error("host %s: %s: it serves none of its tenants until it holds a lease again",
                  self.host_id, why)
        await self.on_lost(why)

    async def run(self) -> None:
        """Renew until cancelled."""
        interval_s = self.ttl_s / 3
        while True:
            await asyncio.sleep(max(0.05, min(interval_s, self.valid_until - time.monotonic()))
                                if self.held else interval_s)
            if self.held and time.monotonic() >= self.valid_until:
                await self._lose("its lease could not be renewed in time")
            sent = time.monotonic()
            try:
                renewed = await asyncio.wait_for(self.directory.renew(
                    self.host_id, ttl_s=self.ttl_s, resident=self.resident()), interval_s)
                if renewed:
                    self._held_from(sent)
                    continue
                await self._lose("its lease had expired in PostgreSQL")
                await asyncio.wait_for(self.register(), interval_s)
            except (StorageFailed, TimeoutError) as exc:
                log.warning("host %s: cannot renew its lease: %s", self.host_id, exc)
