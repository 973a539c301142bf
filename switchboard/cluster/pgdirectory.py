"""The tenant directory and host leases in PostgreSQL (cluster mode; docs/cluster.md).

Implements `switchboard.directory.Directory` over the `tenants` table of
switchboard/cluster/schema.py, plus what only a cluster has: hosts and their leases
(`register`, `renew`, `hosts`, `declare_dead`) and `claim`, the change of owner a router
makes to serve a tenant itself.

Leases are judged by PostgreSQL's clock (`now()`), never a host's: a host's lease is live
while `lease_expires > now()`. `claim` is one conditional UPDATE: it takes the tenant (epoch
+ 1) only if its epoch is still the one the claimer saw and no other host with a live lease
owns it, so of concurrent claimers exactly one wins and the others get EpochConflict.

One connection, used by one coroutine at a time (an asyncio lock); a connection that broke
(PostgreSQL restarted) is replaced on the next call. A database that cannot be reached is a
StorageFailed, which the admin API and the proxy answer with 503.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from switchboard.directory import EpochConflict, TenantRecord, new_creation_id
from switchboard.errors import StorageFailed, TenantExists, UnknownTenant

_COLUMNS = ("id, name, creation_id, epoch, created_at, port, app, code_path, owner, moved_to, "
            "code_version")
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
# A change of owner waits at most this long for a worker's commit holding the row (a healthy
# one takes milliseconds; a paused one loses its session after tenant/pgstore.py's
# IDLE_IN_TRANSACTION_MS, and the request that wanted the claim is answered 503 meanwhile).
CLAIM_LOCK_TIMEOUT = b"SET LOCAL lock_timeout = '1s'"


@dataclass(frozen=True, slots=True)
class HostRecord:
    """One row of `hosts`, as `switchboard hosts --json` prints it."""

    id: str
    router_url: str
    admin_url: str
    alive: bool
    lease_expires_in_s: float  # negative once expired
    resident: int
    max_resident: int


def _record(row: Sequence[Any]) -> TenantRecord:
    return TenantRecord(int(row[0]), row[1], row[2], int(row[3]), float(row[4]), row[5],
                        row[6], row[7], row[8], row[9], row[10])


class PgDirectory:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._lock = asyncio.Lock()
        # Called with the names created or removed here, so the other hosts map or unmap
        # them at once rather than at their next full refresh (switchboard/cluster/node.py).
        self.on_changed: Callable[[builtins.list[str]], Awaitable[None]] | None = None

    @asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        """A transaction on the (re)opened connection; a database error as StorageFailed."""
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
                async with self._conn.transaction():
                    yield self._conn
            except pgerrors.LockNotAvailable as exc:
                raise StorageFailed(f"cannot {what}: a writer holds the tenant's row (a host "
                                    "paused mid-commit?); try again") from exc
            except psycopg.OperationalError as exc:
                raise StorageFailed(f"cannot {what}: PostgreSQL is unreachable ({exc})") from exc

    async def close_async(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def close(self) -> None:
        """The Directory protocol's close: drop the connection without waiting on the loop."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()

    # ---- Directory ----

    async def create(self, name: str, *, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        try:
            async with self._tx(f"create tenant {name!r}") as conn:
                cur = await conn.execute(
                    f"INSERT INTO tenants (name, creation_id, epoch, created_at, app, code_path) "
                    f"VALUES (%s, %s, 1, %s, %s, %s) RETURNING {_COLUMNS}",
                    (name, new_creation_id(), time.time(), app, code_path))
                row = await cur.fetchone()
        except pgerrors.UniqueViolation:
            raise TenantExists(name) from None
        assert row is not None
        if self.on_changed is not None:
            await self.on_changed([name])
        return _record(row)

    async def create_many(self, names: Sequence[str]) -> list[TenantRecord]:
        records: list[TenantRecord] = []
        created_at = time.time()
        current = ""
        try:
            async with self._tx(f"create {len(names)} tenants") as conn:
                for current in names:
                    cur = await conn.execute(
                        f"INSERT INTO tenants (name, creation_id, epoch, created_at) "
                        f"VALUES (%s, %s, 1, %s) RETURNING {_COLUMNS}",
                        (current, new_creation_id(), created_at))
                    row = await cur.fetchone()
                    assert row is not None
                    records.append(_record(row))
        except pgerrors.UniqueViolation:
            raise TenantExists(current) from None
        if self.on_changed is not None:
            await self.on_changed([r.name for r in records])
        return records

    async def get(self, name: str) -> TenantRecord:
        async with self._tx(f"read tenant {name!r}") as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE name = %s", (name,))
            row = await cur.fetchone()
        if row is None:
            raise UnknownTenant(name)
        return _record(row)

    async def list(self) -> list[TenantRecord]:
        async with self._tx("list tenants") as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY name")
            return [_record(row) for row in await cur.fetchall()]

    async def _update_returning(self, what: str, sql: str, params: Sequence[Any],
                                name: str) -> TenantRecord:
        async with self._tx(what) as conn:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
        if row is None:
            raise UnknownTenant(name)
        return _record(row)

    async def update(self, name: str, *, port: int | None = None, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        return await self._update_returning(
            f"update tenant {name!r}",
            f"UPDATE tenants SET port = coalesce(%s, port), app = coalesce(%s, app), "
            f"code_path = coalesce(%s, code_path) WHERE name = %s RETURNING {_COLUMNS}",
            (port, app, code_path, name), name)

    async def set_code_version(self, name: str, version: str | None) -> TenantRecord:
        return await self._update_returning(
            f"pin tenant {name!r}",
            f"UPDATE tenants SET code_version = %s WHERE name = %s RETURNING {_COLUMNS}",
            (version, name), name)

    async def set_placement(self, name: str, *, owner: str | None, moved_to: str | None,
                            expect_epoch: int) -> TenantRecord:
        async with self._tx(f"change the owner of tenant {name!r}") as conn:
            await conn.execute(CLAIM_LOCK_TIMEOUT)
            cur = await conn.execute(
                f"UPDATE tenants SET owner = %s, moved_to = %s, epoch = epoch + 1 "
                f"WHERE name = %s AND epoch = %s RETURNING {_COLUMNS}",
                (owner, moved_to, name, expect_epoch))
            row = await cur.fetchone()
        if row is None:
            current = await self.get(name)  # UnknownTenant when it is gone
            raise EpochConflict(name, expect_epoch, current.epoch)
        return _record(row)

    async def receive(self, name: str, *, creation_id: str, epoch: int) -> TenantRecord:
        async with self._tx(f"receive tenant {name!r}") as conn:
            cur = await conn.execute(
                "SELECT creation_id, epoch FROM tenants WHERE name = %s FOR UPDATE", (name,))
            row = await cur.fetchone()
            if row is None:
                await conn.execute(
                    "INSERT INTO tenants (name, creation_id, epoch, created_at) "
                    "VALUES (%s, %s, %s, %s)", (name, creation_id, epoch, time.time()))
            elif row[0] != creation_id:
                raise TenantExists(name)
            elif int(row[1]) >= epoch:
                raise EpochConflict(name, epoch - 1, int(row[1]))
            else:
                await conn.execute("UPDATE tenants SET epoch = %s, owner = NULL, moved_to = NULL "
                                   "WHERE name = %s", (epoch, name))
        return await self.get(name)

    async def remove(self, name: str) -> None:
        async with self._tx(f"remove tenant {name!r}") as conn:
            cur = await conn.execute("DELETE FROM tenants WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise UnknownTenant(name)
        if self.on_changed is not None:  # the other hosts unmap it (switchboard/cluster/node)
            await self.on_changed([name])

    # ---- cluster: ownership ----

    async def claim(self, name: str, host_id: str, *, expect_epoch: int) -> TenantRecord:
        """Make `host_id` the owner (epoch + 1) if the epoch is still `expect_epoch` and no
        other host with a live lease owns the tenant; else EpochConflict, nothing changed."""
        async with self._tx(f"claim tenant {name!r}") as conn:
            await conn.execute(CLAIM_LOCK_TIMEOUT)
            cur = await conn.execute(
                f"UPDATE tenants SET owner = %s, moved_to = NULL, epoch = epoch + 1 "
                f"WHERE name = %s AND epoch = %s AND (owner IS NULL OR owner = %s OR NOT EXISTS "
                f"(SELECT 1 FROM hosts WHERE hosts.id = tenants.owner "
                f"AND hosts.lease_expires > now())) RETURNING {_COLUMNS}",
                (host_id, name, expect_epoch, host_id))
            row = await cur.fetchone()
        if row is None:
            current = await self.get(name)
            raise EpochConflict(name, expect_epoch, current.epoch)
        return _record(row)

    async def owner_of(self, name: str) -> tuple[TenantRecord, HostRecord | None]:
        """The tenant's record and its owner's host row (None: no owner, or an unknown one)."""
        record = await self.get(name)
        if record.owner is None:
            return record, None
        hosts = await self.hosts(only=record.owner)
        return record, (hosts[0] if hosts else None)

    async def newest_snapshot(self, name: str) -> tuple[int, int] | None:
        """(generation, journal_pos) of the tenant's newest complete snapshot, if any."""
        async with self._tx(f"read the snapshots of {name!r}") as conn:
            cur = await conn.execute(
                "SELECT s.generation, s.journal_pos FROM snapshots s JOIN tenants t "
                "ON t.id = s.tenant_id WHERE t.name = %s AND s.complete "
                "ORDER BY s.generation DESC LIMIT 1", (name,))
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    # ---- cluster: hosts and leases ----

    async def register(self, host_id: str, *, router_url: str, admin_url: str, ttl_s: float,
                       max_resident: int) -> float:
        """Add or refresh this host's row with a new lease; returns the lease's seconds."""
        async with self._tx(f"register host {host_id!r}") as conn:
            await conn.execute(
                "INSERT INTO hosts (id, router_url, admin_url, lease_expires, max_resident) "
                "VALUES (%s, %s, %s, now() + make_interval(secs => %s), %s) "
                "ON CONFLICT (id) DO UPDATE SET router_url = excluded.router_url, "
                "admin_url = excluded.admin_url, lease_expires = excluded.lease_expires, "
                "max_resident = excluded.max_resident",
                (host_id, router_url, admin_url, ttl_s, max_resident))
        return ttl_s

    async def renew(self, host_id: str, *, ttl_s: float, resident: int) -> bool:
        """Extend this host's lease if it is still live; False when it had expired (or the
        host was declared dead): the host must treat every tenant it owned as lost."""
        async with self._tx(f"renew the lease of host {host_id!r}") as conn:
            cur = await conn.execute(
                "UPDATE hosts SET lease_expires = now() + make_interval(secs => %s), "
                "resident = %s WHERE id = %s AND lease_expires > now()",
                (ttl_s, resident, host_id))
            return cur.rowcount == 1

    async def declare_dead(self, host_id: str) -> bool:
        """End the host's lease now (`failover --from`); False for an unknown host."""
        async with self._tx(f"declare host {host_id!r} dead") as conn:
            cur = await conn.execute(
                "UPDATE hosts SET lease_expires = least(lease_expires, now() - interval '1 ms') "
                "WHERE id = %s", (host_id,))
            return cur.rowcount == 1

    async def hosts(self, *, only: str | None = None) -> builtins.list[HostRecord]:
        async with self._tx("list hosts") as conn:
            cur = await conn.execute(
                "SELECT id, router_url, admin_url, lease_expires > now(), "
                "extract(epoch FROM lease_expires - now()), resident, max_resident "
                "FROM hosts WHERE %s::text IS NULL OR id = %s ORDER BY id", (only, only))
            return [HostRecord(row[0], row[1], row[2], bool(row[3]), round(float(row[4]), 3),
                               int(row[5]), int(row[6])) for row in await cur.fetchall()]
