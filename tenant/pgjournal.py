"""Cluster mode in the tenant worker: restore from PostgreSQL, commit every journal record
there before it is acknowledged, and keep the newest snapshot there (tenant/pgstore.py has
the SQL and the fencing rule; DESIGN.md "Between hosts" the why).

The worker keeps its ordinary local files (snapshots and a journal that is never fsynced)
as a cache it restores and checkpoints with; PostgreSQL is the durable copy:

- Boot (`ClusterSide.materialize`, before the local restore): the tenant's local files are
  dropped and the newest snapshot in PostgreSQL is streamed into the local snapshot folder;
  after the local restore, `replay_tail` applies PostgreSQL's journal records past it.
- Appends (`ClusterJournal`): the record goes to the local file, then to a committer thread
  that takes everything waiting into one transaction (group commit: one commit per flush);
  the append's future resolves once that transaction committed. Fenced fails it and every
  later one, and calls `on_fenced` (the worker answers 503 and exits with FENCED_EXIT). While
  PostgreSQL cannot be reached the records are retried in order; a request whose record waited
  longer than REFUSE_AFTER_S gets ClusterWriteRefused (503). Such a record may still commit
  later: it was never acknowledged, and the worker's state holds it either way.
- Checkpoints: after each landed local checkpoint (`prune`, which the checkpointer calls), an
  uploader thread stores that snapshot in PostgreSQL on its own connection, fenced; a
  segmented generation goes as one self-contained file with its segments inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from contract.worker import WorkerSpec
from snapshots.errors import SnapshotError
from snapshots.segment_files import self_contained
from snapshots.store import LocalStore
from tenant.app import TenantApp
from tenant.errors import ClusterWriteRefused, Fenced, JournalError, RestoreError, TenantError
from tenant.journal import Journal, JournalSigning, PreparedRecord
from tenant.pgstore import PgTenantStore, decode_tail, refuse_unreachable
from tenant.recovery import RecoveredState

log = logging.getLogger("switchboard.tenant")

REFUSE_AFTER_S = 2.0  # a write waits this long for PostgreSQL before it gets a 503
RETRY_PAUSE_S = 0.25  # between tries of a commit while PostgreSQL is unreachable
CLOSE_TIMEOUT_S = 30.0  # the last commits and the last snapshot upload at stop
MAX_BATCH = 2000

_Entry = tuple[int | None, bytes, asyncio.Future[int], float]  # seq (None: a barrier)


class ClusterSide:
    """The worker's PostgreSQL side for one tenant."""

    def __init__(self, spec: WorkerSpec, store: LocalStore) -> None:
        assert spec.cluster_url is not None
        self.spec = spec
        self.store = store
        self.tenant = spec.tenant

        def connect() -> PgTenantStore:
            return PgTenantStore(spec.cluster_url or "", spec.tenant, epoch=spec.epoch,
                                 host_id=spec.host_id,
                                 synchronous_commit=spec.journal_fsync == "always")

        self.pg = connect()  # boot, then the committer thread
        self.uploads_pg = connect()  # the uploader thread's own connection

    def check(self) -> None:
        """RestoreError unless this worker may write the tenant now (tenant/pgstore.py)."""
        try:
            self.pg.check()
        except Fenced as exc:
            raise RestoreError(str(exc)) from exc
        except psycopg.Error as exc:
            raise RestoreError(f"cannot restore {self.tenant}: {refuse_unreachable(exc)}") \
                from exc

    def materialize(self, *, fenced: bool = True) -> None:
        """Replace the tenant's local files by the newest snapshot in PostgreSQL. Fenced (a
        RestoreError) when this worker's epoch is not the tenant's any more; with fenced
        False (a migration's target warming up before the switch) that is checked at resume."""
        if fenced:
            self.check()
        layout = self.store.layout
        for folder in (layout.snapshot_dir(self.tenant), layout.journal_dir(self.tenant)):
            folder.mkdir(parents=True, exist_ok=True)
            for path in folder.iterdir():
                if path.is_file():
                    path.unlink()
        try:
            self.pg.download_newest_snapshot(
                layout.snapshot_dir(self.tenant),
                lambda generation: self.store.path_for(self.tenant, generation).name)
        except psycopg.Error as exc:
            raise RestoreError(f"cannot restore {self.tenant}: {refuse_unreachable(exc)}") \
                from exc

    def replay_tail(self, app: TenantApp, recovered: RecoveredState) -> None:
        """Apply PostgreSQL's journal records after the restored snapshot's position."""
        try:
            for seq, payload in self.pg.journal_after(recovered.journal_pos):
                if seq != recovered.journal_pos + 1:
                    raise RestoreError(f"the journal of {self.tenant} in PostgreSQL jumps from "
                                       f"seq {recovered.journal_pos} to {seq}")
                now, name, args = decode_tail(payload)
                app.apply(recovered.state, name, args, now)
                recovered.journal_pos = seq
                recovered.replayed += 1
        except psycopg.Error as exc:
            raise RestoreError(f"cannot restore {self.tenant}: {refuse_unreachable(exc)}") \
                from exc
        except TenantError as exc:
            if isinstance(exc, RestoreError):
                raise
            raise RestoreError(f"replaying the journal of {self.tenant} failed: {exc}") from exc

    def open_journal(self, journal_dir: Path, *, next_seq: int,
                     signing: JournalSigning) -> ClusterJournal:
        journal = ClusterJournal.open(journal_dir, next_seq=next_seq, fsync_policy="never",
                                      signing=signing)
        assert isinstance(journal, ClusterJournal)
        journal.attach(self)
        return journal


class ClusterJournal(Journal):
    """A local journal (fsync_policy "never": a cache) whose appends are acknowledged once
    committed in PostgreSQL. `on_fenced` is called once, on the event loop, when fenced."""

    side: ClusterSide
    on_fenced: Callable[[Fenced], None] | None
    fenced: Fenced | None

    @property
    def on_failure(self) -> Callable[[BaseException], None] | None:
        """Never called: the local file is a cache, so its failure (a full disk) is no loss
        of durability and must not start the local write recovery (tenant/write_recovery.py);
        the journal goes on without it (`append_prepared`)."""
        return None

    @on_failure.setter
    def on_failure(self, value: Callable[[BaseException], None] | None) -> None:
        pass

    def attach(self, side: ClusterSide) -> None:
        self.side = side
        self._seq = self.next_seq  # PostgreSQL's seqs: counted here, whatever the file does
        self._local_failed = False
        self.on_fenced = None
        self.fenced = None
        self._pending: list[_Entry] = []
        self._wake = threading.Condition()
        self._closing = False
        self._committer_loop: asyncio.AbstractEventLoop | None = None
        self._committer: threading.Thread | None = None
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-upload")
        self._uploaded_generation: int | None = None

    # ---- appends ----

    def append_prepared(self, record: PreparedRecord) -> asyncio.Future[int]:
        seq = self._seq
        self._seq += 1
        if not self._local_failed:
            try:
                super().append_prepared(record)  # "never": resolved at once, nothing to await
            except JournalError as exc:
                self._drop_local(exc)
        return self._submit(seq, record.tail)

    def _drop_local(self, exc: BaseException) -> None:
        if not self._local_failed:
            self._local_failed = True
            log.warning("tenant %s: the local journal file failed (%s); PostgreSQL keeps the "
                        "journal, the local copy is no longer written", self.side.tenant, exc)

    def rotate(self) -> None:
        if not self._local_failed:
            try:
                super().rotate()
            except JournalError as exc:
                self._drop_local(exc)

    def _submit(self, seq: int | None, payload: bytes) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self.fenced is not None:
            future.set_exception(self.fenced)
            return future
        if self._committer is None:
            self._committer_loop = loop
            self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                               name="pg-commit")
            self._committer.start()
        with self._wake:
            self._pending.append((seq, payload, future, time.monotonic()))
            self._wake.notify()
        return future

    async def settle(self) -> None:
        """Every record appended so far is committed in PostgreSQL (a checkpoint waits for
        this); JournalError when it cannot be (fenced, unreachable)."""
        if not self._local_failed:
            try:
                await super().settle()
            except JournalError as exc:
                self._drop_local(exc)
        try:
            await self._submit(None, b"")
        except ClusterWriteRefused as exc:
            raise JournalError(str(exc)) from exc

    def _resolve(self, future: asyncio.Future[int], result: int | BaseException) -> None:
        loop = self._committer_loop
        assert loop is not None

        def settle() -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        loop.call_soon_threadsafe(settle)

    def _commit_loop(self) -> None:
        """The committer thread: one transaction per batch of waiting records, in order."""
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._commit(batch)

    def _commit(self, batch: list[_Entry]) -> None:
        records = [(seq, payload) for seq, payload, _f, _t in batch if seq is not None]
        while True:
            if self.fenced is not None:
                for _seq, _payload, future, _t in batch:
                    self._resolve(future, self.fenced)
                return
            try:
                if records:
                    self.side.pg.append(records)
            except Fenced as exc:
                self._fence(exc)
                continue
            except psycopg.Error as exc:
                self.side.pg.close()
                now = time.monotonic()
                for _seq, _payload, future, queued in batch:
                    if now - queued > REFUSE_AFTER_S:
                        self._resolve(future, refuse_unreachable(exc))
                with self._wake:
                    if self._closing and now - batch[0][3] > CLOSE_TIMEOUT_S:
                        log.error("tenant %s: giving up on %d unacknowledged records at stop: "
                                  "%s", self.side.tenant, len(records), exc)
                        return
                time.sleep(RETRY_PAUSE_S)
                continue
            for seq, _payload, future, _t in batch:
                self._resolve(future, seq if seq is not None else 0)
            return

    def _fence(self, exc: Fenced) -> None:
        if self.fenced is not None:
            return
        self.fenced = exc
        log.error("tenant %s: fenced, exiting: %s", self.side.tenant, exc)
        loop, callback = self._committer_loop, self.on_fenced
        if loop is not None and callback is not None:
            loop.call_soon_threadsafe(callback, exc)

    # ---- snapshots ----

    def prune(self, covered_seq: int) -> list[Path]:
        """After a landed checkpoint: prune locally, and store the new snapshot in
        PostgreSQL in the background (the checkpointer calls this)."""
        removed: list[Path] = []
        if not self._local_failed:
            with contextlib.suppress(OSError, JournalError):
                removed = super().prune(covered_seq)
        if self.fenced is None:
            self._uploader.submit(self._upload_newest)
        return removed

    def _upload_newest(self) -> None:
        side = self.side
        newest = next((info for info in side.store.generations(side.tenant)
                       if info.header is not None), None)
        if newest is None or newest.header is None or (
                newest.generation == self._uploaded_generation):
            return
        try:
            with tempfile.TemporaryDirectory(dir=side.spec.data_dir,
                                             prefix=".pg-upload-") as staging:
                # A segmented generation travels with its segments inside, as a migration
                # ships it (snapshots/segment_files.py); a plain one is hard-linked.
                whole = Path(staging) / newest.path.name
                self_contained(newest.path, whole, side.store.key)
                side.uploads_pg.save_snapshot(whole, newest.generation,
                                              newest.header.journal_pos)
        except Fenced as exc:
            loop = self._committer_loop
            if loop is not None:
                loop.call_soon_threadsafe(self._fence, exc)
            else:
                self._fence(exc)
            return
        except (psycopg.Error, OSError, SnapshotError) as exc:
            side.uploads_pg.close()
            log.warning("tenant %s: snapshot generation %d not stored in PostgreSQL (the next "
                        "checkpoint tries again): %s", side.tenant, newest.generation, exc)
            return
        self._uploaded_generation = newest.generation

    # ---- close ----

    async def close(self) -> None:
        """Close the local journal, then wait (bounded) for the last commits and upload."""
        with contextlib.suppress(JournalError):
            await super().close()
        with self._wake:
            self._closing = True
            self._wake.notify()
        loop = asyncio.get_running_loop()
        committer = self._committer

        def finish() -> None:
            if committer is not None:
                committer.join(CLOSE_TIMEOUT_S)
            self._uploader.shutdown(wait=True)
            self.side.pg.close()
            self.side.uploads_pg.close()
        await asyncio.wait_for(loop.run_in_executor(None, finish), CLOSE_TIMEOUT_S * 2)


