"""Checkpoints: write the tenant's state as a new snapshot generation (runs in the tenant worker).

A checkpoint while serving forks: the child packs the copy-on-write view of the state and writes
the snapshot, the parent keeps serving and records the result (as Redis BGSAVE does). The
journal is rotated at the fork, so the snapshot covers exactly the commands up to that moment
and the new segment holds everything after. At stop, nothing is being served, so the
checkpoint runs in-process.

Guarantee: when `checkpoint()` returns a generation, that snapshot is on disk (fsynced,
renamed, directory fsynced) and journal segments it covers may be pruned: the journal is
pruned only up to the *oldest* kept generation's position, so a restore that falls back past
a damaged newest snapshot still finds every command after the generation it uses. When it
fails (disk full, I/O error, child killed), the previous snapshot and every journal segment
stay, the state stays dirty (unsaved), the error is raised, and a forked checkpoint is retried
in the background with backoff (2 s, doubling, at most 60 s apart) until one lands or nothing
is left to save: acknowledged writes are still safe in the journal meanwhile.

A snapshot holds only commands that count as acknowledged: before it takes its position, a
checkpoint holds new commands back and waits until the journal has made every applied one
durable (`Journal.settle`: one group-commit fsync at most), so a journal that fails later can
never have refused a command the snapshot holds. A checkpoint is refused while writes are
unavailable after a journal failure (the context is not durable): the state may then hold
refused commands, and the journal keeps every acknowledged write anyway
(tenant/write_recovery.py). The final checkpoint at stop follows the same rules.

Segmented state (tenant/segments.py): a checkpoint takes the changed marks when it takes its
position (`Plan`), the child packs and writes only the changed segments and refers to the
others (`SnapshotStore.save_segmented`), and the parent records where each segment now is once
the generation landed; a failed checkpoint puts the marks back. `bytes` of the outcome is what
the checkpoint wrote.

The forked child dies with the worker (PR_SET_PDEATHSIG SIGKILL): a crashed worker's snapshot
in progress is dropped (its temp file is never a generation; the journal has every write).
It keeps the tenant's lock (tenant/lock.py) while it lives, as a writer of the tenant's folder:
it closes the worker's sockets (`close_in_child`), never the lock's descriptor, so no new
worker for the tenant can start while it may still rename a snapshot into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snapshots.codec import get_codec
from snapshots.store import SnapshotStore
from tenant.context import TenantContext
from tenant.errors import JournalError, JournalWriteError, TenantError
from tenant.limits import set_death_signal
from tenant.segments import Plan, Segments

RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0

Notify = Callable[[dict[str, Any]], None]


class CheckpointFailed(TenantError):
    pass


@dataclass(frozen=True)
class CheckpointOutcome:
    changed: bool
    generation: int | None
    journal_pos: int
    duration_s: float = 0.0  # a written checkpoint's: from holding writes to the file in place
    bytes: int = 0  # the size of the snapshot file it wrote


class Checkpointer:
    def __init__(
        self,
        context: TenantContext,
        store: SnapshotStore,
        journal: Any,
        *,
        generation: int | None,
        close_in_child: tuple[int, ...] = (),
        notify: Notify | None = None,
    ) -> None:
        self.context = context
        self.store = store
        self.journal = journal
        self.codec = get_codec(context.app.codec)
        self.generation = generation
        self.close_in_child = close_in_child
        # Gets {"event": "checkpointed" | "checkpoint_failed", ...} for background retries
        # (a checkpoint asked for over the control channel is reported by its caller).
        self.notify = notify
        self.running = False
        self.last_error: str | None = None
        self.retry_delay_s: float | None = None  # set while a retry is scheduled
        self.retry_at: float | None = None  # time.time() of the next retry
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_task: asyncio.Task[None] | None = None
        # One checkpoint at a time; held also while the state is rebuilt after a journal
        # failure, so a checkpoint never lands in the middle of that.
        self.lock = asyncio.Lock()

    @property
    def unsaved(self) -> bool:
        """The last checkpoint failed and the state still has changes no snapshot holds."""
        return self.last_error is not None and self.context.dirty

    async def checkpoint(self, *, fork: bool = True) -> CheckpointOutcome:
        """Write a new generation if anything changed since the last one.

        Raises CheckpointFailed; a failed forked checkpoint schedules a retry.
        """
        try:
            outcome = await self._checkpoint(fork=fork)
        except CheckpointFailed as exc:
            self.last_error = str(exc)
            if fork and self.context.durable:
                self._schedule_retry()
            raise
        self.last_error = None
        self._cancel_retry()
        return outcome

    async def _checkpoint(self, *, fork: bool) -> CheckpointOutcome:
        async with self.lock:
            ctx = self.context
            self._refuse_unless_durable()
            if not ctx.dirty:
                return CheckpointOutcome(False, self.generation, ctx.journal_pos)
            child: tuple[int, int] | None = None
            started = time.monotonic()
            plan: Plan | None = None
            with ctx.holding_writes():
                await self._settle_journal()
                position, covered = ctx.journal_pos, ctx.commands_since_checkpoint
                self._rotate()
                self.running = True
                try:
                    if isinstance(ctx.state, Segments):
                        plan = Plan(ctx.state)
                    if fork:
                        child = self._fork_child(position, plan)  # it has its copy: writes go on
                    else:
                        written = self._write(position, plan)
                except BaseException:
                    self.running = False
                    if plan is not None:
                        plan.failed()
                    raise
            try:
                if child is not None:
                    written = await self._await_child(*child)
            except BaseException:
                if plan is not None:
                    plan.failed()
                raise
            finally:
                self.running = False
            if plan is not None:
                plan.saved(written["index"])
            generation = int(written["generation"])
            ctx.commands_since_checkpoint -= covered
            self.generation = generation
            oldest = self.store.oldest_kept_journal_pos(ctx.tenant)
            if oldest is not None:
                with contextlib.suppress(OSError):  # the next checkpoint prunes them
                    self.journal.prune(oldest)
            took = time.monotonic() - started
            return CheckpointOutcome(True, generation, position, took, int(written["bytes"]))

    def _refuse_unless_durable(self) -> None:
        ctx = self.context
        if not ctx.durable:
            raise CheckpointFailed(
                f"checkpoint of {ctx.tenant} refused while writes are unavailable "
                f"({ctx.writes_unavailable}); the journal keeps every acknowledged write"
            )

    async def _settle_journal(self) -> None:
        """Wait until every command applied so far counts as acknowledged (a failure of the
        journal meanwhile is a failed checkpoint, and the context learns of it)."""
        try:
            await self.journal.settle()
        except JournalWriteError as exc:
            self.context.durability_lost(exc)
            raise CheckpointFailed(f"checkpoint of {self.context.tenant} failed: "
                                   f"{self.context.writes_unavailable}") from exc
        except JournalError as exc:
            raise CheckpointFailed(f"checkpoint of {self.context.tenant} failed: {exc}") from exc

    def _rotate(self) -> None:
        """Start a new journal segment at the checkpoint's position, if the disk allows.

        A rotation is an optimisation (whole segments can then be pruned); a snapshot whose
        position falls inside a segment is just as correct, so a segment that cannot be
        created (a full disk) does not stop the checkpoint. A failed fsync of the old segment
        does: the journal is broken then.
        """
        try:
            self.journal.rotate()
        except JournalWriteError as exc:
            self.context.durability_lost(exc)
            raise CheckpointFailed(f"checkpoint of {self.context.tenant} failed: {exc}") from exc
        except JournalError:
            pass

    def _write(self, position: int, plan: Plan | None) -> dict[str, Any]:
        """Write the snapshot; {"generation", "bytes" (written), "index" (segmented: each
        segment's entry and its file's path, else [])}."""
        ctx = self.context
        try:
            if plan is not None:
                info = self.store.save_segmented(
                    ctx.tenant, plan.sources(self.codec.dumps), groups=plan.groups,
                    codec=self.codec.name, app_version=ctx.code_version,
                    schema_version=ctx.schema_version, journal_pos=position,
                )
                index = [{**entry.to_dict(), "path": entry.path} for entry in info.entries]
            else:
                info = self.store.save(
                    ctx.tenant,
                    self.codec.dumps(ctx.state),
                    codec=self.codec.name,
                    app_version=ctx.code_version,
                    schema_version=ctx.schema_version,
                    journal_pos=position,
                )
                index = []
        except Exception as exc:
            raise CheckpointFailed(f"checkpoint of {ctx.tenant} failed: {exc}") from exc
        return {"generation": info.generation, "bytes": info.written_bytes, "index": index}

    def _fork_child(self, position: int, plan: Plan | None) -> tuple[int, int]:
        """Fork the child that writes the snapshot at `position`: (its pid, the pipe it
        reports on). It runs on a copy-on-write view of the state as of this call."""
        read_fd, write_fd = os.pipe()
        worker = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no logging, no locks; pack, write, _exit
            status = 1
            try:
                set_death_signal(worker, signal.SIGKILL)  # see the module docstring
                os.close(read_fd)
                for fd in self.close_in_child:
                    os.close(fd)  # so the router sees EOF at once if the worker dies
                gc.disable()  # a collection would touch (and copy) every page of the heap
                written = self._write(position, plan)
                os.write(write_fd, json.dumps(written).encode())
                status = 0
            except BaseException as exc:  # reported to the parent, then _exit
                with contextlib.suppress(OSError):
                    os.write(write_fd, json.dumps({"error": str(exc)[:2000]}).encode())
            finally:
                os._exit(status)
        os.close(write_fd)
        return pid, read_fd

    async def _await_child(self, pid: int, read_fd: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        message, status = await loop.run_in_executor(None, _collect_child, pid, read_fd)
        if "generation" in message and status == 0:
            return message
        reason = message.get("error") or _describe_status(status)
        raise CheckpointFailed(str(reason))

    # ---- retries after a failure ----

    def _schedule_retry(self) -> None:
        delay = RETRY_FIRST_S if self.retry_delay_s is None else self.retry_delay_s * 2
        self.retry_delay_s = min(delay, RETRY_MAX_S)
        self.retry_at = time.time() + self.retry_delay_s
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        loop = asyncio.get_running_loop()
        self._retry_timer = loop.call_later(self.retry_delay_s, self._start_retry)

    def _start_retry(self) -> None:
        self._retry_timer = None
        self._retry_task = asyncio.ensure_future(self._retry())

    async def _retry(self) -> None:
        if not self.context.dirty or not self.context.durable:
            self._cancel_retry()
            return
        try:
            outcome = await self.checkpoint(fork=True)
        except CheckpointFailed as exc:
            self._notify({"event": "checkpoint_failed", "error": str(exc),
                          "retry_in_s": self.retry_delay_s})
            return
        if outcome.changed:
            self._notify({"event": "checkpointed", "generation": outcome.generation,
                          "journal_pos": outcome.journal_pos})

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self.retry_delay_s = None
        self.retry_at = None

    def close(self) -> None:
        """Drop a scheduled retry (the worker is stopping)."""
        self._cancel_retry()

    def _notify(self, message: dict[str, Any]) -> None:
        if self.notify is not None:
            with contextlib.suppress(Exception):  # a gone router must not break the worker
                self.notify(message)


def _collect_child(pid: int, read_fd: int) -> tuple[dict[str, Any], int]:
    chunks = []
    try:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        message = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        message = {}
    return message, status


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"checkpoint child killed by signal {os.WTERMSIG(status)}"
    return f"checkpoint child exited with status {os.waitstatus_to_exitcode(status)}"
