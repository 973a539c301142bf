"""The PostgreSQL schema of cluster mode, versioned: `switchboard db upgrade` (and every
`serve --cluster` at start) brings a database up to SCHEMA_VERSION.

Tables (version 1):

    switchboard_schema (version)             one row: the schema version applied
    hosts (id, router_url, admin_url,        one row per host; its lease is live while
           lease_expires, resident,          lease_expires > now() (PostgreSQL's clock, never a
           max_resident, registered_at)      host's), renewed every lease_ttl_s / 3
    tenants (id, name, creation_id, epoch,   the directory (switchboard/directory.py
             created_at, port, app,          TenantRecord); owner is the owning host's id,
             code_path, owner, moved_to,     epoch the fencing token
             code_version)
    journal (tenant_id, seq, epoch,          each tenant's command journal: payload is the
             payload)                        record's msgpack tail (now, name, args; see
                                             tenant/journal_format.py prepare_record), epoch
                                             the writer's
    snapshots (tenant_id, generation,        a tenant's snapshot generations; a row with
               epoch, journal_pos,           complete = true has all its chunks
               size_bytes, complete)
    snapshot_chunks (tenant_id, generation,  the snapshot file (snapshots/format.py) in
                     idx, data)              CHUNK_BYTES pieces, idx from 0

Each migration runs in one transaction under an advisory lock, so hosts starting together
apply it once. A database at a newer version than this code knows is refused (SchemaTooNew).
"""

from __future__ import annotations

from typing import Any

import psycopg

from switchboard.errors import SwitchboardError

CHUNK_BYTES = 1 << 20  # a snapshot travels in pieces this big, never as one value
_LOCK_KEY = 0x5357_4244  # "SWBD": the advisory lock that serializes upgrades

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE hosts (
    id text PRIMARY KEY,
    router_url text NOT NULL,
    admin_url text NOT NULL,
    lease_expires timestamptz NOT NULL,
    resident integer NOT NULL DEFAULT 0,
    max_resident integer NOT NULL DEFAULT 0,
    registered_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tenants (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    creation_id text NOT NULL,
    epoch bigint NOT NULL DEFAULT 1,
    created_at double precision NOT NULL,
    port integer,
    app text,
    code_path text,
    owner text,
    moved_to text,
    code_version text
);
CREATE TABLE journal (
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    epoch bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE TABLE snapshots (
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    generation bigint NOT NULL,
    epoch bigint NOT NULL,
    journal_pos bigint NOT NULL,
    size_bytes bigint NOT NULL DEFAULT 0,
    complete boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, generation)
);
CREATE TABLE snapshot_chunks (
    tenant_id bigint NOT NULL,
    generation bigint NOT NULL,
    idx integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (tenant_id, generation, idx),
    FOREIGN KEY (tenant_id, generation) REFERENCES snapshots ON DELETE CASCADE
);
"""),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(SwitchboardError):
    """The database was upgraded by a newer Switchboard than this one."""


def current_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The schema version of the database (0: none yet)."""
    row = conn.execute("SELECT to_regclass('switchboard_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM switchboard_schema").fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0


def upgrade(url: str, *, connect_timeout_s: float = 10.0) -> tuple[int, int]:
    """Bring the database at `url` to SCHEMA_VERSION; returns (version before, after).
    psycopg.OperationalError when it cannot be reached; SchemaTooNew when it is ahead."""
    with psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute("CREATE TABLE IF NOT EXISTS switchboard_schema (version integer NOT NULL)")
            before = current_version(conn)
            if before > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the database is at schema version {before}, newer than this Switchboard's "
                    f"{SCHEMA_VERSION}: upgrade Switchboard on this host")
            for version, statements in MIGRATIONS:
                if version > before:
                    conn.execute(statements.encode())
                    conn.execute("INSERT INTO switchboard_schema (version) VALUES (%s)",
                                 (version,))
        return before, SCHEMA_VERSION
