"""The target's side of a tenant's move (standalone hosts): stage, commit, resolve.

The protocol is switchboard/handover.py's; this module is what a target does with it.

- stage: the admin API has streamed the snapshot to a file in transfers/. It is checked in a
  subprocess (`python -m snapshots.staged_check`: intact, signed by this host's snapshot key,
  this tenant and creation id; the router never parses snapshots itself) and moved with a
  `meta.json` into `<data-dir>/migrations/incoming/<name>/`. Nothing is owned or served.
- commit: under the tenant's migration lock, the journal bundle is unpacked next to the
  staged snapshot, both are moved into the tenant's folder (whatever a moved copy of the same
  tenant left there goes to the trash), and `Directory.receive` records the tenant at the new
  epoch: that durable write is the commit point. Then the worker starts (warm: from the
  zygote, restoring the snapshot and replaying the tail) and the answer goes back.
- resolve: a source that lost the answer asks; the lock orders it after a commit in progress,
  and when nothing was committed the staged data is dropped, so no commit lands after it.

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
import shutil
import sys
from pathlib import Path
from typing import Any

from snapshots.durable import fsync_dir, make_dirs, write_atomic
from snapshots.layout import DataLayout
from switchboard.config import Config
from switchboard.directory import Directory, EpochConflict
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
from switchboard.states import TenantState
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.receiving")
CHECK_TIMEOUT_S = 300.0
SNAPSHOT_FILE = "snapshot"
META_FILE = "meta.json"


class Receiver:
    def __init__(self, supervisor: Supervisor, directory: Directory, layout: DataLayout,
                 config: Config, peers: Peers) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.layout = layout
        self.config = config
        self.peers = peers
        self._locks: dict[str, asyncio.Lock] = {}

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
            incoming = self.layout.incoming_dir(name)
            try:
                await asyncio.to_thread(self._stage_files, incoming, snapshot, {
                    "creation_id": creation_id, "epoch": epoch, "generation": generation,
                    "journal_pos": journal_pos, "source_router": source_router,
                    "source_admin": source_admin})
            except OSError as exc:
                with contextlib.suppress(OSError):
                    shutil.rmtree(incoming)
                raise StorageFailed(f"cannot stage {name}: {exc.strerror or exc}") from exc
        log.info("staged tenant %s from %s: snapshot generation %d (journal position %d), "
                 "epoch %d; waiting for the switch", name, source_router or "?", generation,
                 journal_pos, epoch, extra={"tenant": name})
        return {"journal_pos": journal_pos, "generation": generation}

    def _stage_files(self, incoming: Path, snapshot: Path | None, meta: dict[str, Any]) -> None:
        self.layout.ensure_migrations_dir()
        shutil.rmtree(incoming, ignore_errors=True)
        make_dirs(incoming, mode=0o700)
        if snapshot is not None and meta["generation"]:
            target = incoming / SNAPSHOT_FILE
            os.rename(snapshot, target)  # transfers/ and migrations/ share the data dir
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        write_atomic(incoming / META_FILE, json.dumps(meta).encode())

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
        async with self._lock(name):
            meta = self._staged_meta(name, creation_id, epoch)
            await self.check_receivable(name, creation_id, epoch)
            existing = self.supervisor.tenants.get(name)
            if existing is not None and existing.state is not TenantState.MOVED:
                raise MigrationRefused(f"{name!r} is {existing.state.value} on this host")
            try:
                await asyncio.to_thread(self._install, name, meta, bundle)
            except OSError as exc:
                raise StorageFailed(f"cannot install {name}: {exc.strerror or exc}") from exc
            try:  # the commit point: epoch + 1 recorded durably
                record = await self.directory.receive(name, creation_id=creation_id,
                                                      epoch=epoch + 1)
            except (EpochConflict, TenantExists) as exc:
                raise MigrationRefused(str(exc)) from exc
            if existing is not None:
                async with existing.lock:
                    existing.set_record(record)
                tenant = existing
            else:
                tenant = self.supervisor.adopt(record)
            shutil.rmtree(self.layout.incoming_dir(name), ignore_errors=True)
            source_router = str(meta.get("source_router") or "")
            if source_router:
                self.peers.add(source_router)
            self.peers.set_origin(name, str(meta.get("source_admin") or "") or None)
        log.info("tenant %s moved here from %s at epoch %d; starting it", name,
                 source_router or "?", record.epoch, extra={"tenant": name})
        started, error = True, None
        try:
            await self.supervisor.wait_until_serving(tenant)
        except TenantUnavailable as exc:
            started, error = False, str(exc)
            log.error("tenant %s moved here but did not start: %s", name, exc,
                      extra={"tenant": name})
        worker = tenant.worker
        return {"router_url": self.peers.router_url, "epoch": record.epoch,
                "pid": worker.pid if worker is not None and started else None,
                "started": started, "error": error}

    def _install(self, name: str, meta: dict[str, Any], bundle: Path | None) -> None:
        """Move the staged snapshot and the journal tail into the tenant's (new) folder."""
        incoming = self.layout.incoming_dir(name)
        segments = read_bundle(bundle, incoming / "journal") if bundle is not None else []
        self.layout.delete_tenant(name)  # a moved copy of this tenant: superseded
        self.layout.create_tenant(name)
        generation = int(meta.get("generation") or 0)
        if generation:
            make_dirs(self.layout.snapshot_dir(name), mode=0o700)
            os.rename(incoming / SNAPSHOT_FILE, self.layout.snapshot_path(name, generation))
            fsync_dir(self.layout.snapshot_dir(name))
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
            shutil.rmtree(self.layout.incoming_dir(name), ignore_errors=True)
        log.info("migration of tenant %s at epoch %d resolved as aborted: staged data dropped",
                 name, epoch + 1, extra={"tenant": name})
        return "aborted"
