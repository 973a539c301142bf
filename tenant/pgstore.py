"""A tenant's journal and snapshots in PostgreSQL, fenced by its epoch (cluster mode).

Runs in the tenant worker, on its own connections opened after the fork (a libpq connection
never crosses a fork); plain blocking calls, made from the worker's threads
(tenant/pgjournal.py). The tables are described in switchboard/cluster/schema.py:

    journal (tenant_id, seq, epoch, payload)   payload: the record's msgpack tail (now, name,
                                               args), as tenant/journal_format.prepare_record
                                               encodes it
    snapshots (tenant_id, generation, epoch, journal_pos, size_bytes, complete)
    snapshot_chunks (tenant_id, generation, idx, data)   the snapshot file in CHUNK_BYTES pieces

Fencing (DESIGN.md "Between hosts"): every append and every snapshot write first reads the
tenant's row `FOR SHARE` in the same transaction and goes on only if its epoch is the
worker's, its owner is this host and this host's lease is live by PostgreSQL's clock; else
Fenced and nothing is written. A claim by another host (an UPDATE of that row) waits for such
a transaction to end, so whatever a fenced worker committed is seen by the next owner's
restore, and nothing it tries after the claim commits. A worker paused in the middle of such
a transaction loses its session after IDLE_IN_TRANSACTION_MS (and with it the lock).

Durability: with synchronous_commit on (journal_fsync "always") a commit is on PostgreSQL's
disk when it returns; "everysec"/"never" map to synchronous_commit off (PostgreSQL may lose
about the last second on its own crash). Appends are idempotent (ON CONFLICT DO NOTHING on
the seq) so a batch whose commit was in doubt when the connection broke can be sent again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import psycopg

from tenant.errors import ClusterWriteRefused, Fenced, RestoreError

CHUNK_BYTES = 1 << 20  # as switchboard/cluster/schema.py: never a whole snapshot in one value
KEEP_GENERATIONS = 2  # snapshot generations kept in PostgreSQL (the journal covers the older)
CONNECT_TIMEOUT_S = 5
# PostgreSQL ends a worker's session that sits this long inside a transaction (its own steps
# follow each other within milliseconds), releasing the row lock a claimer waits for.
IDLE_IN_TRANSACTION_MS = 2000


def decode_tail(payload: bytes) -> tuple[float, str, dict[str, Any]]:
    """A journal payload's (now, name, args)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(payload)
    now, name, args = (next(unpacker) for _ in range(3))
    return float(now), str(name), dict(args)


class PgTenantStore:
    """One tenant's rows, written as the holder of `epoch` on host `host_id`."""

    def __init__(self, url: str, tenant: str, *, epoch: int, host_id: str | None,
                 synchronous_commit: bool = True) -> None:
        self.url = url
        self.tenant = tenant
        self.epoch = epoch
        self.host_id = host_id
        self.synchronous_commit = synchronous_commit
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection, reconnecting if it broke. psycopg.OperationalError when
        PostgreSQL cannot be reached."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"switchboard tenant {self.tenant}",
                # A worker paused inside a transaction (SIGSTOP, a stalled VM) must not hold
                # its share lock on the tenant's row for ever: a claim waits for that lock.
                options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit = off")
            self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fence(self, conn: psycopg.Connection[tuple[Any, ...]]) -> int:
        """In a transaction: the tenant's id if this worker may still write it; else Fenced.
        Holds a share lock on the row until the transaction ends."""
        row = conn.execute(
            "SELECT t.id, t.epoch, t.owner, coalesce(h.lease_expires > now(), false) "
            "FROM tenants t LEFT JOIN hosts h ON h.id = t.owner "
            "WHERE t.name = %s FOR SHARE OF t", (self.tenant,)).fetchone()
        if row is None:
            raise Fenced(f"tenant {self.tenant} is no longer in the cluster directory")
        tenant_id, epoch, owner, live = int(row[0]), int(row[1]), row[2], bool(row[3])
        if epoch != self.epoch:
            raise Fenced(f"tenant {self.tenant} is at epoch {epoch} (owner {owner}), not this "
                         f"worker's {self.epoch}: another host owns it now")
        if self.host_id is not None and owner != self.host_id:
            raise Fenced(f"tenant {self.tenant} is owned by {owner}, not this host "
                         f"({self.host_id})")
        if self.host_id is not None and not live:
            raise Fenced(f"host {self.host_id} holds no live lease: it may not acknowledge "
                         f"writes for {self.tenant}")
        return tenant_id

    def check(self) -> int:
        """The tenant's id if this worker may write it (Fenced if not)."""
        conn = self.connection()
        with conn.transaction():
            return self._fence(conn)

    # ---- journal ----

    def append(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Commit `records` ((seq, payload), in seq order) in one transaction, fenced.
        psycopg.Error when PostgreSQL fails (the caller retries the same records)."""
        conn = self.connection()
        with conn.transaction():
            tenant_id = self._fence(conn)
            conn.execute(  # one statement, however many records the group commit holds
                "INSERT INTO journal (tenant_id, seq, epoch, payload) "
                "SELECT %s, r.seq, %s, r.payload FROM unnest(%s::bigint[], %s::bytea[]) "
                "AS r(seq, payload) ON CONFLICT (tenant_id, seq) DO NOTHING",
                (tenant_id, self.epoch, [seq for seq, _p in records],
                 [payload for _s, payload in records]))

    def journal_after(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """The journal's records after `seq`, in order (streamed by a server-side cursor)."""
        conn = self.connection()
        with conn.transaction(), conn.cursor(name="journal_tail") as cur:
            cur.itersize = 1000
            cur.execute("SELECT j.seq, j.payload FROM journal j JOIN tenants t "
                        "ON t.id = j.tenant_id WHERE t.name = %s AND j.seq > %s ORDER BY j.seq",
                        (self.tenant, seq))
            for row in cur:
                yield int(row[0]), bytes(row[1])

    # ---- snapshots ----

    def save_snapshot(self, path: Path, generation: int, journal_pos: int) -> int:
        """Store the snapshot file at `path` as `generation` (covering the journal through
        `journal_pos`), in CHUNK_BYTES pieces, fenced, in one transaction; then drop the
        generations past KEEP_GENERATIONS and the journal records the oldest kept one covers.
        Returns the bytes stored."""
        conn = self.connection()
        size = 0
        with conn.transaction():
            tenant_id = self._fence(conn)
            conn.execute("DELETE FROM snapshots WHERE tenant_id = %s AND generation = %s",
                         (tenant_id, generation))  # a partial one from an aborted try
            conn.execute("INSERT INTO snapshots (tenant_id, generation, epoch, journal_pos) "
                         "VALUES (%s, %s, %s, %s)",
                         (tenant_id, generation, self.epoch, journal_pos))
            with open(path, "rb") as f:
                idx = 0
                while chunk := f.read(CHUNK_BYTES):
                    conn.execute("INSERT INTO snapshot_chunks (tenant_id, generation, idx, data) "
                                 "VALUES (%s, %s, %s, %s)", (tenant_id, generation, idx, chunk))
                    size += len(chunk)
                    idx += 1
            conn.execute("UPDATE snapshots SET complete = true, size_bytes = %s "
                         "WHERE tenant_id = %s AND generation = %s",
                         (size, tenant_id, generation))
            kept = conn.execute(
                "SELECT generation, journal_pos FROM snapshots WHERE tenant_id = %s AND complete "
                "ORDER BY generation DESC LIMIT %s", (tenant_id, KEEP_GENERATIONS)).fetchall()
            oldest_generation, oldest_pos = int(kept[-1][0]), int(kept[-1][1])
            conn.execute("DELETE FROM snapshots WHERE tenant_id = %s AND generation < %s",
                         (tenant_id, oldest_generation))
            conn.execute("DELETE FROM journal WHERE tenant_id = %s AND seq <= %s",
                         (tenant_id, oldest_pos))
        return size

    def download_newest_snapshot(self, directory: Path, name_of: Callable[[int], str]
                                 ) -> tuple[int, int, Path] | None:
        """Write the newest complete snapshot into `directory` as `name_of(generation)` (a
        temp name, then renamed), streaming its chunks. Returns (generation, journal_pos,
        path), or None when the tenant has no snapshot in PostgreSQL."""
        conn = self.connection()
        with conn.transaction():
            row = conn.execute(
                "SELECT s.tenant_id, s.generation, s.journal_pos, s.size_bytes FROM snapshots s "
                "JOIN tenants t ON t.id = s.tenant_id WHERE t.name = %s AND s.complete "
                "ORDER BY s.generation DESC LIMIT 1", (self.tenant,)).fetchone()
            if row is None:
                return None
            tenant_id, generation, journal_pos, size = (int(v) for v in row)
            path = directory / name_of(generation)
            temp = path.with_name(path.name + ".download")
            written = 0
            with open(temp, "wb") as f, conn.cursor(name="snapshot_chunks") as cur:
                cur.itersize = 4  # a few chunks in memory at a time
                cur.execute("SELECT data FROM snapshot_chunks WHERE tenant_id = %s AND "
                            "generation = %s ORDER BY idx", (tenant_id, generation))
                for (data,) in cur:
                    f.write(data)
                    written += len(data)
            if written != size:
                temp.unlink(missing_ok=True)
                raise RestoreError(f"snapshot generation {generation} of {self.tenant} in "
                                   f"PostgreSQL has {written} bytes, not {size}")
            os.replace(temp, path)
        return generation, journal_pos, path


def refuse_unreachable(exc: BaseException) -> ClusterWriteRefused:
    """What a write gets while PostgreSQL cannot be reached."""
    reason = str(exc).strip() or type(exc).__name__
    return ClusterWriteRefused(f"PostgreSQL is unreachable: {reason}")
