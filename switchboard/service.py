"""The operations the admin API exposes (`switchboard.api.TenantService`), over the directory,
the supervisor and the disk layout. Each operation is a short script; the tenant process does
the work on its worker, `switchboard.transfer` the work on export files."""

from __future__ import annotations

import logging
from pathlib import Path

from contract.names import is_valid_name
from snapshots.layout import DataLayout
from switchboard import metrics, transfer
from switchboard.api import CheckpointResult, ExportedFile, TenantInfo
from switchboard.directory import Directory
from switchboard.errors import BadTenantName, StorageFailed, TenantExists
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.service")


class TenantOperations:
    def __init__(self, supervisor: Supervisor, directory: Directory, layout: DataLayout) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.layout = layout
        config = supervisor.config
        self.export_tool = transfer.ExportTool(layout, config.snapshot_key_path,
                                               config.allow_unsigned)
        self.metrics = metrics.registry(metrics.RouterCollector(
            supervisor.counters, lambda: supervisor.tenants.values(), supervisor.spawner))
        for leftover in layout.sweep_trash():  # a crash in the middle of an earlier rm
            log.info("removed %s, left by an interrupted rm", leftover)

    def list_tenants(self) -> list[TenantInfo]:
        return [t.info() for t in sorted(self.supervisor, key=lambda t: t.name)]

    def get_tenant(self, name: str) -> TenantInfo:
        return self.supervisor.get(name).info()

    async def create_tenant(self, name: str) -> TenantInfo:
        if not is_valid_name(name):
            raise BadTenantName(name)
        record = await self.directory.create(name)
        try:
            # Files of an earlier tenant of this name (a crash between rm's steps) are not
            # this one's: a new tenant starts empty.
            self.layout.delete_tenant(name)
            self.layout.create_tenant(name)
        except OSError as exc:
            await self.directory.remove(name)
            raise StorageFailed(f"cannot create tenant {name!r}: {exc.strerror or exc}") from exc
        return self.supervisor.adopt(record).info()

    async def create_tenants(self, names: list[str]) -> list[TenantInfo]:
        """Create every name, or none: one transaction in the directory and one fsync of the
        tenants folder for the whole batch (a single create costs one of each per tenant)."""
        seen: set[str] = set()
        for name in names:
            if not is_valid_name(name):
                raise BadTenantName(name)
            if name in seen:  # as creating them one by one would answer the second
                raise TenantExists(name)
            seen.add(name)
        records = await self.directory.create_many(names)
        try:
            for name in names:
                self.layout.delete_tenant(name)  # files of an earlier tenant of this name
            self.layout.create_tenants(names)
        except OSError as exc:
            for name in names:
                await self.directory.remove(name)
            raise StorageFailed(f"cannot create {len(names)} tenants: "
                                f"{exc.strerror or exc}") from exc
        return [self.supervisor.adopt(record).info() for record in records]

    async def start_tenant(self, name: str) -> TenantInfo:
        tenant = self.supervisor.get(name)
        tenant.clear_failures()
        if not tenant.serving:
            await self.supervisor.wait_until_serving(tenant)
        return tenant.info()

    async def stop_tenant(self, name: str) -> TenantInfo:
        tenant = self.supervisor.get(name)
        await tenant.stop("operator")
        return tenant.info()

    async def checkpoint_tenant(self, name: str) -> CheckpointResult:
        return await self.supervisor.get(name).checkpoint()

    async def remove_tenant(self, name: str) -> None:
        """Stop the worker, refuse new starts, then delete the record and the files: when this
        returns nothing of the tenant is left, and a tenant created again starts empty."""
        tenant = self.supervisor.get(name)
        await tenant.remove()
        await self.directory.remove(name)
        self.supervisor.forget(tenant)
        self.layout.delete_tenant(name)
        log.info("tenant %s removed", name, extra={"tenant": name})

    async def export_tenant(self, name: str) -> ExportedFile:
        tenant = self.supervisor.get(name)
        return await transfer.export_tenant(self.export_tool, tenant.name,
                                            app=tenant.record.app or self.supervisor.config.app,
                                            code_path=tenant.record.code_path)

    async def import_tenant(self, name: str, source: Path) -> TenantInfo:
        if not is_valid_name(name):
            raise BadTenantName(name)
        record = await self.directory.create(name)  # TenantExists: nothing written
        self.layout.delete_tenant(name)
        tenant = self.supervisor.adopt(record)
        # Held from the create on: no start can slip in before the imported snapshot exists.
        async with tenant.lock:
            try:
                tenant.generation = await transfer.import_tenant(
                    self.export_tool, name, source, app=record.app or self.supervisor.config.app,
                    code_path=record.code_path)
            except BaseException:
                tenant.removed = True
                await self.directory.remove(name)
                self.supervisor.forget(tenant)
                self.layout.delete_tenant(name)
                raise
        return tenant.info()

    def metrics_text(self) -> str:
        return metrics.render(self.metrics)

    def log_file(self, name: str) -> Path:
        return self.layout.log_path(self.supervisor.get(name).name)
