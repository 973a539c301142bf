"""The tenant table: every tenant mapped to this host, its stable port and its live figures.

Persisted in `<data-dir>/tenants.sqlite` (name, port, created_at, pinned code, moved_to); the
live figures (state, pid, in-flight, bytes) are memory only. A mapped tenant that is not
running costs one `Tenant` object with slots (a few hundred bytes), so tens of thousands fit.

Durability: `create`, `set_port`, `remove` commit to SQLite (fsynced by SQLite) before they
return, so a tenant's port survives a crash of the router.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.errors import SwitchboardError, TenantExists, UnknownTenant
from switchboard.states import TenantState

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    port INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    app TEXT,
    code_path TEXT,
    moved_to TEXT
)
"""


@dataclass(slots=True, eq=False)
class Tenant:
    name: str
    port: int
    created_at: float
    app: str | None = None  # pinned app (MODULE:ATTR), else the router's default
    code_path: str | None = None  # pinned code directory, put first on sys.path
    moved_to: str | None = None
    state: TenantState = TenantState.STOPPED
    worker: Any = None  # switchboard.spawner.WorkerHandle while a process exists
    restarts: int = 0
    boot_failures: int = 0
    retry_at: float | None = None  # monotonic time of the next start attempt while backing off
    last_error: str | None = None
    last_request_at: float | None = None  # Unix seconds
    last_active: float = 0.0  # monotonic, for idle and LRU decisions
    started_at: float | None = None
    last_checkpoint_at: float | None = None
    generation: int | None = None
    in_flight: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    waiting: int = 0
    lifecycle: Any = None  # asyncio.Lock while an operation on the process runs
    warnings: list[str] = field(default_factory=list)


class TenantTable:
    def __init__(self, data_dir: Path, port_range: tuple[int, int]) -> None:
        self.data_dir = data_dir
        self.port_range = port_range
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(data_dir / "tenants.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)
        self.tenants: dict[str, Tenant] = {}
        for name, port, created_at, app, code_path, moved_to in self.db.execute(
            "SELECT name, port, created_at, app, code_path, moved_to FROM tenants"
        ):
            self.tenants[name] = Tenant(name, port, created_at, app, code_path, moved_to)
        self._next_port = port_range[0]
        self._used_ports = {t.port for t in self.tenants.values()}  # kept, so creates stay O(1)

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return len(self.tenants)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self.tenants.values()))

    def __contains__(self, name: object) -> bool:
        return name in self.tenants

    def get(self, name: str) -> Tenant:
        try:
            return self.tenants[name]
        except KeyError:
            raise UnknownTenant(name) from None

    def find(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def create(self, name: str, *, app: str | None = None, code_path: str | None = None) -> Tenant:
        if name in self.tenants:
            raise TenantExists(name)
        port = self.allocate_port()
        tenant = Tenant(name, port, time.time(), app, code_path)
        self.db.execute(
            "INSERT INTO tenants (name, port, created_at, app, code_path) VALUES (?, ?, ?, ?, ?)",
            (name, port, tenant.created_at, app, code_path),
        )
        self.tenants[name] = tenant
        self._used_ports.add(port)
        (self.data_dir / "tenants" / name).mkdir(parents=True, exist_ok=True)
        return tenant

    def set_port(self, tenant: Tenant, port: int) -> None:
        self.db.execute("UPDATE tenants SET port = ? WHERE name = ?", (port, tenant.name))
        self._used_ports.discard(tenant.port)
        self._used_ports.add(port)
        tenant.port = port

    def set_moved(self, tenant: Tenant, moved_to: str | None) -> None:
        self.db.execute("UPDATE tenants SET moved_to = ? WHERE name = ?", (moved_to, tenant.name))
        tenant.moved_to = moved_to

    def remove(self, tenant: Tenant) -> None:
        self.db.execute("DELETE FROM tenants WHERE name = ?", (tenant.name,))
        self.tenants.pop(tenant.name, None)
        self._used_ports.discard(tenant.port)

    def allocate_port(self, *, avoid: int | None = None) -> int:
        """The next port in range that no tenant holds and that can be bound right now."""
        low, high = self.port_range
        used = self._used_ports
        span = high - low + 1
        for step in range(span):
            port = low + (self._next_port - low + step) % span
            if port in used or port == avoid or not _port_free(port):
                continue
            self._next_port = port + 1
            return port
        raise SwitchboardError(f"no free port left in {low}-{high} for a new tenant")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
