"""Cluster mode wired into `switchboard serve` (switchboard/server.py calls these two).

`open_directory` upgrades the schema (switchboard/cluster/schema.py) and returns the
PostgreSQL directory. `ClusterNode.start` registers this host's lease, hooks the routing
decisions into the supervisor (switchboard/cluster/routing.py) and runs the lease renewal
and the view refresh; `leave` (a clean shutdown, after the workers stopped and stored their
last snapshots) ends the lease at once, so other hosts take its tenants over without
waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable

from switchboard.cluster import schema
from switchboard.cluster.leases import LeaseKeeper
from switchboard.cluster.moving import ClusterMigrator
from switchboard.cluster.pgdirectory import PgDirectory
from switchboard.cluster.routing import ClusterRouting
from switchboard.config import Config
from switchboard.errors import ConfigError, StorageFailed, SwitchboardError
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.cluster")
ANNOUNCE_TIMEOUT_S = 2.0


async def open_directory(config: Config) -> PgDirectory:
    """The cluster's directory, its schema brought up to date. ConfigError when PostgreSQL
    cannot be reached or its schema is newer than this code."""
    import psycopg

    try:
        before, after = await asyncio.to_thread(schema.upgrade, config.cluster_url)
    except psycopg.Error as exc:
        raise ConfigError(f"cannot reach the cluster database: {exc}") from exc
    except schema.SchemaTooNew as exc:
        raise ConfigError(str(exc)) from exc
    if before != after:
        log.info("cluster database schema upgraded from version %d to %d", before, after)
    return PgDirectory(config.cluster_url)


def host_id_of(config: Config) -> str:
    return config.host_id or socket.gethostname()


class ClusterNode:
    def __init__(self, config: Config, directory: PgDirectory, supervisor: Supervisor) -> None:
        self.config = config
        self.directory = directory
        self.supervisor = supervisor
        self.host_id = host_id_of(config)
        self._tasks: list[asyncio.Task[None]] = []
        self.lease: LeaseKeeper | None = None

    async def start(self, router_url: str, admin_url: str) -> None:
        """Register this host (StorageFailed when PostgreSQL refuses) and start serving."""
        supervisor = self.supervisor
        # Its own connection: a renewal never waits behind a claim or a refresh.
        self.lease_directory = PgDirectory(self.config.cluster_url)
        lease = LeaseKeeper(
            self.lease_directory, self.host_id, router_url=router_url, admin_url=admin_url,
            ttl_s=self.config.lease_ttl_s, max_resident=self.config.max_resident,
            resident=supervisor.resident_count, on_lost=self._lost)
        self.lease = lease
        self.routing = ClusterRouting(self.directory, supervisor, lease)
        self.routing.announce = self._announce
        self.migrator = ClusterMigrator(self.config, self.directory, supervisor, self.host_id)
        self.migrator.announce = self._announce

        def changed(names: list[str]) -> Awaitable[None]:  # in the background: no wait
            if len(names) == 1:
                supervisor.env.run_in_background(self._announce(names[0]))
            else:
                supervisor.env.run_in_background(self.tell_others("/v1/cluster/refresh"))
            return asyncio.sleep(0)

        self.directory.on_changed = changed
        await lease.register()
        supervisor.env.take_ownership = self.routing.take_ownership
        supervisor.env.look_up = self.routing.look_up
        supervisor.env.lease_live = lambda: lease.live
        self._tasks = [asyncio.ensure_future(lease.run()),
                       asyncio.ensure_future(self.routing.watch())]

    async def _announce(self, name: str) -> None:
        """Tell every other live host that `name` changed (this host created, claimed,
        moved or removed it; best effort: a host that does not hear it learns at its next
        full refresh)."""
        from urllib.parse import quote

        await self.tell_others(f"/v1/cluster/tenants/{quote(name)}/changed")

    async def failed_over(self) -> None:
        """A host was declared dead (`failover --from`): every host, this one included,
        looks at the directory now, so none goes on forwarding to the dead one."""
        await self.routing.refresh()
        await self.tell_others("/v1/cluster/refresh")

    async def tell_others(self, path: str) -> None:
        """POST `path` (signed, no body) to every other live host's admin API, at once."""
        from switchboard.handover import TargetClient
        from switchboard.signing import load_key

        try:
            others = [h for h in await self.directory.hosts()
                      if h.alive and h.id != self.host_id]
        except StorageFailed:
            return
        key = load_key(self.config.key_file)

        async def tell(admin_url: str) -> None:
            client = TargetClient(admin_url, key)
            try:
                await asyncio.wait_for(client.call("POST", path), ANNOUNCE_TIMEOUT_S)
            except (SwitchboardError, TimeoutError) as exc:
                log.debug("could not tell %s %s: %s", admin_url, path, exc)
            finally:
                await client.close()

        await asyncio.gather(*(tell(h.admin_url) for h in others))

    async def _lost(self, why: str) -> None:
        await self.routing.lose_all(why)

    def stop_renewing(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def leave(self) -> None:
        """After the workers stopped: end this host's lease now."""
        self.stop_renewing()
        with contextlib.suppress(StorageFailed, TimeoutError):
            await asyncio.wait_for(self.directory.declare_dead(self.host_id), 5)
        await self.directory.close_async()
        await self.lease_directory.close_async()


async def join(config: Config, directory: PgDirectory, supervisor: Supervisor, *,
               router_url: str, admin_url: str) -> ClusterNode:
    """Start this host's part in the cluster; ConfigError when it cannot register."""
    node = ClusterNode(config, directory, supervisor)
    try:
        await node.start(router_url, admin_url)
    except StorageFailed as exc:
        raise ConfigError(f"cannot join the cluster: {exc}") from exc
    return node
