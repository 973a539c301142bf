"""The embedded tenant directory: `<data-dir>/tenants.sqlite`, one row a tenant.

Implements `switchboard.directory.Directory` (read that module for what a record means).
SQLite runs in WAL mode with `synchronous=FULL`: a method has committed and fsynced its change
when it returns, so a tenant's port, epoch and creation id survive a crash of the router.

Calls are synchronous underneath (each is one short statement on a local file); they are
`async` because the interface is, for the PostgreSQL directory that shares it.

Schema: the table grew `creation_id`, `epoch` and `owner` after the first release; opening an
older file adds them (existing tenants get a fresh creation id and epoch 1).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from switchboard.directory import EpochConflict, TenantRecord, new_creation_id
from switchboard.errors import StorageFailed, TenantExists, UnknownTenant

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    port INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    app TEXT,
    code_path TEXT,
    moved_to TEXT,
    creation_id TEXT,
    epoch INTEGER NOT NULL DEFAULT 1,
    owner TEXT
)
"""
_ADDED_COLUMNS = {"creation_id": "TEXT", "epoch": "INTEGER NOT NULL DEFAULT 1", "owner": "TEXT"}
_COLUMNS = "name, creation_id, epoch, created_at, port, app, code_path, owner, moved_to"


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    """SQLite's "database or disk is full" and friends, as the error an operator can act on."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StorageFailed(f"cannot {what}: the tenant directory cannot be written ({exc})") \
            from exc


class SqliteDirectory:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)
        self._upgrade_schema()

    def _upgrade_schema(self) -> None:
        present = {row[1] for row in self.db.execute("PRAGMA table_info(tenants)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self.db.execute(f"ALTER TABLE tenants ADD COLUMN {column} {kind}")
        for (name,) in self.db.execute(
                "SELECT name FROM tenants WHERE creation_id IS NULL").fetchall():
            self.db.execute("UPDATE tenants SET creation_id = ? WHERE name = ?",
                            (new_creation_id(), name))

    def close(self) -> None:
        self.db.close()

    def _row(self, name: str) -> TenantRecord:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM tenants WHERE name = ?",
                              (name,)).fetchone()
        if row is None:
            raise UnknownTenant(name)
        return TenantRecord(*row)

    async def create(self, name: str, *, port: int, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        record = TenantRecord(name=name, creation_id=new_creation_id(), epoch=1,
                              created_at=time.time(), port=port, app=app, code_path=code_path)
        try:
            with _writing(f"create tenant {name!r}"):
                self.db.execute(
                    f"INSERT INTO tenants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.name, record.creation_id, record.epoch, record.created_at,
                     record.port, record.app, record.code_path, record.owner, record.moved_to))
        except sqlite3.IntegrityError:
            if self.db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise TenantExists(name) from None
            raise
        return record

    async def get(self, name: str) -> TenantRecord:
        return self._row(name)

    async def list(self) -> list[TenantRecord]:
        return [TenantRecord(*row) for row in
                self.db.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY name")]

    async def update(self, name: str, *, port: int | None = None, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        changes = {k: v for k, v in (("port", port), ("app", app), ("code_path", code_path))
                   if v is not None}
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            with _writing(f"update tenant {name!r}"):
                cursor = self.db.execute(f"UPDATE tenants SET {assignments} WHERE name = ?",
                                         (*changes.values(), name))
            if cursor.rowcount == 0:
                raise UnknownTenant(name)
        return self._row(name)

    async def set_placement(self, name: str, *, owner: str | None, moved_to: str | None,
                            expect_epoch: int) -> TenantRecord:
        with _writing(f"change the owner of tenant {name!r}"):
            cursor = self.db.execute(
                "UPDATE tenants SET owner = ?, moved_to = ?, epoch = epoch + 1 "
                "WHERE name = ? AND epoch = ?", (owner, moved_to, name, expect_epoch))
        if cursor.rowcount == 0:
            current = self._row(name)  # UnknownTenant when it is gone
            raise EpochConflict(name, expect_epoch, current.epoch)
        return self._row(name)

    async def remove(self, name: str) -> None:
        with _writing(f"remove tenant {name!r}"):
            cursor = self.db.execute("DELETE FROM tenants WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise UnknownTenant(name)
