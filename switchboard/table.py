"""The embedded tenant directory: `<data-dir>/tenants.sqlite`, one row a tenant.

Implements `switchboard.directory.Directory` (read that module for what a record means).
SQLite runs in WAL mode with `synchronous=FULL`: a method has committed and fsynced its change
when it returns, so a tenant's port, epoch and creation id survive a crash of the router.

Calls are synchronous underneath (each is one short statement on a local file); they are
`async` because the interface is, for the PostgreSQL directory that shares it.

Schema: after the first release the table grew an `id` (short, stable: it names the worker's
socket), `creation_id`, `epoch` and `owner`, and `port` became optional (a Unix-socket worker
has none; a TCP one gets its port at its first start). Opening a first-release file rebuilds
it in one transaction (existing tenants keep their port, get a fresh creation id and epoch 1).
Later a `code_version` column came (a tenant's pin, switchboard/versions.py): a table without
it gets it added, NULL (unpinned) for every tenant.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from switchboard.directory import EpochConflict, TenantRecord, new_creation_id
from switchboard.errors import StorageFailed, TenantExists, UnknownTenant

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    creation_id TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    port INTEGER UNIQUE,
    app TEXT,
    code_path TEXT,
    owner TEXT,
    moved_to TEXT,
    code_version TEXT
)
"""
_COLUMNS = ("id, name, creation_id, epoch, created_at, port, app, code_path, owner, moved_to, "
            "code_version")
# The first release's table: no id (rowid), port NOT NULL, no creation_id/epoch/owner.
_FIRST_RELEASE_COLUMNS = "rowid, name, created_at, port, app, code_path, moved_to"


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
        """Rebuild a first-release table in the current shape, in one transaction: existing
        tenants keep their rowid as id and their port, and get a fresh creation id, epoch 1."""
        present = {row[1] for row in self.db.execute("PRAGMA table_info(tenants)")}
        if "id" in present:
            if "code_version" not in present:  # added by pinning (issue 12): NULL, unpinned
                self.db.execute("ALTER TABLE tenants ADD COLUMN code_version TEXT")
            return
        rows = self.db.execute(f"SELECT {_FIRST_RELEASE_COLUMNS} FROM tenants").fetchall()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE tenants RENAME TO tenants_first_release")
            self.db.execute(SCHEMA)
            self.db.executemany(
                "INSERT INTO tenants (id, name, creation_id, epoch, created_at, port, app, "
                "code_path, moved_to) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                [(rowid, name, new_creation_id(), created_at, port, app, code_path, moved_to)
                 for rowid, name, created_at, port, app, code_path, moved_to in rows])
            self.db.execute("DROP TABLE tenants_first_release")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def _row(self, name: str) -> TenantRecord:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM tenants WHERE name = ?",
                              (name,)).fetchone()
        if row is None:
            raise UnknownTenant(name)
        return TenantRecord(*row)

    async def create(self, name: str, *, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        creation_id, created_at = new_creation_id(), time.time()
        try:
            with _writing(f"create tenant {name!r}"):
                cursor = self.db.execute(
                    "INSERT INTO tenants (name, creation_id, epoch, created_at, app, code_path) "
                    "VALUES (?, ?, 1, ?, ?, ?)", (name, creation_id, created_at, app, code_path))
        except sqlite3.IntegrityError:
            if self.db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise TenantExists(name) from None
            raise
        return TenantRecord(id=int(cursor.lastrowid or 0), name=name, creation_id=creation_id,
                            epoch=1, created_at=created_at, app=app, code_path=code_path)

    async def create_many(self, names: Sequence[str]) -> list[TenantRecord]:
        """All of `names` in one transaction (one fsync), or none: TenantExists names the
        first that exists (or repeats)."""
        created_at = time.time()
        records: list[TenantRecord] = []
        with _writing(f"create {len(names)} tenants"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for name in names:
                    creation_id = new_creation_id()
                    try:
                        cursor = self.db.execute(
                            "INSERT INTO tenants (name, creation_id, epoch, created_at) "
                            "VALUES (?, ?, 1, ?)", (name, creation_id, created_at))
                    except sqlite3.IntegrityError:
                        raise TenantExists(name) from None
                    records.append(TenantRecord(
                        id=int(cursor.lastrowid or 0), name=name, creation_id=creation_id,
                        epoch=1, created_at=created_at))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return records

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

    async def set_code_version(self, name: str, version: str | None) -> TenantRecord:
        with _writing(f"pin tenant {name!r}"):
            cursor = self.db.execute("UPDATE tenants SET code_version = ? WHERE name = ?",
                                     (version, name))
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

    async def receive(self, name: str, *, creation_id: str, epoch: int) -> TenantRecord:
        with _writing(f"receive tenant {name!r}"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT creation_id, epoch FROM tenants WHERE name = ?",
                                      (name,)).fetchone()
                if row is None:
                    self.db.execute(
                        "INSERT INTO tenants (name, creation_id, epoch, created_at) "
                        "VALUES (?, ?, ?, ?)", (name, creation_id, epoch, time.time()))
                elif row[0] != creation_id:
                    raise TenantExists(name)
                elif row[1] >= epoch:
                    raise EpochConflict(name, epoch - 1, row[1])
                else:
                    self.db.execute("UPDATE tenants SET epoch = ?, owner = NULL, moved_to = NULL "
                                    "WHERE name = ?", (epoch, name))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self._row(name)

    async def remove(self, name: str) -> None:
        with _writing(f"remove tenant {name!r}"):
            cursor = self.db.execute("DELETE FROM tenants WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise UnknownTenant(name)
