"""The target's side of a tenant's move (standalone hosts): stage, commit, resolve.

The protocol is switchboard/handover.py's; this module is what a target does with it.

- stage: the admin API has streamed the snapshot to a file in transfers/. It is checked in a
  subprocess (`python -m snapshots.staged_check`: intact, signed by this host's snapshot key,
  this tenant and creation id; the router never parses snapshots itself), its `meta.json` is
  written to `<data-dir>/migrations/incoming/<name>/`, and the snapshot is put in the
  tenant's folder (whatever a moved copy of the same tenant left there goes to the trash).
  With Unix-socket workers, a worker is started *parked* on `run/in-<token>.sock`: it
  restores the snapshot and waits (contract/worker.py `park`), so the restore, which grows
  with the state, happens before the switch. Nothing is owned or served.
- commit: under the tenant's migration lock, the journal bundle is unpacked into the
  tenant's journal folder and `Directory.receive` records the tenant at the new epoch: that
  durable write is the commit point. Then the parked worker's socket is renamed to the
  tenant's, and it replays the tail and serves (else a worker starts as usual), and the
  answer goes back.
- resolve: a source that lost the answer asks; the lock orders it after a commit in progress,
  and when nothing was committed the staged data (and the parked worker) are dropped, so no
  commit lands after it.

Epoch rule: a migration is taken only when its new epoch (the source's + 1) is newer than any
this host has recorded for the same creation id; a name held by another creation id is
another tenant, and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshots.durable import fsync_dir, make_dirs, write_atomic
from snapshots.layout import DataLayout
from switchboard.config import Config
from switchboard.directory import Directory, EpochConflict, TenantRecord
from switchboard.errors import (
    MigrationRefused,
    StorageFailed,
    TenantExists,
    TenantUnavailable,
    TransferFailed,
    UnknownTenant,
)
from switchboard.handover import read_bundle
from switchboard.peers import Peers
from switchboard.process import TenantProcess
from switchboard.spawner import BootFailure, WorkerHandle
from switchboard.states import TenantState
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.receiving")
CHECK_TIMEOUT_S = 300.0
META_FILE = "meta.json"
PARK_TIMEOUT_S = 600.0  # a parked worker's restore of the staged snapshot
PARKED_FOR_AT_MOST_S = 3600.0  # a staged migration nobody commits or resolves: dropped


class _Phases:
    """Milliseconds of each step of a commit, for the source's log and the bench."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._at = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round((now - self._at) * 1000, 1)
        self._at = now


@dataclass
class Parked:
    """A worker warmed up on the staged snapshot, waiting for the switch."""

    process: TenantProcess  # its tenant, as it will be once committed (not mapped until then)
    handle: WorkerHandle
    socket_path: Path
    epoch: int


class Receiver:
    def __init__(self, supervisor: Supervisor, directory: Directory, layout: DataLayout,
                 config: Config, peers: Peers) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.layout = layout
        self.config = config
        self.peers = peers
        self._locks: dict[str, asyncio.Lock] = {}
        self.parked: dict[str, Parked] = {}
        self._background: set[asyncio.Future[None]] = set()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def check_receivable(self, name: str, creation_id: str, epoch: int) -> None:
        """MigrationRefused unless a migration of `name` at epoch `epoch` + 1 may land here."""
        try:
            record = await self.directory.get(name)
        except UnknownTenant:
            return
        if record.creation_id != creation_id:
            raise MigrationRefused(
                f"another tenant named {name!r} exists on this host (another creation id); "
                "remove it there first")
        if record.epoch >= epoch + 1:
            raise MigrationRefused(
                f"this host has {name!r} at epoch {record.epoch}: a migration at epoch "
                f"{epoch + 1} is not newer, refused")
        if not record.moved_to:
            raise MigrationRefused(f"{name!r} is served by this host (epoch {record.epoch})")

    # --- stage -------------------------------------------------------------------------------

    async def stage(self, name: str, *, creation_id: str, epoch: int, generation: int,
                    snapshot: Path | None, source_router: str, source_admin: str
                    ) -> dict[str, Any]:
        async with self._lock(name):
            await self.check_receivable(name, creation_id, epoch)
            journal_pos = 0
            if generation:
                if snapshot is None:
                    raise TransferFailed("the pre-copy names a snapshot but sent none")
                journal_pos = await self._check_snapshot(name, creation_id, epoch, snapshot)
            await self._unpark(name)
            try:
                await asyncio.to_thread(self._stage_files, name, snapshot, {
                    "creation_id": creation_id, "epoch": epoch, "generation": generation,
                    "journal_pos": journal_pos, "source_router": source_router,
                    "source_admin": source_admin})
            except OSError as exc:
                await self._drop_staged(name)
                raise StorageFailed(f"cannot stage {name}: {exc.strerror or exc}") from exc
            parked = ""
            if self.config.worker_transport == "unix":
                started = time.monotonic()
                await self._park(name, creation_id, epoch)
                parked = f"; its worker restored it in {time.monotonic() - started:.2f}s"
        log.info("staged tenant %s from %s: snapshot generation %d (journal position %d), "
                 "epoch %d%s; waiting for the switch", name, source_router or "?", generation,
                 journal_pos, epoch, parked, extra={"tenant": name})
        return {"journal_pos": journal_pos, "generation": generation}

    def _stage_files(self, name: str, snapshot: Path | None, meta: dict[str, Any]) -> None:
        """meta.json in the incoming folder; the snapshot in the tenant's (new) folder."""
        incoming = self.layout.incoming_dir(name)
        self.layout.ensure_migrations_dir()
        shutil.rmtree(incoming, ignore_errors=True)
        make_dirs(incoming, mode=0o700)
        self.layout.delete_tenant(name)  # a moved copy of this tenant: superseded
        self.layout.create_tenant(name)
        generation = int(meta["generation"])
        if snapshot is not None and generation:
            make_dirs(self.layout.snapshot_dir(name), mode=0o700)
            target = self.layout.snapshot_path(name, generation)
            os.rename(snapshot, target)  # transfers/ and tenants/ share the data dir
            with open(target, "rb") as f:
                os.fsync(f.fileno())
            fsync_dir(self.layout.snapshot_dir(name))
        make_dirs(self.layout.journal_dir(name), mode=0o700)
        write_atomic(incoming / META_FILE, json.dumps(meta).encode())

    async def _park(self, name: str, creation_id: str, epoch: int) -> None:
        """Start a parked worker on the staged snapshot (TransferFailed if it cannot restore
        it: nothing is staged then)."""
        existing = self.supervisor.tenants.get(name)
        record = TenantRecord(
            id=existing.record.id if existing is not None else 0, name=name,
            creation_id=creation_id, epoch=epoch + 1, created_at=time.time(),
            app=existing.record.app if existing is not None else None,
            code_path=existing.record.code_path if existing is not None else None)
        process = TenantProcess(record, self.supervisor.env)
        socket_path = self.layout.incoming_socket_path(secrets.token_hex(4))
        try:
            handle = await process.spawn_parked(socket_path, PARK_TIMEOUT_S)
        except BootFailure as exc:
            await self._drop_staged(name)
            raise TransferFailed(f"the staged snapshot of {name} does not restore on this "
                                 f"host: {exc}") from exc
        parked = Parked(process, handle, socket_path, epoch)
        self.parked[name] = parked
        asyncio.get_running_loop().call_later(
            PARKED_FOR_AT_MOST_S, lambda: asyncio.ensure_future(self._expire(name, parked)))

    async def _expire(self, name: str, parked: Parked) -> None:
        async with self._lock(name):
            if self.parked.get(name) is parked:
                log.warning("dropping the migration of %s staged an hour ago: never switched",
                            name, extra={"tenant": name})
                await self._drop_staged(name)

    async def _unpark(self, name: str) -> None:
        parked = self.parked.pop(name, None)
        if parked is not None:
            await parked.handle.kill_and_reap()
            with contextlib.suppress(OSError):
                parked.socket_path.unlink()

    async def _drop_staged(self, name: str) -> None:
        """Nothing of a staged migration stays: its parked worker, its incoming folder, and
        the files in the tenant's folder unless a tenant of the name is mapped here."""
        await self._unpark(name)
        shutil.rmtree(self.layout.incoming_dir(name), ignore_errors=True)
        if name not in self.supervisor.tenants:
            with contextlib.suppress(OSError):
                self.layout.delete_tenant(name)

    async def _check_snapshot(self, name: str, creation_id: str, epoch: int,
                              snapshot: Path) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "snapshots.staged_check", str(snapshot),
            "--key-file", str(self.config.snapshot_key_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
        try:
            out, err = await asyncio.wait_for(process.communicate(), CHECK_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        try:
            verdict: dict[str, Any] = json.loads(out)
        except ValueError:
            raise TransferFailed(f"cannot check the snapshot: {err.decode()[-300:]}") from None
        if not verdict.get("ok"):
            raise TransferFailed(f"the snapshot of {name} does not verify on this host: "
                                 f"{verdict.get('status')}: {verdict.get('problem')} (do both "
                                 "hosts share snapshot.key?)")
        if verdict.get("tenant") != name:
            raise TransferFailed(f"the snapshot is of tenant {verdict.get('tenant')!r}, "
                                 f"not {name!r}")
        if verdict.get("creation_id") not in ("", creation_id):
            raise TransferFailed(f"the snapshot is of another tenant {name!r} (creation id "
                                 f"{verdict.get('creation_id')})")
        if int(verdict.get("epoch", 0)) > epoch:
            raise MigrationRefused(f"the snapshot was written at epoch {verdict.get('epoch')}, "
                                   f"newer than the migration's {epoch}")
        return int(verdict.get("journal_pos", 0))

    # --- commit ------------------------------------------------------------------------------

    def _staged_meta(self, name: str, creation_id: str, epoch: int) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(
                (self.layout.incoming_dir(name) / META_FILE).read_text())
        except (OSError, ValueError):
            raise MigrationRefused(f"nothing is staged here for {name!r}: run the "
                                   "migration again") from None
        if meta.get("creation_id") != creation_id or meta.get("epoch") != epoch:
            raise MigrationRefused(f"what is staged here for {name!r} is of another migration: "
                                   "run it again")
        return meta

    async def commit(self, name: str, *, creation_id: str, epoch: int,
                     bundle: Path | None) -> dict[str, Any]:
        clock = _Phases()
        async with self._lock(name):
            meta = self._staged_meta(name, creation_id, epoch)
            await self.check_receivable(name, creation_id, epoch)
            existing = self.supervisor.tenants.get(name)
            if existing is not None and existing.state is not TenantState.MOVED:
                raise MigrationRefused(f"{name!r} is {existing.state.value} on this host")
            try:
                await asyncio.to_thread(self._install, name, bundle)
            except OSError as exc:
                raise StorageFailed(f"cannot install {name}: {exc.strerror or exc}") from exc
            clock.lap("install")
            try:  # the commit point: epoch + 1 recorded durably
                record = await self.directory.receive(name, creation_id=creation_id,
                                                      epoch=epoch + 1)
            except (EpochConflict, TenantExists) as exc:
                raise MigrationRefused(str(exc)) from exc
            clock.lap("record")
            parked = self.parked.pop(name, None)
            if parked is not None and parked.epoch == epoch:
                tenant = parked.process
                async with tenant.lock:
                    tenant.set_record(record)
                    with contextlib.suppress(OSError):  # now at the tenant's own address
                        os.rename(parked.socket_path, self.layout.socket_path(record.id))
                if existing is not None:
                    self.supervisor.forget(existing)
                self.supervisor.tenants[name] = tenant
                async with tenant.lock:
                    if not await tenant.resume_parked(parked.handle):
                        parked = None
            else:
                if parked is not None:
                    await parked.handle.kill_and_reap()
                    parked = None
                if existing is not None:
                    async with existing.lock:
                        existing.set_record(record)
                    tenant = existing
                else:
                    tenant = self.supervisor.adopt(record)
            shutil.rmtree(self.layout.incoming_dir(name), ignore_errors=True)
        source_router = str(meta.get("source_router") or "")
        started, error = True, None
        try:
            await self.supervisor.wait_until_serving(tenant)
        except TenantUnavailable as exc:
            started, error = False, str(exc)
            log.error("tenant %s moved here but did not start: %s", name, exc,
                      extra={"tenant": name})
        clock.lap("start")
        log.info("tenant %s moved here from %s at epoch %d (%s)", name, source_router or "?",
                 record.epoch, "warm" if parked is not None else "cold start",
                 extra={"tenant": name})
        # Not in the pause: who forwards here (trusted) and where it came from (peers.json).
        task = asyncio.ensure_future(asyncio.to_thread(
            self._remember_source, name, source_router,
            str(meta.get("source_admin") or "") or None))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        worker = tenant.worker
        return {"router_url": self.peers.router_url, "epoch": record.epoch,
                "pid": worker.pid if worker is not None and started else None,
                "started": started, "error": error, "warm": parked is not None,
                "phases_ms": clock.phases}

    def _remember_source(self, name: str, source_router: str, source_admin: str | None) -> None:
        if source_router:
            self.peers.add(source_router)
        self.peers.set_origin(name, source_admin)

    def _install(self, name: str, bundle: Path | None) -> None:
        """Move the journal tail in next to the staged snapshot."""
        incoming = self.layout.incoming_dir(name)
        segments = read_bundle(bundle, incoming / "journal") if bundle is not None else []
        journal_dir = self.layout.journal_dir(name)
        make_dirs(journal_dir, mode=0o700)
        for segment in segments:
            os.rename(segment, journal_dir / segment.name)
        fsync_dir(journal_dir)

    # --- resolve -----------------------------------------------------------------------------

    async def resolve(self, name: str, *, creation_id: str, epoch: int) -> str:
        async with self._lock(name):
            with contextlib.suppress(UnknownTenant):
                record = await self.directory.get(name)
                if record.creation_id == creation_id and record.epoch >= epoch + 1:
                    return "committed"
            await self._drop_staged(name)
        log.info("migration of tenant %s at epoch %d resolved as aborted: staged data dropped",
                 name, epoch + 1, extra={"tenant": name})
        return "aborted"
