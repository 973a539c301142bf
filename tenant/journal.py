"""The tenant's command journal: append, group commit, replay. Runs in the tenant worker.

Every change to a tenant's state is a command; the runtime applies it in memory, appends it
here and answers the request only once the record is durable (Prevayler / Redis AOF).
Restore = snapshot + the records with seq > the snapshot's `journal_pos`.

On-disk format (version 1)
--------------------------
Directory `<tenant_dir>/journal/`, segment files `<first_seq:020d>.journal`. A segment is

    header  16 bytes: magic b"SBJRNL\\r\\n" (8) + first_seq (u64 big-endian)
    record* length (u32 BE) + crc32 of payload (u32 BE, zlib.crc32) + payload
            payload = msgpack [seq: int, now: float unix seconds, name: str, args: map]

Seqs start at 1 and are consecutive within and across segments; a segment's first record has
the seq in its name and header. A payload is 1 byte .. 64 MiB. A new segment starts at each
checkpoint (`rotate`); segments a snapshot covers are deleted by `prune`. A segment is created
as `<name>.tmp`, header written and fsynced, then renamed, so a segment never has a short header.

Torn tail: a crash can leave the last record of the last segment partly written. A bad record
(short, oversized, CRC mismatch, undecodable) in the last segment is that torn tail when no
valid record follows it; it is dropped and reported, and `Journal.open` truncates it. A bad
record anywhere else is JournalCorrupt: it cannot be a torn write, and the records after it
may have been acknowledged, so restore stops instead of skipping them.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

from tenant.errors import JournalCorrupt, JournalError, JournalWriteError

__all__ = [
    "FSYNC_POLICIES", "MAX_PAYLOAD_BYTES", "Journal", "JournalCorrupt", "JournalError",
    "JournalRecord", "JournalStats", "JournalWriteError", "PreparedRecord", "ReplayResult",
    "read_records",
]

MAGIC = b"SBJRNL\r\n"
_HEADER = struct.Struct(">8sQ")
_FRAME = struct.Struct(">II")
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
FSYNC_POLICIES = ("always", "everysec", "never")
EVERYSEC_INTERVAL_S = 1.0
_SEGMENT_NAME = re.compile(r"^(\d{20})\.journal$")
_FIXARRAY_4 = 0x94  # how msgpack starts every payload: an array of 4


@dataclass(frozen=True)
class JournalRecord:
    seq: int
    now: float
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ReplayResult:
    records: list[JournalRecord]  # seq > after_seq, consecutive, in order
    last_seq: int  # seq of the last command known: max(after_seq, last record)
    torn_tail: tuple[Path, int] | None  # (segment, offset) of a dropped torn record


@dataclass(frozen=True)
class PreparedRecord:
    """A command encoded for the journal but not yet given a seq (see `Journal.prepare`)."""

    name: str
    tail: bytes  # msgpack of now, name, args: the payload after its array marker and seq
    args: dict[str, Any]  # the args as a replay will see them (decoded from the tail)


@dataclass
class JournalStats:
    appends: int = 0
    fsyncs: int = 0  # os.fsync calls on segment files
    bytes_written: int = 0


# ---------------------------------------------------------------- reading


def read_records(journal_dir: str | os.PathLike[str], after_seq: int) -> ReplayResult:
    """Every record with seq > after_seq, checked; raises JournalCorrupt rather than skip one."""
    segments = _list_segments(Path(journal_dir))
    records: list[JournalRecord] = []
    expect = after_seq + 1
    torn: tuple[Path, int] | None = None
    for i, (first, path) in enumerate(segments):
        is_last = i == len(segments) - 1
        if not is_last and segments[i + 1][0] - 1 <= after_seq:
            continue  # all its records are in the snapshot: not needed, not read
        if first > expect:
            if expect == after_seq + 1:
                raise JournalCorrupt(
                    f"journal starts at seq {first} ({path}) but the snapshot covers only up to "
                    f"{after_seq}: seqs {expect}..{first - 1} are missing"
                )
            raise JournalCorrupt(f"{path}: starts at seq {first}, expected {expect}: seqs missing")
        if first < expect and expect > after_seq + 1:
            raise JournalCorrupt(f"{path}: starts at seq {first}, overlapping seq {expect - 1}")
        scan = _scan_segment(path, first, is_last=is_last)
        for record in scan.records:
            if record.seq >= expect:
                records.append(record)
                expect = record.seq + 1
        if scan.torn:
            torn = (path, scan.good_end)
    return ReplayResult(records, expect - 1, torn)


@dataclass
class _SegmentScan:
    records: list[JournalRecord]
    good_end: int  # offset just past the last good record
    torn: bool


def _scan_segment(path: Path, first_seq: int, *, is_last: bool) -> _SegmentScan:
    data = path.read_bytes()
    if len(data) < _HEADER.size or data[: len(MAGIC)] != MAGIC:
        raise JournalCorrupt(f"{path}: bad segment header at offset 0 (seq {first_seq})")
    _, header_first = _HEADER.unpack_from(data)
    if header_first != first_seq:
        raise JournalCorrupt(
            f"{path}: header says first seq {header_first}, file name says {first_seq} (offset 0)"
        )
    records: list[JournalRecord] = []
    offset, seq = _HEADER.size, first_seq
    while offset < len(data):
        record, end = _parse_at(data, offset)
        if record is None:
            if is_last and not _record_follows(data, offset, seq):
                return _SegmentScan(records, offset, torn=True)
            raise JournalCorrupt(f"{path}: damaged record at offset {offset} (seq {seq})")
        if record.seq != seq:
            raise JournalCorrupt(f"{path}: record at offset {offset} has seq {record.seq}, "
                                 f"expected {seq}")
        records.append(record)
        offset, seq = end, seq + 1
    return _SegmentScan(records, offset, torn=False)


def _parse_at(data: bytes, offset: int) -> tuple[JournalRecord | None, int]:
    """The record at offset and the offset after it, or (None, 0) if it is not a good record."""
    if offset + _FRAME.size > len(data):
        return None, 0
    length, crc = _FRAME.unpack_from(data, offset)
    start = offset + _FRAME.size
    if not 0 < length <= MAX_PAYLOAD_BYTES or start + length > len(data):
        return None, 0
    payload = memoryview(data)[start : start + length]
    if zlib.crc32(payload) != crc:
        return None, 0
    return _decode(payload), start + length


def _decode(payload: memoryview) -> JournalRecord | None:
    try:
        fields = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (isinstance(fields, list) and len(fields) == 4):
        return None
    seq, now, name, args = fields
    if not (isinstance(seq, int) and isinstance(now, int | float) and isinstance(name, str)
            and isinstance(args, dict)):
        return None
    return JournalRecord(seq, float(now), name, args)


def _record_follows(data: bytes, bad_offset: int, min_seq: int) -> bool:
    """Whether a good record (seq >= min_seq) starts after bad_offset.

    Tells a torn tail (nothing valid after it) from a damaged record in the middle, even when
    the damage is in a length field that makes the record seem to run past the end of the file.
    Only runs after a crash; the msgpack array marker makes it skip most offsets cheaply.
    """
    pos = data.find(bytes([_FIXARRAY_4]), bad_offset + _FRAME.size + 1)
    while pos != -1:
        record, _ = _parse_at(data, pos - _FRAME.size)
        if record is not None and record.seq >= min_seq:
            return True
        pos = data.find(bytes([_FIXARRAY_4]), pos + 1)
    return False


def _list_segments(journal_dir: Path) -> list[tuple[int, Path]]:
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), journal_dir / n) for n in names if (m := _SEGMENT_NAME.match(n))]
    return sorted(found)


# ---------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each new directory's parent so the entries survive a crash."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        _fsync_dir(directory.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.fsync(fd)


class _SegmentNotCreated(OSError):
    """Creating a segment failed before its rename; its temp file is gone (cause: the error)."""


def _create_segment(journal_dir: Path, first_seq: int) -> tuple[int, Path]:
    """A new, empty segment opened for append. On return its header and name are on disk.

    A failure before the rename (ENOSPC, EIO on the temp file) removes the temp file and
    raises _SegmentNotCreated: nothing changed. A failure later (the directory fsync) is an
    OSError: the new name may or may not be on disk, so the caller must not go on appending.
    """
    path = journal_dir / f"{first_seq:020d}.journal"
    if path.exists():
        raise JournalError(f"{path} already exists")
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        raise _SegmentNotCreated(str(exc)) from exc
    try:
        try:
            _write_all(fd, _HEADER.pack(MAGIC, first_seq))
            os.fsync(fd)  # the temp file is thrown away on failure: never fsynced again
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _SegmentNotCreated(str(exc)) from exc
        _fsync_dir(journal_dir)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


# ---------------------------------------------------------------- appending


class Journal:
    """The open journal of one tenant. Use from one event loop; `append` is not thread-safe."""

    def __init__(self, journal_dir: Path, fd: int, segment_has_records: bool, next_seq: int,
                 fsync_policy: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self._dir = journal_dir
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
        self._ticker: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False
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
             loop: asyncio.AbstractEventLoop | None = None) -> Journal:
        """Open for appending records from `next_seq` on (last replayed seq + 1).

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
        _make_dirs(directory)
        for leftover in directory.glob("*.journal.tmp"):  # a crash during _create_segment
            leftover.unlink()
        segments = _list_segments(directory)
        if segments:
            first, path = segments[-1]
            scan = _scan_segment(path, first, is_last=True)
            end_seq = first + len(scan.records) - 1
            if end_seq >= next_seq:
                raise JournalError(f"{path} already holds records up to seq {end_seq}; "
                                   f"replay them and open with next_seq={end_seq + 1}")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            continuing = end_seq + 1 == next_seq
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
                journal = cls(directory, fd, bool(scan.records), next_seq, fsync_policy, loop)
                if not scan.torn and scan.records:
                    journal._sync_existing_in_background(durable_before=first - 1)
                return journal
            # The snapshot covers seqs the journal lost (unacknowledged, written before a machine
            # crash): continue in a new segment so the seqs in each file stay consecutive.
            os.close(fd)
        fd, _ = _create_segment(directory, next_seq)
        return cls(directory, fd, False, next_seq, fsync_policy, loop)

    @property
    def next_seq(self) -> int:
        return self._next_seq

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
        """Encode a command before it is applied, so a command the journal cannot hold is
        refused while the state is still untouched.

        Raises JournalError for args that do not encode or a record over MAX_PAYLOAD_BYTES.
        `args` of the result is what a replay will pass the command (a tuple comes back a
        list, for one): the live apply uses it too, so replay rebuilds exactly the live state.
        The payload is `msgpack([seq, now, name, args])`: a fixarray marker, the seq, then
        this tail, byte for byte what packing the whole list gives.
        """
        try:
            packed_args = msgpack.packb(args, use_bin_type=True)
            tail = (msgpack.packb(float(now)) + msgpack.packb(name, use_bin_type=True)
                    + packed_args)
            decoded = msgpack.unpackb(packed_args, raw=False, strict_map_key=False)
        except (TypeError, ValueError, OverflowError) as exc:
            raise JournalError(f"command {name!r} has arguments the journal cannot encode: "
                               f"{exc}") from exc
        if len(tail) + 10 > MAX_PAYLOAD_BYTES:  # 10: the array marker and the largest seq
            raise JournalError(f"command {name!r} encodes to {len(tail)} bytes, over the "
                               f"{MAX_PAYLOAD_BYTES}-byte record limit")
        return PreparedRecord(name, tail, decoded)

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
        payload = bytes([_FIXARRAY_4]) + msgpack.packb(seq) + record.tail
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            _write_all(self._fd, frame)  # now, so records reach the file in seq order
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
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush_waiters())
        else:
            future.set_result(seq)
            if self._policy == "everysec" and self._ticker is None:
                self._ticker = loop.create_task(self._tick())
        return future

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
        try:
            fd, _ = _create_segment(self._dir, self._next_seq)
        except _SegmentNotCreated as exc:
            # Nothing of the new segment is left and the active one is untouched: appends go
            # on into it. The caller (a checkpoint) may go on without rotating.
            raise JournalError(f"cannot start a new journal segment: {exc.__cause__}") from exc
        except OSError as exc:
            self._fail(exc)
            raise JournalWriteError(f"starting a new journal segment failed: {exc}") from exc
        old, self._fd, self._segment_has_records = self._fd, fd, False
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
        segments = _list_segments(self._dir)
        deleted: list[Path] = []
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 <= covered_seq:
                path.unlink()
                deleted.append(path)
        if deleted:
            _fsync_dir(self._dir)
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
        """fsync; then every record written before the fsync started is durable."""
        loop = self._loop or asyncio.get_running_loop()
        target = self._next_seq - 1
        retired, self._retired = self._retired, []
        fds = [*retired, self._fd]  # oldest segment first: records become durable in seq order
        self._syncing = True
        try:
            await loop.run_in_executor(self._executor, _fsync_all, fds)
        except OSError as exc:
            self._retired = retired + self._retired  # close() closes them
            self._fail(exc)
            return
        finally:
            self._syncing = False
        # open()'s fsync ran before this one on the same thread: if it failed, this success
        # may be over pages the kernel dropped, so it must not count.
        self._settle_opening_sync(wait=True)
        if self._error is not None:
            self._retired = retired + self._retired
            return
        for fd in retired:
            os.close(fd)
        self._stats.fsyncs += len(fds)
        self._durable_seq = target
        while self._waiters and self._waiters[0][0] <= target:
            seq, future = self._waiters.popleft()
            if not future.done():  # the request may have been cancelled
                future.set_result(seq)

    def _fail(self, exc: BaseException) -> None:
        """Break the journal for good and fail everything still waiting for durability."""
        if self._error is None:
            self._error = exc
        while self._waiters:
            seq, future = self._waiters.popleft()
            if not future.done():
                error = JournalWriteError(f"seq {seq} is not durable: journal write failed: {exc}")
                error.__cause__ = exc
                future.set_exception(error)
