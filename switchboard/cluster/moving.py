"""`switchboard migrate NAME --to HOST_ID` in cluster mode: a pre-copied, fenced change of
owner (docs/cluster.md). Runs on the tenant's owner; nothing but the ownership moves, since
the journal and snapshots are in PostgreSQL already.

1. Pre-copy, while the tenant serves: a checkpoint, a wait until that snapshot is in
   PostgreSQL (the worker stores it after each checkpoint, tenant/pgjournal.py), and the
   target warms up (`prepare`): a parked worker for the next epoch streams that snapshot out
   of PostgreSQL and restores it, without serving (contract/worker.py `park`).
2. Switch, holding the tenant's lock (new requests wait, as they do for a start): in-flight
   requests drain, the worker stops without a final checkpoint (every acknowledged write is
   committed in PostgreSQL already), the owner changes by compare-and-set (epoch + 1: a
   worker of the old epoch can no longer commit), the target resumes its parked worker
   (`take`: it checks it may write, replays the journal written since the snapshot and
   serves; a target that could not warm up starts cold), and only then are the held requests
   released: this host forwards them, and every later one, to the target's router.

The pause is the drain, the stop, one UPDATE and the replay of the tail. A failure before the
compare-and-set leaves the tenant here (stopped at worst: the next request starts it) and the
target drops its parked worker; after it, the target owns the tenant whether or not its start
answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from switchboard.cluster.pgdirectory import PgDirectory
from switchboard.config import Config
from switchboard.directory import EpochConflict
from switchboard.errors import (
    MigrationRefused,
    TargetRefused,
    TargetUnreachable,
    TransferFailed,
)
from switchboard.handover import TargetClient
from switchboard.process import TenantProcess
from switchboard.signing import load_key
from switchboard.spawner import BootFailure, WorkerHandle
from switchboard.states import LIVE, TenantState
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.cluster")
S = TenantState
UPLOAD_WAIT_S = 60.0  # the pre-copy waits this long for the snapshot to reach PostgreSQL
PARKED_FOR_AT_MOST_S = 600.0  # a warmed-up worker whose switch never came is dropped then


class NotOwner(MigrationRefused):
    """The tenant is owned by another host: ask that host (`owner_admin_url`)."""

    def __init__(self, message: str, owner_admin_url: str | None) -> None:
        super().__init__(message)
        self.owner_admin_url = owner_admin_url


class ClusterMigrator:
    def __init__(self, config: Config, directory: PgDirectory, supervisor: Supervisor,
                 host_id: str) -> None:
        self.config = config
        self.directory = directory
        self.supervisor = supervisor
        self.host_id = host_id
        self.layout = supervisor.env.layout
        # Tells the other live hosts that `name` changed owner (switchboard/cluster/node.py).
        self.announce: Callable[[str], Awaitable[None]] | None = None
        # Warmed-up workers of incoming migrations: name -> (worker, its socket, epoch).
        self.parked: dict[str, tuple[WorkerHandle, Path, int]] = {}

    async def migrate(self, name: str, to: str) -> dict[str, Any]:
        record, owner = await self.directory.owner_of(name)
        hosts = {h.id: h for h in await self.directory.hosts()}
        target = hosts.get(to)
        if target is None:
            raise MigrationRefused(f"no host {to!r} in this cluster "
                                   f"(hosts: {', '.join(sorted(hosts)) or 'none'})")
        if not target.alive:
            raise MigrationRefused(f"host {to} holds no live lease: it cannot take {name}")
        if record.owner == to:
            return {"name": name, "moved_to": target.router_url, "host": to,
                    "epoch": record.epoch, "pause_ms": 0.0, "unchanged": True}
        if record.owner not in (None, self.host_id) and owner is not None and owner.alive:
            raise NotOwner(f"{name} is owned by host {record.owner}: migrate it there",
                           owner.admin_url)
        tenant = self.supervisor.tenants.get(name) or self.supervisor.adopt(record)
        # 1. pre-copy
        precopy_started = time.monotonic()
        if tenant.serving:
            checkpoint = await tenant.checkpoint()
            if checkpoint.generation is not None:
                await self._stored(name, checkpoint.generation)
        client = TargetClient(target.admin_url, load_key(self.config.key_file))
        try:
            warm = await self._prepare_there(client, name, record.epoch + 1)
            precopy_s = time.monotonic() - precopy_started
            # 2. switch
            async with tenant.lock:
                switch_started = time.monotonic()
                current = await self.directory.get(name)
                if current.owner not in (None, self.host_id):
                    raise MigrationRefused(f"{name} changed owner meanwhile; run again")
                await tenant.stop_for_move(self.config.migrate_drain_timeout_s)
                try:
                    if current.epoch != record.epoch:  # the target warmed up another epoch
                        raise EpochConflict(name, record.epoch, current.epoch)
                    moved = await self.directory.set_placement(
                        name, owner=to, moved_to=None, expect_epoch=current.epoch)
                except EpochConflict as exc:
                    if warm:
                        await self._cancel_there(client, name)
                    raise MigrationRefused(f"{name} changed owner meanwhile; run again") \
                        from exc
                tenant.set_record(dataclasses.replace(moved, moved_to=target.router_url))
                started = await self._start_there(client, name)
                pause_s = time.monotonic() - switch_started
            if self.announce is not None:  # the other hosts forward to the target directly
                self.supervisor.env.run_in_background(self.announce(name))
        finally:
            await client.close()
        log.info("moved %s to host %s at epoch %d: pre-copy %.0f ms, requests held %.0f ms",
                 name, to, moved.epoch, precopy_s * 1000, pause_s * 1000,
                 extra={"tenant": name})
        return {"name": name, "moved_to": target.router_url, "host": to, "epoch": moved.epoch,
                "pause_ms": round(pause_s * 1000, 1), "precopy_ms": round(precopy_s * 1000, 1),
                "started": started, "prewarmed": warm}

    async def _prepare_there(self, client: TargetClient, name: str, epoch: int) -> bool:
        """Ask the target to restore the newest snapshot into a parked worker now, for
        `epoch` (what the switch will set). False when it did not: it starts cold then."""
        try:
            reply = await client.call("POST", f"/v1/cluster/tenants/{quote(name)}/prepare",
                                      json.dumps({"epoch": epoch}).encode())
        except (TargetRefused, TargetUnreachable) as exc:
            log.warning("the target of %s did not warm it up (it starts cold): %s", name, exc,
                        extra={"tenant": name})
            return False
        return bool(reply.get("parked"))

    async def _cancel_there(self, client: TargetClient, name: str) -> None:
        with contextlib.suppress(TargetRefused, TargetUnreachable):
            await client.call("POST", f"/v1/cluster/tenants/{quote(name)}/prepare",
                              json.dumps({"cancel": True}).encode())

    async def migrate_from_any_host(self, name: str, to: str) -> dict[str, Any]:
        """`migrate` here if this host owns the tenant, else on its owner (one signed call
        to the owner's admin API, with the cluster's shared key)."""
        try:
            return await self.migrate(name, to)
        except NotOwner as exc:
            if not exc.owner_admin_url:
                raise
            owner = exc.owner_admin_url
        client = TargetClient(owner, load_key(self.config.key_file))
        try:
            return await client.call("POST", f"/v1/cluster/tenants/{quote(name)}/migrate",
                                     json.dumps({"to": to, "hop": 1}).encode())
        except TargetRefused as exc:
            raise MigrationRefused(str(exc)) from exc
        except TargetUnreachable as exc:
            raise TransferFailed(f"the owner of {name} ({owner}) does not answer: {exc}") \
                from exc
        finally:
            await client.close()

    async def _stored(self, name: str, generation: int) -> None:
        deadline = time.monotonic() + UPLOAD_WAIT_S
        while True:
            newest = await self.directory.newest_snapshot(name)
            if newest is not None and newest[0] >= generation:
                return
            if time.monotonic() > deadline:
                raise TransferFailed(f"snapshot generation {generation} of {name} did not "
                                     f"reach PostgreSQL within {UPLOAD_WAIT_S:g}s; it keeps "
                                     "serving here")
            await asyncio.sleep(0.02)

    async def _start_there(self, client: TargetClient, name: str) -> bool:
        """Tell the new owner to start the tenant now (it restores from PostgreSQL); False
        when it did not (its next request starts it)."""
        try:
            reply = await client.call("POST", f"/v1/cluster/tenants/{quote(name)}/take",
                                      json.dumps({"start": True}).encode())
        except (TargetRefused, TargetUnreachable) as exc:
            log.warning("the new owner of %s did not start it: %s", name, exc,
                        extra={"tenant": name})
            return False
        return bool(reply.get("started"))

    async def prepare(self, name: str, epoch: int) -> dict[str, Any]:
        """On a migration's target, before the switch: start a worker for `name` at `epoch`
        (the one the switch will set) that streams the newest snapshot out of PostgreSQL and
        restores it, then waits (parked); `take` resumes it. A previous one is dropped."""
        await self.cancel(name)
        record = await self.directory.get(name)
        if record.epoch + 1 != epoch:
            raise MigrationRefused(f"{name} is at epoch {record.epoch}: cannot warm up "
                                   f"epoch {epoch}")
        existing = self.supervisor.tenants.get(name)
        if existing is not None and existing.state in LIVE:
            raise MigrationRefused(f"{name} runs on this host already")
        warming = TenantProcess(dataclasses.replace(
            record, epoch=epoch, owner=self.host_id, moved_to=None), self.supervisor.env)
        socket_path = self.layout.incoming_socket_path(secrets.token_hex(4))
        try:
            handle = await warming.spawn_parked(socket_path, self.config.start_timeout_s * 4)
        except BootFailure as exc:
            raise TransferFailed(f"{name} does not restore on this host: {exc}") from exc
        self.parked[name] = (handle, socket_path, epoch)
        asyncio.get_running_loop().call_later(
            PARKED_FOR_AT_MOST_S,
            lambda: self.supervisor.env.run_in_background(self._expire(name, handle)))
        return {"name": name, "parked": True, "epoch": epoch}

    async def cancel(self, name: str) -> None:
        parked = self.parked.pop(name, None)
        if parked is not None:
            handle, socket_path, _epoch = parked
            await handle.kill_and_reap()
            with contextlib.suppress(OSError):
                socket_path.unlink()

    async def _expire(self, name: str, handle: WorkerHandle) -> None:
        parked = self.parked.get(name)
        if parked is not None and parked[0] is handle:
            log.warning("dropping the warmed-up worker of %s: the switch never came", name,
                        extra={"tenant": name})
            await self.cancel(name)

    async def take(self, name: str, *, start: bool) -> dict[str, Any]:
        """On the new owner: forget any forwarding of `name` (this host owns it now) and,
        with `start`, start its worker (the warmed-up one, if any) before answering."""
        record = await self.directory.get(name)
        if record.owner != self.host_id:
            await self.cancel(name)
            raise MigrationRefused(f"{name} is owned by {record.owner}, not this host")
        tenant = self.supervisor.tenants.get(name) or self.supervisor.adopt(record)
        parked = self.parked.pop(name, None)
        async with tenant.lock:
            if tenant.state in (S.MOVED, S.STOPPED):
                tenant.set_record(dataclasses.replace(record, moved_to=None))
            if parked is not None:
                handle, socket_path, epoch = parked
                if epoch == record.epoch and tenant.state is S.STOPPED and start:
                    os.rename(socket_path, self.layout.socket_path(record.id))
                    if await tenant.resume_parked(handle):
                        return {"name": name, "started": True, "epoch": record.epoch,
                                "prewarmed": True}
                else:
                    await handle.kill_and_reap()
                    with contextlib.suppress(OSError):
                        socket_path.unlink()
        if not start:
            return {"name": name, "started": False}
        serving = await self.supervisor.acquire(name)
        self.supervisor.release(serving, 0, 0)
        return {"name": name, "started": True, "epoch": serving.record.epoch}
