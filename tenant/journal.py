"""The tenant's command journal: the group-commit appender. Runs in the tenant worker.

Every change to a tenant's state is a command; the runtime applies it in memory, appends it
here and answers the request only once the record is durable (Prevayler / Redis AOF).
Restore = snapshot + the records with seq > the snapshot's `journal_pos`. The on-disk format,
the reader (`read_records`) and the torn-tail rules are in tenant/journal_format.py; this
module writes that format and re-exports its public names.

Durability by `fsync_policy`, i.e. what holds when the future returned by `append` resolves:
- "always" (default): the record and all before it are fsynced. Concurrent appends share one
  fsync (group commit). Survives a crash of the worker and of the machine.
- "everysec": the record is written to the file (the page cache); a background task fsyncs
  once a second. A killed worker loses nothing; a machine crash or power loss can lose up to
  about the last second of acknowledged writes.
- "never": written, never fsynced by us; the OS flushes when it likes. A killed worker loses
  nothing; a machine crash can lose any recent writes.
A failed write or fsync breaks the journal for good (JournalWriteError now and on every later
append): fsync is never retried, since a retry can report success over pages the kernel dropped.
`kept_seq` then says which records may have been acknowledged; the worker goes on with a new
journal, not this one (tenant/write_recovery.py): `drop_unkept` cuts the refused records out
of the files it leaves, and `Journal.start_after_failure` starts a new segment right after
`kept_seq`, which supersedes whatever the failed file holds past it (tenant/journal_format.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snapshots.durable import fsync_dir, make_dirs, write_all
from snapshots.mac import RecordSigner
from tenant.errors import JournalCorrupt, JournalError, JournalWriteError
from tenant.journal_format import (
    MAX_PAYLOAD_BYTES,
    JournalRecord,
    JournalSigning,
    PreparedRecord,
    ReplayResult,
    SegmentNotCreated,
    SegmentScan,
    create_segment,
    frame_record,
    list_segments,
    new_segment,
    prepare_record,
    read_records,
    remove_temp_segments,
    scan_segment,
)

__all__ = [
    "FSYNC_POLICIES", "MAX_PAYLOAD_BYTES", "Journal", "JournalCorrupt", "JournalError",
    "JournalRecord", "JournalSigning", "JournalStats", "JournalWriteError", "PreparedRecord",
    "ReplayResult", "drop_unkept", "read_records",
]

FSYNC_POLICIES = ("always", "everysec", "never")
EVERYSEC_INTERVAL_S = 1.0
# Group commit fsyncs on the event loop itself (as Redis does for `appendfsync always`) while
# the last fsync took at most this long; a slower one (the disk busy with a checkpoint, say)
# sends the next batches to the fsync thread, so reads keep being served meanwhile.
INLINE_FSYNC_MAX_S = 0.002


@dataclass
class JournalStats:
    appends: int = 0
    fsyncs: int = 0  # os.fsync calls on segment files
    bytes_written: int = 0


def _fsync_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.fsync(fd)


class Journal:
    """The open journal of one tenant. Use from one event loop; `append` is not thread-safe."""

    def __init__(self, journal_dir: Path, fd: int, segment_has_records: bool, next_seq: int,
                 fsync_policy: str, loop: asyncio.AbstractEventLoop | None, *,
                 signing: JournalSigning | None = None,
                 signer: RecordSigner | None = None) -> None:
        self._dir = journal_dir
        # Signs new segments (signing) and the records of the active one (signer); None
        # for both writes version 1 (tenant/journal_format.py).
        self.signing = signing
        self._signer = signer
        self._fd = fd
        self._segment_has_records = segment_has_records
        self._next_seq = next_seq
        self._policy = fsync_policy
        self._loop = loop
        self._durable_seq = next_seq - 1
        # open() hands the fsync of the records already in the active segment to the fsync
        # thread (see open); until it has succeeded they do not count in durable_seq.
        self._opening_sync: Future[None] | None = None
        self._opened_end_seq = next_seq - 1  # the last record in the files at open
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._retired: list[int] = []  # fds of rotated-out segments still owed an fsync
        self._syncing = False
        self._flusher: asyncio.Task[None] | None = None
        self._leader_scheduled = False  # a _lead_flush is queued on the loop
        self._last_fsync_s = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False
        # Called once, with the OSError, when the journal breaks (whatever noticed it: an
        # append, the group-commit flusher, the "everysec" ticker, a rotation).
        self.on_failure: Callable[[BaseException], None] | None = None
        # Called with the seconds each group-commit fsync took (for the router's metrics).
        self.on_fsync: Callable[[float], None] | None = None
        self._stats = JournalStats()
        # One thread, so fsyncs never run concurrently and never wait behind other work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-fsync")

    def _sync_existing_in_background(self, durable_before: int) -> None:
        """Start the fsync of the records already in the active segment, on the fsync thread.

        Until it has succeeded, durable_seq stays at durable_before. The thread runs its
        jobs in order, so any later fsync of the segment (group commit, close) starts only
        after this one has ended, and sees its result first (_settle_opening_sync).
        """
        self._durable_seq = durable_before
        self._opening_sync = self._executor.submit(os.fsync, self._fd)

    @classmethod
    def open(cls, journal_dir: str | os.PathLike[str], *, next_seq: int,
             fsync_policy: str = "always",
             loop: asyncio.AbstractEventLoop | None = None,
             signing: JournalSigning | None = None) -> Journal:
        """Open for appending records from `next_seq` on (last replayed seq + 1).

        With `signing` that has a key, records are written signed (format 2): the active
        segment is appended to only if it is signed by that key for the same epoch and
        creation id; otherwise a new segment starts at `next_seq` (so a journal left by an
        unsigned worker gets its first signed segment here). Without a key, format 1.

        A torn tail of the newest segment is truncated. When this returns, the directory and
        the active segment's name and header are on disk, and so is the truncation of a torn
        tail (that case, rare and after a crash, fsyncs before returning). The records
        already in the active segment (a previous "everysec" or "never" worker may have left
        them in the page cache only) are fsynced by the journal's fsync thread, started here
        so that a worker's start never waits for it: `durable_seq` counts them once it has
        succeeded, a failure breaks the journal like any failed fsync (the next `append`,
        `rotate` or `close` raises JournalWriteError), and no later append is acknowledged
        as durable before it has succeeded, since later fsyncs of the segment run after it
        on the same thread and check its result first.
        """
        if fsync_policy not in FSYNC_POLICIES:
            raise ValueError(f"fsync_policy must be one of {FSYNC_POLICIES}, not {fsync_policy!r}")
        if next_seq < 1:
            raise ValueError(f"next_seq must be >= 1, not {next_seq}")
        directory = Path(journal_dir)
        make_dirs(directory)
        remove_temp_segments(directory)  # a crash during create_segment
        segments = list_segments(directory)
        replace = False
        if segments:
            first, path = segments[-1]
            scan = scan_segment(path, first, is_last=True, signing=signing)
            end_seq = first + len(scan.records) - 1
            if end_seq >= next_seq:
                raise JournalError(f"{path} already holds records up to seq {end_seq}; "
                                   f"replay them and open with next_seq={end_seq + 1}")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            continuing = end_seq + 1 == next_seq and _signed_alike(scan, signing)
            # An empty segment named next_seq that cannot be continued is swapped out.
            replace = first == next_seq
            try:
                if scan.torn:
                    os.ftruncate(fd, scan.good_end)
                # A previous "everysec" worker may have left records in the page cache only.
                # Now when the truncation must be on disk before anything is appended after
                # it, or when the segment is being left; else in the background (below).
                if scan.torn or not continuing:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            if continuing:
                journal = cls(directory, fd, bool(scan.records), next_seq, fsync_policy, loop,
                              signing=signing, signer=scan.signer)
                if not scan.torn and scan.records:
                    journal._sync_existing_in_background(durable_before=first - 1)
                return journal
            # The snapshot covers seqs the journal lost (unacknowledged, written before a machine
            # crash), or the segment is signed otherwise than this journal signs: continue in a
            # new segment, so the seqs in each file stay consecutive and each file is signed
            # one way.
            os.close(fd)
        start = new_segment(next_seq, signing)
        fd, _ = create_segment(directory, next_seq, replace=replace, start=start)
        return cls(directory, fd, False, next_seq, fsync_policy, loop, signing=signing,
                   signer=start.signer)

    @classmethod
    def start_after_failure(cls, journal_dir: str | os.PathLike[str], *, next_seq: int,
                            fsync_policy: str = "always",
                            signing: JournalSigning | None = None) -> Journal:
        """A journal in a new segment at `next_seq` (a failed journal's `kept_seq` + 1).

        Never opens a segment a failure touched: the new segment supersedes the records at
        and after `next_seq` that the failed files may still hold (tenant/journal_format.py),
        and segments that start after `next_seq` (only refused records) are removed first.
        When this returns, the new segment's header and name are on disk. On a full disk it
        raises SegmentNotCreated (an OSError) and nothing changed: call again later.
        """
        if fsync_policy not in FSYNC_POLICIES:
            raise ValueError(f"fsync_policy must be one of {FSYNC_POLICIES}, not {fsync_policy!r}")
        directory = Path(journal_dir)
        remove_temp_segments(directory)
        for first, path in list_segments(directory):
            if first > next_seq:
                path.unlink(missing_ok=True)
        start = new_segment(next_seq, signing)
        fd, _ = create_segment(directory, next_seq, replace=True, start=start)
        return cls(directory, fd, False, next_seq, fsync_policy, None, signing=signing,
                   signer=start.signer)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def kept_seq(self) -> int:
        """The last seq that may have been acknowledged: what a failure must keep.

        "always": the last fsynced record (and the records found at open, which the state
        has held since); every later one was refused, or is still waiting. "everysec" and
        "never": the last record written in full, since writing is what acknowledges there.
        """
        if self._policy == "always":
            return max(self._durable_seq, self._opened_end_seq)
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """Every record up to this seq has been fsynced."""
        self._settle_opening_sync(wait=False)
        return self._durable_seq

    @property
    def stats(self) -> JournalStats:
        return replace(self._stats)

    @staticmethod
    def prepare(name: str, args: dict[str, Any], now: float) -> PreparedRecord:
        """Encode a command before it is applied (journal_format.prepare_record): JournalError
        for args the journal cannot hold, while the state is still untouched."""
        return prepare_record(name, args, now)

    def append(self, name: str, args: dict[str, Any], now: float) -> asyncio.Future[int]:
        """Write a record now and return a future of its seq, resolved once durable.

        Call from the event loop right after applying the command, so the seq order is the
        apply order. Unencodable or oversized args raise before a seq is used. A broken journal
        or a failed write raises JournalWriteError; a failed fsync fails the future with it.
        """
        return self.append_prepared(self.prepare(name, args, now))

    def append_prepared(self, record: PreparedRecord) -> asyncio.Future[int]:
        """`append` for a record from `prepare`: cannot fail on the record's contents."""
        self._check_usable()
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        seq = self._next_seq
        frame = frame_record(seq, record, self._signer)
        try:
            write_all(self._fd, frame)  # now, so records reach the file in seq order
        except OSError as exc:
            self._fail(exc)
            raise JournalWriteError(f"writing seq {seq} to the journal failed: {exc}") from exc
        self._next_seq = seq + 1
        self._segment_has_records = True
        self._stats.appends += 1
        self._stats.bytes_written += len(frame)
        future: asyncio.Future[int] = loop.create_future()
        if self._policy == "always":
            self._waiters.append((seq, future))
            self._request_flush(loop)
        else:
            future.set_result(seq)
            if self._policy == "everysec" and self._ticker is None:
                self._ticker = loop.create_task(self._tick())
        return future

    async def settle(self) -> None:
        """Return once every record appended so far counts as acknowledged: fsynced under
        "always" (one group-commit fsync away at most), written under the other policies (at
        once). A checkpoint waits for this before it takes its position, so a snapshot never
        holds a command the journal may still refuse. JournalWriteError if the journal fails.
        """
        if self._policy != "always":
            self._check_usable()
            return
        target = self._next_seq - 1
        durable = self.durable_seq  # may take in open()'s fsync result, failure included
        self._check_usable()
        if durable >= target:
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[int] = loop.create_future()
        self._waiters.append((target, future))  # target >= every seq already waiting
        self._request_flush(loop)
        await future

    def rotate(self) -> None:
        """Start a new segment named by `next_seq` (at a checkpoint: the snapshot covers the rest).

        The old segment is fsynced before its fd is closed: now if no fsync is running, else by
        the flusher right after. A no-op when the active segment has no records.
        """
        # The fsync open() started may still use the active fd: let it end before that fd
        # is fsynced here and closed (it started at open, so this rarely waits).
        self._settle_opening_sync(wait=True)
        self._check_usable()
        if not self._segment_has_records:
            return
        start = new_segment(self._next_seq, self.signing)
        try:
            fd, _ = create_segment(self._dir, self._next_seq, start=start)
        except SegmentNotCreated as exc:
            # Nothing of the new segment is left and the active one is untouched: appends go
            # on into it. The caller (a checkpoint) may go on without rotating.
            raise JournalError(f"cannot start a new journal segment: {exc.__cause__}") from exc
        except OSError as exc:
            self._fail(exc)
            raise JournalWriteError(f"starting a new journal segment failed: {exc}") from exc
        old, self._fd, self._segment_has_records = self._fd, fd, False
        self._signer = start.signer
        if self._syncing:
            self._retired.append(old)  # an fsync may be using it: the flusher closes it
            return
        try:
            if self._policy != "never":
                os.fsync(old)
                self._stats.fsyncs += 1
        except OSError as exc:
            self._retired.append(old)
            self._fail(exc)
            raise JournalWriteError(f"fsync of the old journal segment failed: {exc}") from exc
        os.close(old)

    def prune(self, covered_seq: int) -> list[Path]:
        """Delete the segments whose records all have seq <= covered_seq (never the active one).

        When this returns, the deletions are on disk (directory fsynced).
        """
        segments = list_segments(self._dir)
        deleted: list[Path] = []
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 <= covered_seq:
                path.unlink()
                deleted.append(path)
        if deleted:
            fsync_dir(self._dir)
        return deleted

    async def close(self) -> None:
        """Wait for pending fsyncs, fsync what is left (unless "never"), close files and thread.

        Raises JournalWriteError if that last fsync fails.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._ticker is not None:
            await self._ticker
        if self._flusher is not None:
            await self._flusher
        broken_before = self._error is not None
        if self._opening_sync is not None:
            with contextlib.suppress(OSError):  # its error is read by _settle_opening_sync
                await asyncio.wrap_future(self._opening_sync)
            self._settle_opening_sync(wait=True)
        try:
            if (self._error is None and self._policy != "never"
                    and (self._next_seq - 1 > self._durable_seq or self._retired)):
                await self._sync_once()
        finally:
            for fd in [*self._retired, self._fd]:
                os.close(fd)
            self._retired = []
            self._executor.shutdown(wait=True)
        if self._error is not None and not broken_before:
            raise JournalWriteError(f"final journal fsync failed: {self._error}") from self._error

    # -- internals

    def _settle_opening_sync(self, *, wait: bool) -> None:
        """Take in the result of open()'s background fsync once it has ended (or wait)."""
        opening = self._opening_sync
        if opening is None or not (wait or opening.done()):
            return
        self._opening_sync = None
        try:
            opening.result()  # bounded: one fsync of one file
        except OSError as exc:
            self._fail(exc)
            return
        self._stats.fsyncs += 1
        self._durable_seq = max(self._durable_seq, self._opened_end_seq)

    def _check_usable(self) -> None:
        self._settle_opening_sync(wait=False)
        if self._error is not None:
            raise JournalWriteError(
                f"the journal is broken since a write or fsync failed: {self._error}"
            ) from self._error
        if self._closed:
            raise JournalError("the journal is closed")

    def _request_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a group commit will cover the records waiting now.

        Leader-based group commit (PostgreSQL's WAL flush works this way): with no fsync in
        flight, the first waiter queues one fsync at the end of this turn of the event loop,
        and every record appended before it runs joins that batch. It runs on the loop itself
        while fsyncs are fast, saving the thread hand-off that doubled a lone writer's latency;
        after a slow fsync, batches go to the fsync thread (`_flush_waiters`) until one is fast
        again. Either way at most one fsync is in flight, and a record is acknowledged only by
        an fsync that started after it was written.
        """
        if self._flusher is not None or self._leader_scheduled:
            return  # the fsync in flight or queued loops until nobody waits
        if self._last_fsync_s <= INLINE_FSYNC_MAX_S and self._opening_sync is None:
            self._leader_scheduled = True
            loop.call_soon(self._lead_flush, loop)
        else:
            self._flusher = loop.create_task(self._flush_waiters())

    def _lead_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """The queued group commit, on the event loop: one fsync for every record waiting."""
        self._leader_scheduled = False
        if self._closed or self._error is not None or not self._waiters:
            return  # close() fsyncs and answers what is left; _fail answered the rest
        if self._flusher is not None or self._opening_sync is not None:
            self._request_flush(loop)  # let the thread's queue keep the order
            return
        target, retired, fds = self._begin_sync()
        started = time.monotonic()
        try:
            _fsync_all(fds)
        except OSError as exc:
            self._end_sync(target, retired, fds, started, exc)
            return
        self._end_sync(target, retired, fds, started, None)
        if self._waiters and self._error is None:
            self._request_flush(loop)  # waiters of a later seq (a settle) are owed one more

    async def _flush_waiters(self) -> None:
        """The group-commit flusher: one at a time, while anyone waits for durability."""
        try:
            while (self._waiters or self._retired) and self._error is None:
                await self._sync_once()
        finally:
            self._flusher = None

    async def _tick(self) -> None:
        """The "everysec" flusher."""
        while not self._stop.is_set() and self._error is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), EVERYSEC_INTERVAL_S)
            if self._error is None and (self._next_seq - 1 > self._durable_seq or self._retired):
                await self._sync_once()

    async def _sync_once(self) -> None:
        """fsync on the fsync thread; then every record written before it started is durable."""
        loop = self._loop or asyncio.get_running_loop()
        target, retired, fds = self._begin_sync()
        self._syncing = True
        started = time.monotonic()
        try:
            await loop.run_in_executor(self._executor, _fsync_all, fds)
        except OSError as exc:
            self._end_sync(target, retired, fds, started, exc)
            return
        finally:
            self._syncing = False
        self._end_sync(target, retired, fds, started, None)

    def _begin_sync(self) -> tuple[int, list[int], list[int]]:
        """What one fsync covers: the seq written last, and the segment fds, oldest first
        (so records become durable in seq order)."""
        retired, self._retired = self._retired, []
        return self._next_seq - 1, retired, [*retired, self._fd]

    def _end_sync(self, target: int, retired: list[int], fds: list[int], started: float,
                  error: OSError | None) -> None:
        """Take in an fsync's outcome: acknowledge up to `target`, or break the journal."""
        if error is not None:
            self._retired = retired + self._retired  # close() closes them
            self._fail(error)
            return
        # open()'s fsync ran before this one on the same thread: if it failed, this success
        # may be over pages the kernel dropped, so it must not count.
        self._settle_opening_sync(wait=True)
        if self._error is not None:
            self._retired = retired + self._retired
            return
        for fd in retired:
            os.close(fd)
        self._last_fsync_s = time.monotonic() - started
        if self.on_fsync is not None:
            self.on_fsync(self._last_fsync_s)
        self._stats.fsyncs += len(fds)
        self._durable_seq = target
        while self._waiters and self._waiters[0][0] <= target:
            seq, future = self._waiters.popleft()
            if not future.done():  # the request may have been cancelled
                future.set_result(seq)

    def _fail(self, exc: BaseException) -> None:
        """Break the journal for good and fail everything still waiting for durability."""
        first = self._error is None
        if first:
            self._error = exc
        while self._waiters:
            seq, future = self._waiters.popleft()
            if not future.done():
                error = JournalWriteError(f"seq {seq} is not durable: journal write failed: {exc}")
                error.__cause__ = exc
                future.set_exception(error)
        if first and self.on_failure is not None:
            self.on_failure(exc)


def _signed_alike(scan: SegmentScan, signing: JournalSigning | None) -> bool:
    """Whether a journal that signs with `signing` may append to the scanned segment."""
    if signing is None or signing.key is None:
        return scan.signer is None
    identity = signing.identity
    return (scan.signer is not None and scan.epoch == identity.epoch
            and scan.creation_id == identity.creation_id)


def drop_unkept(journal_dir: str | os.PathLike[str], kept_seq: int, *,
                signing: JournalSigning | None = None) -> None:
    """Cut the records after `kept_seq` out of a failed journal's files, in the page cache.

    Nothing is fsynced (a failed file is never fsynced again) and nothing needs free space:
    the segment holding `kept_seq` is truncated right after it and later segments are
    removed. So a worker killed before `Journal.start_after_failure` succeeds does not replay
    a refused command at its next start; after a machine crash the files may still hold
    them, until the new segment supersedes them. OSError or JournalCorrupt when a file cannot
    be read or cut (the caller's bounded replay still leaves those records out). `signing`:
    the journal's, so its signed segments can be read.
    """
    directory = Path(journal_dir)
    segments = list_segments(directory)
    holding = [(first, path) for first, path in segments if first <= kept_seq]
    if holding:
        first, path = holding[-1]
        scan = scan_segment(path, first, is_last=True, through_seq=kept_seq, signing=signing)
        if path.stat().st_size > scan.good_end:
            os.truncate(path, scan.good_end)
    for first, path in segments:
        if first > kept_seq:
            path.unlink(missing_ok=True)
