"""Export and import of tenants, for the admin API (the supervisor delegates here).

The work that needs the app's code (restoring the state, the app's export_data / import_data
hooks and upgrades) runs in a subprocess, `python -m tenant.export` (see tenant/export.py), so
the router never imports tenant code and a running tenant is neither stopped nor slowed.

- export: the subprocess reads the tenant's snapshot and journal read-only and writes the file
  into `<data-dir>/transfers/`; the caller streams it out and deletes it.
- import: the tenant is created in the table and its lifecycle lock held while the subprocess
  writes its generation 1 snapshot, so a request for it waits and then restores the import.
  On any failure the tenant is removed again: nothing half-imported stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchboard.api import ExportedFile, TenantInfo
from switchboard.errors import BadTenantName, TransferFailed
from switchboard.routing import is_valid_name

if TYPE_CHECKING:
    from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.transfer")

TRANSFER_TIMEOUT_S = 600.0
STALE_AFTER_S = 3600.0


def transfers_dir(supervisor: Supervisor) -> Path:
    """Where export files wait to be streamed. A file older than STALE_AFTER_S was left by a
    download that broke off (its cleanup did not run) and is removed here."""
    directory = supervisor.config.data_dir / "transfers"
    directory.mkdir(mode=0o700, exist_ok=True)
    cutoff = time.time() - STALE_AFTER_S
    for leftover in directory.iterdir():
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
    return directory


async def export_tenant(supervisor: Supervisor, name: str) -> ExportedFile:
    tenant = supervisor.table.get(name)
    app = tenant.app or supervisor.config.app
    out = transfers_dir(supervisor) / f"{name}-{time.time_ns()}.sbexport"
    try:
        reply = await _run_export_tool(
            "export", "--tenant", name, "--app", app, "-o", str(out),
            tenants_dir=supervisor.config.tenants_dir, code_path=tenant.code_path,
        )
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    log.info("exported tenant %s up to journal position %s (%d bytes)", name,
             reply.get("journal_pos"), reply.get("size", 0))
    return ExportedFile(path=out, size=out.stat().st_size,
                        filename=f"{name}-{reply.get('journal_pos', 0)}.sbexport", header=reply)


async def import_tenant(supervisor: Supervisor, name: str, data: bytes) -> TenantInfo:
    if not is_valid_name(name):
        raise BadTenantName(name)
    tenant = supervisor.table.create(name)  # TenantExists (409) before anything is written
    # Taken in the same step as the create: no start can slip in before the snapshot exists.
    async with supervisor._lock(tenant):
        staged = transfers_dir(supervisor) / f"import-{name}-{time.time_ns()}.sbexport"
        try:
            staged.write_bytes(data)
            reply = await _run_export_tool(
                "import", str(staged), "--tenant", name,
                "--app", tenant.app or supervisor.config.app,
                tenants_dir=supervisor.config.tenants_dir, code_path=tenant.code_path,
            )
        except BaseException:
            supervisor.table.remove(tenant)
            shutil.rmtree(supervisor.config.tenants_dir / name, ignore_errors=True)
            raise
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        tenant.generation = reply.get("generation")
    log.info("imported tenant %s from an export of %s", name, reply.get("from_tenant"))
    return supervisor.info(tenant)


async def _run_export_tool(*args: str, tenants_dir: Path, code_path: str | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tenant.export", *args, "--tenants-dir", str(tenants_dir)]
    if code_path:
        argv += ["--code-path", code_path]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, cwd=code_path or None, env=dict(os.environ),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TRANSFER_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TransferFailed(f"{args[0]} did not finish within {TRANSFER_TIMEOUT_S:g}s") from None
    except BaseException:  # cancelled: the subprocess must not outlive the request
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {process.returncode}"
        raise TransferFailed(f"{args[0]} failed: {reason}")
    try:
        reply: dict[str, Any] = json.loads(stdout)
    except ValueError as exc:
        raise TransferFailed(
            f"{args[0]} answered something that is not JSON: {stdout[:200]!r}"
        ) from exc
    return reply
