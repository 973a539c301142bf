"""Getting writes back after the journal failed (runs in the tenant worker).

A failed journal write or fsync (a full disk, a quota, an I/O error) is final for the file it
hit: the journal is never written or fsynced there again (tenant/journal.py). The worker does
not exit over it, as Redis and PostgreSQL do not: it refuses writes with a clear reason, keeps
serving reads, and takes writes again by itself once a journal can be written. `WriteRecovery`
owns that, one failure at a time:

1. At once (`TenantContext.durability_lost`): every command is refused (503 "cannot make
   writes durable: no space left on device", DurabilityGuard), the router is told
   (`writes_unavailable` event), and requests wait while the state may hold a refused command.
2. The broken journal is closed (its files released, nothing fsynced). Its `kept_seq` is the
   last command that may have been acknowledged; the records after it are cut out of the
   files (`drop_unkept`, page cache only), and the state is rebuilt from the durable files up
   to `kept_seq` (newest snapshot + journal replay, in a thread) and put in place of the one
   in memory. Neither step needs free space. Reads go on from then, from exactly the state a
   restart would restore: the refused commands are gone from memory as from disk.
3. A new journal segment at `kept_seq + 1` is tried at once, then with backoff (0.2 s doubling
   to 5 s) while the worker runs: each try is one small file, and giving up would leave the
   tenant read-only until an operator acts, or turn a full disk into an outage. Once a try
   succeeds (space is back), writes are accepted again and the router is told
   (`writes_restored`). After ENOSPC a try also needs some free space on the journal's file
   system (RESUME_FREE_BYTES, or RESUME_FREE_FRACTION of a small one): the refused records
   just cut out free a little, and taking writes again on that would fail the next one at
   once, each time at the cost of a rebuild. For the same reason the backoff carries over to
   the next failure unless writes stayed available for CALM_AFTER_S.

Guarantee: no command that was answered with anything but a 2xx is in the state served after
step 2, nor in the files a later start restores from (a machine crash before step 3 may bring
a refused command back from the failed file's unflushed tail; a killed worker does not).
If step 2 fails (the durable files cannot be read back), the worker cannot know what is
durable: `on_fatal` is called, and the runtime exits with DURABILITY_LOST_EXIT so the next
start restores from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.worker import WRITES_RESTORED, WRITES_UNAVAILABLE
from snapshots.store import LocalStore
from tenant.checkpoint import Checkpointer
from tenant.context import TenantContext, failure_errno
from tenant.errors import JournalError
from tenant.journal import Journal, drop_unkept
from tenant.recovery import RecoveredState, journal_signing, recover_state

log = logging.getLogger("switchboard.tenant")

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
CALM_AFTER_S = 60.0
RESUME_FREE_BYTES = 4 << 20
RESUME_FREE_FRACTION = 0.10

Notify = Callable[[dict[str, Any]], None]


class WriteRecovery:
    """Refuse writes, rebuild the durable state, and start a new journal after a failure."""

    def __init__(self, context: TenantContext, store: LocalStore, checkpointer: Checkpointer,
                 *, fsync_policy: str, notify: Notify,
                 on_fatal: Callable[[BaseException], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self.store = store
        self.checkpointer = checkpointer
        self.fsync_policy = fsync_policy
        self.notify = notify
        self.on_fatal = on_fatal
        self.clock = clock
        self.failures = 0  # journal failures seen by this worker
        self.attempts = 0  # tries to start a new journal, over all failures
        self.delay_s: float | None = None  # the backoff in force (kept across failures)
        self.retry_at: float | None = None  # clock() of the next try, while one is scheduled
        self.failed_at: float | None = None  # clock() of the current failure
        self.restored_at: float | None = None
        self.errno: int | None = None  # of the current failure
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def recovering(self) -> bool:
        return self._task is not None and not self._task.done()

    def retry_in_s(self) -> float | None:
        """Seconds until writes are tried again (None when no try is scheduled)."""
        if self.retry_at is None:
            return None
        return max(0.0, self.retry_at - self.clock())

    def journal_failed(self, error: BaseException) -> None:
        """`TenantContext.on_durability_lost`: writes are refused from now on; recover."""
        if self._closed or self.recovering:
            return
        self.failures += 1
        self.failed_at = self.clock()
        self.errno = failure_errno(error)
        reason = self.context.writes_unavailable or str(error)
        log.error("tenant %s: journal failed, refusing writes and serving reads from the "
                  "durable state until a new journal can be written: %s",
                  self.context.tenant, reason)
        self._notify({"event": WRITES_UNAVAILABLE, "error": reason})
        self._task = asyncio.ensure_future(self._recover())

    async def close(self) -> None:
        """Stop recovering (the worker is stopping); writes stay refused if they were."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- the steps ----

    async def _recover(self) -> None:
        ctx = self.context
        journal = ctx.journal
        if not isinstance(journal, Journal):
            self.on_fatal(TypeError(f"tenant {ctx.tenant} has no journal to recover "
                                    f"({journal!r})"))
            return
        kept = journal.kept_seq  # final: nothing is appended to a broken journal
        journal.on_failure = None  # it is done with; only its files matter from here
        journal_dir = self.store.layout.journal_dir(ctx.tenant)
        with contextlib.suppress(JournalError, OSError):  # broken already: nothing to keep
            await journal.close()
        ctx.drop_journal()
        try:
            drop_unkept(journal_dir, kept, signing=journal_signing(self.store, ctx.tenant))
        except (JournalError, OSError) as exc:
            log.warning("tenant %s: cannot cut the refused records out of the journal (%s); "
                        "the new segment will supersede them", ctx.tenant, exc)
        try:
            async with self.checkpointer.lock:
                recovered = await asyncio.to_thread(
                    recover_state, ctx.app, self.store, ctx.tenant, kept)
                self._put_state_back(recovered, kept)
        except Exception as exc:  # any failure: the durable state is unknown here
            log.error("tenant %s: cannot rebuild the durable state after the journal failed: "
                      "%s", ctx.tenant, exc, exc_info=True)
            self.on_fatal(exc)
            return
        await self._start_journal(recovered.journal_pos + 1)

    def _put_state_back(self, recovered: RecoveredState, kept: int) -> None:
        ctx = self.context
        for warning in recovered.warnings:
            log.warning("tenant %s: %s", ctx.tenant, warning)
        if recovered.journal_pos < kept:
            log.error("tenant %s: the journal reads back only up to seq %d of %d that may "
                      "have been acknowledged", ctx.tenant, recovered.journal_pos, kept)
        dropped = ctx.journal_pos - recovered.journal_pos
        ctx.replace_state(recovered.state, journal_pos=recovered.journal_pos,
                          commands_since_checkpoint=recovered.replayed
                          + (1 if recovered.rewritten else 0))
        self.checkpointer.generation = recovered.generation
        gc.freeze()  # as at boot: the rebuilt state lives as long as the worker
        log.info("tenant %s: serving reads from the durable state at seq %d (refused "
                 "commands dropped from memory: %d)", ctx.tenant, recovered.journal_pos,
                 max(0, dropped))

    async def _start_journal(self, next_seq: int) -> None:
        ctx = self.context
        journal_dir = self.store.layout.journal_dir(ctx.tenant)
        calm = self.restored_at is None or self.clock() - self.restored_at > CALM_AFTER_S
        if calm:
            self.delay_s = None
        elif self.delay_s is not None:  # failing again soon after writes came back: wait
            await self._wait_for_next_try()
        while True:
            self.attempts += 1
            try:
                self._check_headroom(journal_dir)
                journal = Journal.start_after_failure(
                    journal_dir, next_seq=next_seq, fsync_policy=self.fsync_policy,
                    signing=journal_signing(self.store, ctx.tenant))
            except (OSError, JournalError) as exc:
                log.debug("tenant %s: writes not back yet: %s", ctx.tenant, exc)
                await self._wait_for_next_try()
                continue
            break
        self.retry_at = None
        journal.on_failure = ctx.durability_lost
        self.checkpointer.journal = journal
        ctx.resume_writes(journal, next_seq)
        now = self.clock()
        self.restored_at = now
        unavailable_s = round(now - (self.failed_at or now), 3)
        log.warning("tenant %s: writes are durable again after %.1fs (new journal segment at "
                    "seq %d)", ctx.tenant, unavailable_s, next_seq)
        self._notify({"event": WRITES_RESTORED, "unavailable_s": unavailable_s})

    async def _wait_for_next_try(self) -> None:
        self.delay_s = (RETRY_FIRST_S if self.delay_s is None
                        else min(self.delay_s * 2, RETRY_MAX_S))
        self.retry_at = self.clock() + self.delay_s
        await asyncio.sleep(self.delay_s)

    def _check_headroom(self, journal_dir: Path) -> None:
        """After ENOSPC: OSError(ENOSPC) unless the file system has room to take writes."""
        if self.errno != errno.ENOSPC:
            return
        stats = os.statvfs(journal_dir)
        free = stats.f_bavail * stats.f_frsize
        wanted = min(RESUME_FREE_BYTES, int(stats.f_blocks * stats.f_frsize
                                            * RESUME_FREE_FRACTION))
        if free < wanted:
            raise OSError(errno.ENOSPC, f"{free} bytes free, waiting for {wanted}")

    def _notify(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a gone router must not break the worker
            self.notify(message)
