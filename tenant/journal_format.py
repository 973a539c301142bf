"""The command journal's on-disk format, and its reader. Runs in the tenant worker and in
`python -m tenant.export`.

Every change to a tenant's state is a command; the runtime applies it in memory, appends it
to the journal (tenant/journal.py, the group-commit appender) and answers the request only
once the record is durable (Prevayler / Redis AOF). Restore = snapshot + the records with
seq > the snapshot's `journal_pos`, read by `read_records` here.

On-disk format (version 1)
--------------------------
Directory `<tenant_dir>/journal/` (snapshots.layout.DataLayout.journal_dir), segment files
`<first_seq:020d>.journal`. A segment is

    header  16 bytes: magic b"SBJRNL\\r\\n" (8) + first_seq (u64 big-endian)
    record* length (u32 BE) + crc32 of payload (u32 BE, zlib.crc32) + payload
            payload = msgpack [seq: int, now: float unix seconds, name: str, args: map]

Seqs start at 1 and are consecutive within and across segments; a segment's first record has
the seq in its name and header. A payload is 1 byte .. 64 MiB. A new segment starts at each
checkpoint (`Journal.rotate`); segments a snapshot covers are deleted by `Journal.prune`. A
segment is created as `<name>.tmp`, header written and fsynced, then renamed, so a segment
never has a short header.

Torn tail: a crash can leave the last record of the last segment partly written. A bad record
(short, oversized, CRC mismatch, undecodable) in the last segment is that torn tail when no
valid record follows it; it is dropped and reported, and `Journal.open` truncates it. A bad
record anywhere else is JournalCorrupt: it cannot be a torn write, and the records after it
may have been acknowledged, so restore stops instead of skipping them.

A later segment supersedes: the records of a segment count only up to the seq before the next
segment's first seq, and whatever follows them in that file is never read. This is how the
journal goes on after a failed write or fsync without touching the failed file again
(`Journal.start_after_failure`): the new segment starts right after the last record that may
have been acknowledged, so the refused records (and a torn one) left behind it in the failed
file never replay. Only that path writes a segment whose first seq is not past every record
on disk. A superseded segment that holds *fewer* records than the next one's first seq needs
is still a gap (JournalCorrupt).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from snapshots.durable import fsync_dir, write_all
from tenant.errors import JournalCorrupt, JournalError

__all__ = [
    "MAX_PAYLOAD_BYTES", "JournalRecord", "PreparedRecord", "ReplayResult", "SegmentNotCreated",
    "SegmentScan", "create_segment", "frame_record", "list_segments", "prepare_record",
    "read_records", "remove_temp_segments", "scan_segment",
]

MAGIC = b"SBJRNL\r\n"
_HEADER = struct.Struct(">8sQ")
_FRAME = struct.Struct(">II")
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
_SEGMENT_NAME = re.compile(r"^(\d{20})\.journal$")
_TEMP_SUFFIX = ".tmp"
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
    """A command encoded for the journal but not yet given a seq (see `prepare_record`)."""

    name: str
    tail: bytes  # msgpack of now, name, args: the payload after its array marker and seq
    args: dict[str, Any]  # the args as a replay will see them (decoded from the tail)


# ---------------------------------------------------------------- encoding


def prepare_record(name: str, args: dict[str, Any], now: float) -> PreparedRecord:
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
        tail = msgpack.packb(float(now)) + msgpack.packb(name, use_bin_type=True) + packed_args
        decoded = msgpack.unpackb(packed_args, raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise JournalError(f"command {name!r} has arguments the journal cannot encode: "
                           f"{exc}") from exc
    if len(tail) + 10 > MAX_PAYLOAD_BYTES:  # 10: the array marker and the largest seq
        raise JournalError(f"command {name!r} encodes to {len(tail)} bytes, over the "
                           f"{MAX_PAYLOAD_BYTES}-byte record limit")
    return PreparedRecord(name, tail, decoded)


def frame_record(seq: int, record: PreparedRecord) -> bytes:
    """The bytes of one record as it goes into a segment: length, CRC, payload."""
    packed_seq: bytes = msgpack.packb(seq)
    payload = bytes([_FIXARRAY_4]) + packed_seq + record.tail
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


# ---------------------------------------------------------------- reading


def read_records(journal_dir: str | os.PathLike[str], after_seq: int,
                 through_seq: int | None = None) -> ReplayResult:
    """Every record with seq > after_seq (and <= through_seq, when given), checked; raises
    JournalCorrupt rather than skip one. A segment's records count up to the next segment's
    first seq (see "A later segment supersedes" above)."""
    segments = list_segments(Path(journal_dir))
    records: list[JournalRecord] = []
    expect = after_seq + 1
    torn: tuple[Path, int] | None = None
    for i, (first, path) in enumerate(segments):
        is_last = i == len(segments) - 1
        superseded_from = None if is_last else segments[i + 1][0]
        if superseded_from is not None and superseded_from - 1 <= after_seq:
            continue  # all its records are in the snapshot: not needed, not read
        if through_seq is not None and first > through_seq:
            break
        if first > expect:
            if expect == after_seq + 1:
                raise JournalCorrupt(
                    f"journal starts at seq {first} ({path}) but the snapshot covers only up to "
                    f"{after_seq}: seqs {expect}..{first - 1} are missing"
                )
            raise JournalCorrupt(f"{path}: starts at seq {first}, expected {expect}: seqs missing")
        last = None if superseded_from is None else superseded_from - 1
        if through_seq is not None:
            last = through_seq if last is None else min(last, through_seq)
        scan = scan_segment(path, first, is_last=is_last, through_seq=last)
        for record in scan.records:
            if record.seq >= expect:
                records.append(record)
                expect = record.seq + 1
        if scan.torn:
            torn = (path, scan.good_end)
    return ReplayResult(records, expect - 1, torn)


@dataclass
class SegmentScan:
    records: list[JournalRecord]
    good_end: int  # offset just past the last good record (read)
    torn: bool  # a torn record was dropped at good_end (only ever in the last segment)


def scan_segment(path: Path, first_seq: int, *, is_last: bool,
                 through_seq: int | None = None) -> SegmentScan:
    """Every record of one segment (up to through_seq, when given: the bytes after it are
    not read), checked. JournalCorrupt for a bad header, a seq out of order, or a bad record
    that is not the torn tail of the last segment."""
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
    while offset < len(data) and (through_seq is None or seq <= through_seq):
        record, end = _parse_at(data, offset)
        if record is None:
            if is_last and not _record_follows(data, offset, seq):
                return SegmentScan(records, offset, torn=True)
            raise JournalCorrupt(f"{path}: damaged record at offset {offset} (seq {seq})")
        if record.seq != seq:
            raise JournalCorrupt(f"{path}: record at offset {offset} has seq {record.seq}, "
                                 f"expected {seq}")
        records.append(record)
        offset, seq = end, seq + 1
    return SegmentScan(records, offset, torn=False)


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


def list_segments(journal_dir: Path) -> list[tuple[int, Path]]:
    """(first_seq, path) of every segment, ascending; [] when there is no journal folder."""
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), journal_dir / n) for n in names if (m := _SEGMENT_NAME.match(n))]
    return sorted(found)


# ---------------------------------------------------------------- segment files


class SegmentNotCreated(OSError):
    """Creating a segment failed before its rename; its temp file is gone (cause: the error)."""


def create_segment(journal_dir: Path, first_seq: int, *,
                   replace: bool = False) -> tuple[int, Path]:
    """A new, empty segment opened for append. On return its header and name are on disk.

    A failure before the rename (ENOSPC, EIO on the temp file) removes the temp file and
    raises SegmentNotCreated: nothing changed. A failure later (the directory fsync) is an
    OSError: the new name may or may not be on disk, so the caller must not go on appending.
    An existing segment of that name is a JournalError, unless `replace`: then the rename
    swaps the new empty segment in for it in one step (the old one held only refused records).
    """
    path = journal_dir / f"{first_seq:020d}.journal"
    if path.exists() and not replace:
        raise JournalError(f"{path} already exists")
    tmp = path.with_name(path.name + _TEMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        raise SegmentNotCreated(str(exc)) from exc
    try:
        try:
            write_all(fd, _HEADER.pack(MAGIC, first_seq))
            os.fsync(fd)  # the temp file is thrown away on failure: never fsynced again
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SegmentNotCreated(str(exc)) from exc
        fsync_dir(journal_dir)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def remove_temp_segments(journal_dir: Path) -> None:
    """Remove the temp files of segments whose creation a crash interrupted."""
    for leftover in journal_dir.glob(f"*.journal{_TEMP_SUFFIX}"):
        leftover.unlink()
