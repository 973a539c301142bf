"""Checkpoints: write the tenant's state as a new snapshot generation (runs in the tenant worker).

A checkpoint while serving forks: the child packs the copy-on-write view of the state and writes
the snapshot, the parent keeps serving and records the result (as Redis BGSAVE does). The
journal is rotated at the fork, so the snapshot covers exactly the commands up to that moment
and the new segment holds everything after. At stop, nothing is being served, so the
checkpoint runs in-process.

Guarantee: when `checkpoint()` returns a generation, that snapshot is on disk (fsynced,
renamed, directory fsynced) and journal segments it covers may be pruned. When it fails (disk
full, I/O error, child killed), the previous snapshot and every journal segment stay, the state
stays dirty, and the error is raised: acknowledged writes are still safe in the journal.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from dataclasses import dataclass
from typing import Any

from snapshots.codec import get_codec
from snapshots.store import SnapshotStore
from tenant.context import TenantContext
from tenant.errors import TenantError


class CheckpointFailed(TenantError):
    pass


@dataclass(frozen=True)
class CheckpointOutcome:
    changed: bool
    generation: int | None
    journal_pos: int


class Checkpointer:
    def __init__(
        self,
        context: TenantContext,
        store: SnapshotStore,
        journal: Any,
        *,
        generation: int | None,
        close_in_child: tuple[int, ...] = (),
    ) -> None:
        self.context = context
        self.store = store
        self.journal = journal
        self.codec = get_codec(context.app.codec)
        self.generation = generation
        self.close_in_child = close_in_child
        self.running = False
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    async def checkpoint(self, *, fork: bool = True) -> CheckpointOutcome:
        """Write a new generation if anything changed since the last one."""
        async with self._lock:
            ctx = self.context
            if not ctx.dirty:
                return CheckpointOutcome(False, self.generation, ctx.journal_pos)
            position, covered = ctx.journal_pos, ctx.commands_since_checkpoint
            self.journal.rotate()
            self.running = True
            try:
                if fork:
                    generation = await self._write_in_child(position)
                else:
                    generation = self._write(position)
            except CheckpointFailed as exc:
                self.last_error = str(exc)
                raise
            finally:
                self.running = False
            self.last_error = None
            ctx.commands_since_checkpoint -= covered
            self.generation = generation
            oldest = self.store.oldest_kept_journal_pos(ctx.tenant)
            if oldest is not None:
                self.journal.prune(oldest)
            return CheckpointOutcome(True, generation, position)

    def _write(self, position: int) -> int:
        ctx = self.context
        try:
            payload = self.codec.dumps(ctx.state)
            info = self.store.save(
                ctx.tenant,
                payload,
                codec=self.codec.name,
                app_version=ctx.code_version,
                schema_version=ctx.schema_version,
                journal_pos=position,
            )
        except Exception as exc:
            raise CheckpointFailed(f"checkpoint of {ctx.tenant} failed: {exc}") from exc
        return info.generation

    async def _write_in_child(self, position: int) -> int:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no logging, no locks; pack, write, _exit
            status = 1
            try:
                os.close(read_fd)
                for fd in self.close_in_child:
                    os.close(fd)  # so the router sees EOF at once if the worker dies
                gc.disable()  # a collection would touch (and copy) every page of the heap
                generation = self._write(position)
                os.write(write_fd, json.dumps({"generation": generation}).encode())
                status = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, then _exit
                try:
                    os.write(write_fd, json.dumps({"error": str(exc)[:2000]}).encode())
                except OSError:
                    pass
            finally:
                os._exit(status)
        os.close(write_fd)
        loop = asyncio.get_running_loop()
        message, status = await loop.run_in_executor(None, _collect_child, pid, read_fd)
        if "generation" in message and status == 0:
            return int(message["generation"])
        reason = message.get("error") or _describe_status(status)
        raise CheckpointFailed(str(reason))


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
