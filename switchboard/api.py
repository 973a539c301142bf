"""What the admin API and the CLI see of the supervisor: `TenantInfo` rows and the
`TenantService` protocol. The admin API is written against this protocol only, so it can be
driven in-process by tests with any object that implements it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TenantInfo:
    """One tenant as operators see it. Times are Unix seconds; `pid` is None when not running."""

    name: str
    state: str  # stopped starting running checkpointing stopping failed moved
    pid: int | None
    port: int | None  # a TCP worker's loopback port; None for a Unix-socket worker
    restarts: int
    last_request_at: float | None
    in_flight: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    created_at: float | None = None
    started_at: float | None = None
    last_checkpoint_at: float | None = None
    generation: int | None = None  # newest snapshot generation the router knows of
    last_error: str | None = None  # why it failed, or the last checkpoint problem
    retry_at: float | None = None  # when a tenant backing off will be tried again
    moved_to: str | None = None
    host: str | None = None  # the owner's host id in cluster mode, else None
    epoch: int = 1  # the tenant's fencing token (switchboard/directory.py)
    socket: str | None = None  # the worker's Unix socket path, None for a TCP worker
    last_exit: str | None = None  # how the last worker ended ("killed by signal 9 after 3.1s")
    rss_bytes: int | None = None  # the worker's resident memory at its last health ping
    uss_bytes: int | None = None  # its private (unique) memory at that ping
    writes_unavailable: str | None = None  # why writes get 503 (disk full...), else None
    busy: list[str] = field(default_factory=list)  # the app's declared work in progress
    waiting: int = 0  # requests waiting for its worker to start
    last_error_at: float | None = None  # when last_error happened
    # As of the last health ping (contract/worker.py "ping"); None before the first one.
    journal_pos: int | None = None  # seq of the last command applied
    journal_since_snapshot: int | None = None  # journal records the newest snapshot lacks
    dirty: bool | None = None  # changes no snapshot holds yet
    unsaved: bool | None = None  # dirty, and the last checkpoint failed
    start_ema_s: float | None = None  # moving average of its measured start times
    code_version: str | None = None  # the code version it runs (None: the app as installed)
    attached: list[str] = field(default_factory=list)  # debug consoles open: "user (uid N)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointResult:
    name: str
    generation: int | None  # None when nothing had changed and no snapshot was written
    changed: bool
    journal_pos: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportedFile:
    """An export file (snapshots/exportfile.py) written for the caller, who deletes it."""

    path: Path
    size: int
    filename: str  # what to call it on the operator's side: <tenant>-<journal_pos>.sbexport
    header: dict[str, Any]  # the file's header (tenant, schema_version, journal_pos, ...)


class TenantService(Protocol):
    """Operations the admin API exposes. Every method raises switchboard.errors types:
    BadTenantName, UnknownTenant, TenantExists, TenantUnavailable, TenantBusy."""

    def list_tenants(self) -> list[TenantInfo]: ...

    def get_tenant(self, name: str) -> TenantInfo: ...

    async def create_tenant(self, name: str) -> TenantInfo: ...

    async def create_tenants(self, names: list[str]) -> list[TenantInfo]:
        """Create all of `names` or none of them (one transaction)."""
        ...

    async def start_tenant(self, name: str) -> TenantInfo: ...

    async def checkpoint_tenant(self, name: str) -> CheckpointResult: ...

    async def stop_tenant(self, name: str) -> TenantInfo: ...

    async def remove_tenant(self, name: str) -> None: ...

    async def export_tenant(self, name: str) -> ExportedFile:
        """Write the tenant's durable data to an export file; works running or stopped.
        Raises UnknownTenant, TransferFailed."""
        ...

    async def import_tenant(self, name: str, source: Path) -> TenantInfo:
        """Create tenant `name` from the export file at `source` (the admin API staged the
        upload there and deletes it once this returns); its first start restores the data.
        The file is read by the import subprocess, never into the router's memory.
        Raises BadTenantName, TenantExists, TransferFailed (nothing is created then)."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition of the router's counters and gauges."""
        ...

    def log_file(self, name: str) -> Path:
        """Where the tenant's worker writes its output (it may not exist yet: never started).
        Raises UnknownTenant."""
        ...
