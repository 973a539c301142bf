"""Per-tenant debugging operations behind the admin API (switchboard/debugapi.py): attach a
console, pin a tenant's code version, upgrade it after a shadow restore.

- attach: start the tenant if needed, hold it resident until the console connects (and while
  it stays: switchboard/attach.py), ask the worker to listen on `<data-dir>/console/<id>.sock`
  (`console_open`, contract/worker.py) and answer that path.
- pin / unpin: record the version in the tenant table (switchboard/versions.py); a running
  worker is stopped (it checkpoints) and started again on the new code at once.
- upgrade: a shadow restore on the new version first (switchboard/shadow.py); only if it
  answered does the switch happen: the new version is recorded (a pin), the old worker stops
  with its checkpoint, a new one starts on the new version. Should that start fail after all,
  the old version is recorded again and started: on any failure the tenant stays on (or goes
  back to) its version, serving.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from contract import worker as wire
from snapshots.layout import DataLayout
from switchboard import attach, listen, shadow, versions
from switchboard.api import TenantInfo
from switchboard.config import Config
from switchboard.directory import Directory
from switchboard.errors import ConfigError, TenantUnavailable, UpgradeFailed
from switchboard.process import TenantProcess
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.debugging")


class DebugOperations:
    def __init__(self, supervisor: Supervisor, directory: Directory, layout: DataLayout) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.layout = layout

    @property
    def config(self) -> Config:
        return self.supervisor.config  # as reloaded (SIGHUP), not as it was at start

    def code_versions(self) -> dict[str, Any]:
        return {"default": self.config.default_code_version or None,
                "versions": dict(self.config.code_versions)}

    async def attach(self, name: str, user: str, uid: int | None,
                     read_only: bool) -> dict[str, Any]:
        tenant = self.supervisor.get(name)
        path = self.layout.console_socket_path(tenant.record.id)
        if len(os.fsencode(path)) > listen.MAX_UNIX_PATH_BYTES:
            raise ConfigError(f"the data dir's path is too long for a console socket ({path})")
        if not tenant.serving:
            await self.supervisor.wait_until_serving(tenant)
        self.layout.ensure_console_dir()
        worker = tenant.worker
        if worker is None or not tenant.serving:
            raise TenantUnavailable(f"{name} stopped before the console could open", 1)
        hold = tenant.debug if tenant.debug is not None else attach.DebugHold()
        hold.expect_client()
        tenant.debug = hold
        try:
            reply = await worker.request(wire.CONSOLE_OPEN, self.config.ping_timeout_s,
                                         path=str(path),
                                         breakpoint_timeout_s=self.config.breakpoint_timeout_s)
        except TimeoutError:
            raise TenantUnavailable(f"{name}'s worker did not open its console in time",
                                    1) from None
        log.info("tenant %s: console asked for by %s (uid %s)%s", name, user or "?",
                 uid if uid is not None else "?", " read-only" if read_only else "",
                 extra={"tenant": name})
        return {"tenant": name, "socket": str(reply.get("socket")), "pid": reply.get("pid"),
                "code_version": reply.get("code_version"),
                "breakpoint_timeout_s": self.config.breakpoint_timeout_s}

    async def pin(self, name: str, version: str | None) -> TenantInfo:
        """Pin `name` to `version` (None: unpin), restarting a running worker on it."""
        tenant = self.supervisor.get(name)
        if version is not None:
            versions.check_version(self.config.code_versions, version)
        await self._record_version(tenant, version)
        log.info("tenant %s %s", name, f"pinned to {version}" if version else "unpinned",
                 extra={"tenant": name})
        if tenant.serving:
            await tenant.stop(f"pinned to {version}" if version else "unpinned")
            await self.supervisor.wait_until_serving(tenant)
        return tenant.info()

    async def upgrade(self, name: str, to: str) -> dict[str, Any]:
        tenant = self.supervisor.get(name)
        code_path = self.config.code_versions.get(versions.check_version(
            self.config.code_versions, to))
        assert code_path is not None
        before = tenant.code_version
        pinned_before = tenant.record.code_version
        await shadow.shadow_restore(tenant, self.layout, self.config, to, code_path)
        was_running = tenant.serving
        await self._record_version(tenant, to)
        if was_running:
            await tenant.stop(f"upgrading to {to}")
            try:
                await self.supervisor.wait_until_serving(tenant)
            except TenantUnavailable as exc:
                await self._record_version(tenant, pinned_before)
                tenant.clear_failures()
                log.error("tenant %s did not start on %s after its shadow restore (%s); back "
                          "on %s", name, to, exc, before, extra={"tenant": name})
                try:
                    await self.supervisor.wait_until_serving(tenant)
                except TenantUnavailable as again:
                    raise UpgradeFailed(f"{name} did not start on {to} ({exc}), nor again on "
                                        f"{before} ({again})", tenant.last_exit or "") from exc
                raise UpgradeFailed(f"{name} did not start on {to} ({exc}); it is back on "
                                    f"{before}", tenant.last_exit or "") from exc
        log.info("tenant %s upgraded from %s to %s", name, before, to, extra={"tenant": name})
        return {"tenant": name, "from": before, "to": to, "restarted": was_running,
                "info": tenant.info().to_json()}

    async def _record_version(self, tenant: TenantProcess, version: str | None) -> None:
        async with tenant.lock:  # no start reads the record half way
            tenant.record = await self.directory.set_code_version(tenant.name, version)


