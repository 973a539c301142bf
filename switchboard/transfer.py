"""Export and import of tenants, for the admin API (switchboard/service.py calls here).

The work that needs the app's code (restoring the state, the app's export_data / import_data
hooks and upgrades) runs in a subprocess, `python -m tenant.export` (see tenant/export.py), so
the router never imports tenant code and a running tenant is neither stopped nor slowed.

- export: the subprocess reads the tenant's snapshot and journal read-only and writes the file
  into `<data-dir>/transfers/`; the caller streams it out and deletes it.
- import: the admin API has streamed the upload to a file in `<data-dir>/transfers/`
  (switchboard/admin.py); the caller creates the tenant and holds its lifecycle lock while
  the subprocess reads that file and writes the generation 1 snapshot, so a request for it
  waits and then restores the import. On any failure the caller removes the tenant again:
  nothing half-imported stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshots.layout import DataLayout
from switchboard.api import ExportedFile
from switchboard.errors import TransferFailed

log = logging.getLogger("switchboard.transfer")

TRANSFER_TIMEOUT_S = 600.0
STALE_AFTER_S = 3600.0


@dataclass(frozen=True)
class ExportTool:
    """How this deployment runs `python -m tenant.export`: its data dir and snapshot key, so
    the tool reads and writes exactly what this host's workers would."""

    layout: DataLayout
    snapshot_key_file: Path
    allow_unsigned: bool = False

    def argv(self, *args: str, code_path: str | None) -> list[str]:
        argv = [sys.executable, "-m", "tenant.export", *args,
                "--data-dir", str(self.layout.data_dir),
                "--snapshot-key-file", str(self.snapshot_key_file)]
        if self.allow_unsigned:
            argv.append("--allow-unsigned")
        if code_path:
            argv += ["--code-path", code_path]
        return argv


async def export_tenant(tool: ExportTool, name: str, *, app: str,
                        code_path: str | None) -> ExportedFile:
    out = _transfers_dir(tool.layout) / f"{name}-{time.time_ns()}.sbexport"
    try:
        reply = await _run_export_tool(
            tool.argv("export", "--tenant", name, "--app", app, "-o", str(out),
                      code_path=code_path), code_path=code_path)
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    log.info("exported tenant %s up to journal position %s (%d bytes)", name,
             reply.get("journal_pos"), reply.get("size", 0), extra={"tenant": name})
    return ExportedFile(path=out, size=out.stat().st_size,
                        filename=f"{name}-{reply.get('journal_pos', 0)}.sbexport", header=reply)


async def import_tenant(tool: ExportTool, name: str, source: Path, *, app: str,
                        code_path: str | None) -> int | None:
    """Write tenant `name`'s generation 1 snapshot from the export file at `source`; returns
    the generation. The subprocess reads the file: the router never holds the import in
    memory. The caller has created the tenant and holds its lock, removes it again if this
    raises, and deletes `source` (the admin API staged the upload there)."""
    reply = await _run_export_tool(
        tool.argv("import", str(source), "--tenant", name, "--app", app, code_path=code_path),
        code_path=code_path)
    log.info("imported tenant %s from an export of %s", name, reply.get("from_tenant"),
             extra={"tenant": name})
    generation = reply.get("generation")
    return int(generation) if generation is not None else None


def _transfers_dir(layout: DataLayout) -> Path:
    """Where export files wait to be streamed. A file older than STALE_AFTER_S was left by a
    download that broke off (its cleanup did not run) and is removed here."""
    directory = layout.ensure_transfers_dir()
    cutoff = time.time() - STALE_AFTER_S
    for leftover in directory.iterdir():
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
    return directory


async def _run_export_tool(argv: list[str], *, code_path: str | None) -> dict[str, Any]:
    action = argv[3]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, cwd=code_path or None, env=dict(os.environ),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TRANSFER_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TransferFailed(f"{action} did not finish within {TRANSFER_TIMEOUT_S:g}s") from None
    except BaseException:  # cancelled: the subprocess must not outlive the request
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {process.returncode}"
        raise TransferFailed(f"{action} failed: {reason}")
    try:
        reply: dict[str, Any] = json.loads(stdout)
    except ValueError as exc:
        raise TransferFailed(
            f"{action} answered something that is not JSON: {stdout[:200]!r}"
        ) from exc
    return reply
