"""The command journal's on-disk format, and its reader. Runs in the tenant worker and in
`python -m tenant.export`.

Every change to a tenant's state is a command; the runtime applies it in memory, appends it
to the journal (tenant/journal.py, the group-commit appender) and answers the request only
once the record is durable (Prevayler / Redis AOF). Restore = snapshot + the records with
seq > the snapshot's `journal_pos`, read by `read_records` here.

On-disk format (versions 1 and 2)
---------------------------------
Directory `<tenant_dir>/journal/` (snapshots.layout.DataLayout.journal_dir), segment files
`<first_seq:020d>.journal`. A version 1 segment (unsigned) is

    header  16 bytes: magic b"SBJRNL\\r\\n" (8) + first_seq (u64 big-endian)
    record* length (u32 BE) + crc32 of payload (u32 BE, zlib.crc32) + payload
            payload = msgpack [seq: int, now: float unix seconds, name: str, args: map]

and a version 2 segment (signed with the deployment's snapshot key, snapshots.mac) is

    offset  size  field
    0       8     magic b"SBJRN2\\r\\n"
    8       8     first_seq, u64 BE (as in the file name)
    16      4     header length H, u32 BE, 1 <= H <= 64 KiB
    20      H     msgpack map: tenant (str), epoch (int >= 0, the tenant's fencing token),
                  creation_id (str, "" if unknown), created_at (float), nonce (bin, 16
                  random bytes: no two segments have the same MAC); unknown keys ignored
    20+H    4     CRC32 of bytes 0 .. 20+H
    24+H    32    header MAC: keyed BLAKE2b-256 (person b"sb-jsegment-v2") of bytes 0 .. 24+H
    56+H          records:
    record* length (u32 BE, of the payload) + crc32 (u32 BE) of mac + payload
            + mac (16 bytes) + payload (as in version 1)
            mac = keyed BLAKE2b-128 (person b"sb-jrecord-v2") of the segment's header MAC
            followed by the payload

Why every record is MACed (not only the header): a record is a command the restore applies
to the state, so a record planted at the end of a segment would be replayed into it. The MAC
binds a record to its segment (through the header MAC, which covers the tenant, epoch,
creation id, first seq and nonce) and, through the seq in its payload, to its place: it cannot
be moved to another segment, tenant or position, and seqs must run on consecutively. 16 bytes
is enough for a MAC nobody can test offline (snapshots.mac says why) and costs one BLAKE2b
call on a few hundred bytes per record, which group commit does not notice (the fsync
dominates). The CRC covers the MAC too: damage reads as damage, a valid CRC with a MAC that
does not verify reads as a record this deployment did not write. Segments have no index: a
segment is found by its first seq; the segment index of DESIGN.md belongs to snapshots.

Seqs start at 1 and are consecutive within and across segments; a segment's first record has
the seq in its name and header. A payload is 1 byte .. 64 MiB. A new segment starts at each
checkpoint (`Journal.rotate`); segments a snapshot covers are deleted by `Journal.prune`. A
segment is created as `<name>.tmp`, header written and fsynced, then renamed, so a segment
never has a short header.

Which segments a reader accepts (`JournalSigning`, what the restore passes): a version 2
segment only if its header MAC verifies under the key and it names this tenant (else
JournalCorrupt "not signed by this deployment": the restore stops rather than lose records);
a version 1 segment only when `accept_unsigned` (the restore allows it for a msgpack app
restoring an unsigned snapshot, or with --allow-unsigned), and never after a version 2
segment (the writer never goes back to version 1 once it has a key). A writer without a key
writes version 1; one with a key writes version 2, and `Journal.open` starts a new version 2
segment rather than append to an unsigned one (or to one of another epoch or creation id).

Torn tail: a crash can leave the last record of the last segment partly written. A bad record
(short, oversized, CRC mismatch, undecodable) in the last segment is that torn tail when no
valid record follows it; it is dropped and reported, and `Journal.open` truncates it. A record
whose CRC is valid but whose MAC does not verify is treated the same way but reported as not
signed by this deployment (`ReplayResult.torn_tail_forged`): at the end it is dropped (this
deployment never acknowledged it), anywhere else it is JournalCorrupt. A bad record anywhere
else is JournalCorrupt: it cannot be a torn write, and the records after it may have been
acknowledged, so restore stops instead of skipping them.

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
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from snapshots.durable import fsync_dir, write_all
from snapshots.mac import (
    MAC_BYTES,
    RECORD_MAC_BYTES,
    RecordSigner,
    WriterIdentity,
    macs_equal,
    segment_mac,
)
from tenant.errors import JournalCorrupt, JournalError

__all__ = [
    "MAX_PAYLOAD_BYTES", "JournalRecord", "JournalSigning", "PreparedRecord", "ReplayResult",
    "SegmentNotCreated", "SegmentScan", "SegmentStart", "create_segment", "frame_record",
    "list_segments", "new_segment", "prepare_record", "read_records", "remove_temp_segments",
    "scan_segment",
]

MAGIC = b"SBJRNL\r\n"  # version 1
MAGIC_V2 = b"SBJRN2\r\n"
_HEADER = struct.Struct(">8sQ")  # magic, first_seq: both versions start so
_V2_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">I")
MAX_SEGMENT_HEADER = 64 * 1024
_FRAME = struct.Struct(">II")  # version 1: length, crc
_FRAME_V2 = struct.Struct(f">II{RECORD_MAC_BYTES}s")  # version 2: length, crc, mac
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
    # The dropped tail record had a valid CRC but a MAC that does not verify: not torn, but
    # written by someone without this deployment's key.
    torn_tail_forged: bool = False


@dataclass(frozen=True)
class PreparedRecord:
    """A command encoded for the journal but not yet given a seq (see `prepare_record`)."""

    name: str
    tail: bytes  # msgpack of now, name, args: the payload after its array marker and seq
    args: dict[str, Any]  # the args as a replay will see them (decoded from the tail)


@dataclass(frozen=True)
class JournalSigning:
    """The key a tenant's journal is signed and checked with, the identity new segments
    carry, and which unsigned segments a reader accepts (see "Which segments a reader
    accepts" above). identity.key None: write version 1, accept no version 2 segment."""

    tenant: str
    identity: WriterIdentity = field(default_factory=WriterIdentity)
    accept_unsigned: bool = True

    @property
    def key(self) -> bytes | None:
        return self.identity.key


@dataclass(frozen=True)
class SegmentStart:
    """What a new segment begins with: its header bytes, and the signer of its records
    (None for a version 1 segment)."""

    data: bytes
    signer: RecordSigner | None


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


def frame_record(seq: int, record: PreparedRecord, signer: RecordSigner | None = None) -> bytes:
    """The bytes of one record as it goes into a segment: length, CRC, (MAC,) payload. With
    a signer (a version 2 segment's), the version 2 frame; without, version 1."""
    packed_seq: bytes = msgpack.packb(seq)
    payload = bytes([_FIXARRAY_4]) + packed_seq + record.tail
    if signer is None:
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
    mac = signer.mac(payload)
    return _FRAME_V2.pack(len(payload), zlib.crc32(payload, zlib.crc32(mac)), mac) + payload


def new_segment(first_seq: int, signing: JournalSigning | None) -> SegmentStart:
    """The header of a new segment: version 2, signed, when `signing` has a key; else
    version 1."""
    if signing is None or signing.key is None:
        return SegmentStart(_HEADER.pack(MAGIC, first_seq), None)
    identity = signing.identity
    fields = msgpack.packb({
        "tenant": signing.tenant, "epoch": identity.epoch, "creation_id": identity.creation_id,
        "created_at": time.time(), "nonce": os.urandom(16),
    }, use_bin_type=True)
    head = _HEADER.pack(MAGIC_V2, first_seq) + _V2_LENGTH.pack(len(fields)) + fields
    head += _CRC.pack(zlib.crc32(head))
    mac = segment_mac(signing.key, head)
    return SegmentStart(head + mac, RecordSigner(signing.key, mac))


# ---------------------------------------------------------------- reading


def read_records(journal_dir: str | os.PathLike[str], after_seq: int,
                 through_seq: int | None = None, *,
                 signing: JournalSigning | None = None) -> ReplayResult:
    """Every record with seq > after_seq (and <= through_seq, when given), checked; raises
    JournalCorrupt rather than skip one. A segment's records count up to the next segment's
    first seq (see "A later segment supersedes" above). `signing` says which key checks
    version 2 segments and whether version 1 ones are accepted; None: no key, every version
    1 segment accepted, a version 2 one refused."""
    segments = list_segments(Path(journal_dir))
    records: list[JournalRecord] = []
    expect = after_seq + 1
    torn: tuple[Path, int] | None = None
    forged = False
    signed_before: Path | None = None
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
        scan = scan_segment(path, first, is_last=is_last, through_seq=last, signing=signing)
        if scan.version == 1 and signed_before is not None:
            raise JournalCorrupt(
                f"{path}: an unsigned (format 1) segment after the signed segment "
                f"{signed_before.name}: not written by this deployment")
        if scan.version == 2:
            signed_before = path
        for record in scan.records:
            if record.seq >= expect:
                records.append(record)
                expect = record.seq + 1
        if scan.torn:
            torn, forged = (path, scan.good_end), scan.forged
    return ReplayResult(records, expect - 1, torn, forged)


@dataclass
class SegmentScan:
    records: list[JournalRecord]
    good_end: int  # offset just past the last good record (read)
    torn: bool  # a torn record was dropped at good_end (only ever in the last segment)
    version: int = 1
    # Version 2: the signer of its records (to append more), its epoch and creation id.
    signer: RecordSigner | None = None
    epoch: int | None = None
    creation_id: str | None = None
    forged: bool = False  # the dropped record's CRC held and its MAC did not


@dataclass(frozen=True)
class _Layout:
    """How one segment's records are framed, and how their MACs are checked."""

    records_at: int
    frame: struct.Struct
    signer: RecordSigner | None


def scan_segment(path: Path, first_seq: int, *, is_last: bool,
                 through_seq: int | None = None,
                 signing: JournalSigning | None = None) -> SegmentScan:
    """Every record of one segment (up to through_seq, when given: the bytes after it are
    not read), checked. JournalCorrupt for a bad header, a segment `signing` does not accept
    (see read_records), a seq out of order, or a bad record that is not the torn tail of the
    last segment."""
    data = path.read_bytes()
    layout, header_fields = _read_segment_header(data, path, first_seq, signing)
    records: list[JournalRecord] = []
    offset, seq = layout.records_at, first_seq
    forged = False
    while offset < len(data) and (through_seq is None or seq <= through_seq):
        record, end, forged = _parse_at(data, offset, layout)
        if record is None:
            if is_last and not _record_follows(data, offset, seq, layout):
                break
            what = "not signed by this deployment" if forged else "damaged"
            raise JournalCorrupt(f"{path}: {what} record at offset {offset} (seq {seq})")
        if record.seq != seq:
            raise JournalCorrupt(f"{path}: record at offset {offset} has seq {record.seq}, "
                                 f"expected {seq}")
        records.append(record)
        offset, seq = end, seq + 1
    torn = offset < len(data) and (through_seq is None or seq <= through_seq)
    version = 1 if layout.signer is None else 2
    return SegmentScan(records, offset, torn=torn, version=version, signer=layout.signer,
                       epoch=header_fields.get("epoch"),
                       creation_id=header_fields.get("creation_id"),
                       forged=torn and forged)


def _read_segment_header(data: bytes, path: Path, first_seq: int,
                         signing: JournalSigning | None) -> tuple[_Layout, dict[str, Any]]:
    magic = data[: len(MAGIC)]
    if len(data) < _HEADER.size or magic not in (MAGIC, MAGIC_V2):
        raise JournalCorrupt(f"{path}: bad segment header at offset 0 (seq {first_seq})")
    _, header_first = _HEADER.unpack_from(data)
    if header_first != first_seq:
        raise JournalCorrupt(
            f"{path}: header says first seq {header_first}, file name says {first_seq} (offset 0)"
        )
    if magic == MAGIC:
        if signing is not None and not signing.accept_unsigned:
            raise JournalCorrupt(
                f"{path}: unsigned (format 1) journal segment refused: not signed by this "
                "deployment, and this restore accepts only signed records")
        return _Layout(_HEADER.size, _FRAME, None), {}
    fields_at = _HEADER.size + _V2_LENGTH.size
    if len(data) < fields_at:
        raise JournalCorrupt(f"{path}: segment header cut short (seq {first_seq})")
    (length,) = _V2_LENGTH.unpack_from(data, _HEADER.size)
    crc_at = fields_at + length
    records_at = crc_at + _CRC.size + MAC_BYTES
    if not 1 <= length <= MAX_SEGMENT_HEADER or len(data) < records_at:
        raise JournalCorrupt(f"{path}: bad segment header length {length} (seq {first_seq})")
    (crc,) = _CRC.unpack_from(data, crc_at)
    if zlib.crc32(memoryview(data)[:crc_at]) != crc:
        raise JournalCorrupt(f"{path}: segment header CRC mismatch (seq {first_seq})")
    key = None if signing is None else signing.key
    mac = data[crc_at + _CRC.size : records_at]
    if key is None:
        raise JournalCorrupt(f"{path}: a signed journal segment, and no snapshot key to check "
                             "it with: not signed by this deployment as far as this can tell")
    if not macs_equal(segment_mac(key, memoryview(data)[: crc_at + _CRC.size]), mac):
        raise JournalCorrupt(f"{path}: journal segment not signed by this deployment (its "
                             "header MAC does not verify under this deployment's snapshot key)")
    try:
        fields = msgpack.unpackb(memoryview(data)[fields_at:crc_at], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise JournalCorrupt(f"{path}: segment header is not a msgpack map: {exc}") from exc
    if not isinstance(fields, dict) or not isinstance(fields.get("tenant"), str):
        raise JournalCorrupt(f"{path}: segment header has no tenant")
    assert signing is not None  # key is not None
    if fields["tenant"] != signing.tenant:
        raise JournalCorrupt(f"{path}: a journal segment of tenant {fields['tenant']!r}, "
                             f"not {signing.tenant!r}")
    return _Layout(records_at, _FRAME_V2, RecordSigner(key, bytes(mac))), fields


def _parse_at(data: bytes, offset: int, layout: _Layout
              ) -> tuple[JournalRecord | None, int, bool]:
    """The record at offset and the offset after it, or (None, 0, forged) if it is not a
    good record; forged: its CRC held but its MAC did not verify."""
    frame = layout.frame
    if offset + frame.size > len(data):
        return None, 0, False
    start = offset + frame.size
    if layout.signer is None:
        length, crc = _FRAME.unpack_from(data, offset)
        mac = b""
    else:
        length, crc, mac = _FRAME_V2.unpack_from(data, offset)
    if not 0 < length <= MAX_PAYLOAD_BYTES or start + length > len(data):
        return None, 0, False
    payload = memoryview(data)[start : start + length]
    if zlib.crc32(payload, zlib.crc32(mac) if mac else 0) != crc:
        return None, 0, False
    if layout.signer is not None and not layout.signer.verifies(payload, mac):
        return None, 0, True  # checked before the payload is decoded
    return _decode(payload), start + length, False


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


def _record_follows(data: bytes, bad_offset: int, min_seq: int, layout: _Layout) -> bool:
    """Whether a good record (seq >= min_seq) starts after bad_offset.

    Tells a torn tail (nothing valid after it) from a damaged record in the middle, even when
    the damage is in a length field that makes the record seem to run past the end of the file.
    Only runs after a crash; the msgpack array marker makes it skip most offsets cheaply.
    """
    frame_size = layout.frame.size
    pos = data.find(bytes([_FIXARRAY_4]), bad_offset + frame_size + 1)
    while pos != -1:
        record, _, _ = _parse_at(data, pos - frame_size, layout)
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


def create_segment(journal_dir: Path, first_seq: int, *, replace: bool = False,
                   start: SegmentStart | None = None) -> tuple[int, Path]:
    """A new, empty segment opened for append. On return its header and name are on disk.

    `start` is its header (new_segment; None: an unsigned version 1 header).
    A failure before the rename (ENOSPC, EIO on the temp file) removes the temp file and
    raises SegmentNotCreated: nothing changed. A failure later (the directory fsync) is an
    OSError: the new name may or may not be on disk, so the caller must not go on appending.
    An existing segment of that name is a JournalError, unless `replace`: then the rename
    swaps the new empty segment in for it in one step (the old one held only refused records).
    """
    path = journal_dir / f"{first_seq:020d}.journal"
    if path.exists() and not replace:
        raise JournalError(f"{path} already exists")
    header = (start or new_segment(first_seq, None)).data
    tmp = path.with_name(path.name + _TEMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        raise SegmentNotCreated(str(exc)) from exc
    try:
        try:
            write_all(fd, header)
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
