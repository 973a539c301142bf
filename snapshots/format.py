"""The snapshot file format, version 1.

A snapshot file is a verified prefix followed by the payload (the tenant's state, packed by
a codec). All integers are big-endian.

    offset       size  field
    0            8     magic b"SBSNAP\\r\\n" (the CR LF catches text-mode transfers)
    8            2     format version, u16 (this code writes 1 and reads up to 1)
    10           4     header length H, u32, 1 <= H <= 1 MiB
    14           H     header: one msgpack map with str keys (below)
    14+H         4     CRC32 (zlib.crc32) of bytes 0 .. 14+H: magic, version, length and
                       header together
    18+H         P     payload, exactly P = header["payload_length"] bytes
    18+H+P             end of file: any trailing byte makes the file corrupt

The header map (packed in this order; readers look keys up by name):

    tenant          str    [a-z0-9][a-z0-9-]{0,62}
    generation      int    >= 0; the store numbers generations from 1
    codec           str    "msgpack" or "pickle" (see snapshots.codec)
    app_version     str    the tenant app's code version that wrote the state
    schema_version  int    the app's schema version of the state, for upgrade functions
    journal_pos     int    >= 0; the number of journal commands the state includes, so
                           restore replays the journal from this position on
    payload_length  int    >= 0; P above
    checksum        str    "blake2b-256:" + 64 lowercase hex digits, of the payload
    created_at      float  Unix time the snapshot was made
    index           any    None in version 1 writers. Reserved for segmented snapshots: a
                           later writer may put a segment index here (one independently
                           packed segment per top-level part of the state), so a worker can
                           load only what a request touches.

Any other key is kept in SnapshotHeader.extra and written back unchanged, so a version 1
reader tolerates keys added by later version 1 writers.

Stable across versions: bytes 0-13, the header limit and the CRC after the header. Only the
header keys and the payload layout may change in a later version. That lets a reader check
the CRC before the version, and so tell a file written by newer code (valid CRC, higher
version: SnapshotVersionError) from a flipped version byte (bad CRC: SnapshotCorrupt).

Limits: header at most 1 MiB (MAX_HEADER_LENGTH); payload up to what the disk and memory
hold (hundreds of MB is the expected top). The header CRC guards the fields the reader acts
on before it reads the payload; the BLAKE2b checksum guards the payload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgpack

from snapshots.errors import InvalidTenantName, SnapshotCorrupt, SnapshotVersionError

MAGIC = b"SBSNAP\r\n"
FORMAT_VERSION = 1
MAX_HEADER_LENGTH = 1024 * 1024
CHECKSUM_PREFIX = "blake2b-256:"
TENANT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# magic, version, header length
_FIXED = struct.Struct(">8sHI")
_CRC = struct.Struct(">I")
_CHECKSUM_RE = re.compile(r"blake2b-256:[0-9a-f]{64}")

Payload = bytes | bytearray | memoryview

# name -> accepted types; bool is excluded separately because it is an int subclass
_REQUIRED: dict[str, tuple[type, ...]] = {
    "tenant": (str,),
    "generation": (int,),
    "codec": (str,),
    "app_version": (str,),
    "schema_version": (int,),
    "journal_pos": (int,),
    "payload_length": (int,),
    "checksum": (str,),
    "created_at": (float, int),
}
_KNOWN_KEYS = frozenset(_REQUIRED) | {"index"}


@dataclass(frozen=True)
class SnapshotHeader:
    tenant: str
    generation: int
    codec: str
    app_version: str
    schema_version: int
    journal_pos: int
    payload_length: int
    checksum: str
    created_at: float
    index: Any = field(default=None, hash=False)
    format_version: int = FORMAT_VERSION
    # Offset of the payload in the file (18 + H); 0 until the header is encoded or read.
    header_bytes: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)


def validate_tenant_name(name: object) -> str:
    """Return name if it is a valid tenant name, else raise InvalidTenantName."""
    if not isinstance(name, str) or TENANT_NAME_RE.fullmatch(name) is None:
        raise InvalidTenantName(name)
    return name


def payload_checksum(payload: Payload) -> str:
    return CHECKSUM_PREFIX + hashlib.blake2b(payload, digest_size=32).hexdigest()


def make_header(
    tenant: str,
    generation: int,
    codec: str,
    app_version: str,
    schema_version: int,
    journal_pos: int,
    payload: Payload,
    *,
    created_at: float | None = None,
    index: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> SnapshotHeader:
    """Build the header for payload: its length, checksum and the prefix size.

    Reads the payload once to hash it; never copies it. ValueError for a field the reader
    would refuse (a negative journal_pos, a str generation, ...).
    """
    validate_tenant_name(tenant)
    header = SnapshotHeader(
        tenant=tenant,
        generation=generation,
        codec=codec,
        app_version=app_version,
        schema_version=schema_version,
        journal_pos=journal_pos,
        payload_length=memoryview(payload).nbytes,
        checksum=payload_checksum(payload),
        created_at=time.time() if created_at is None else float(created_at),
        index=index,
        extra=dict(extra or {}),
    )
    return dataclasses.replace(header, header_bytes=len(encode_prefix(header)))


def encode_prefix(header: SnapshotHeader) -> bytes:
    """Magic, version, header length, header and CRC: everything before the payload."""
    if header.format_version != FORMAT_VERSION:
        raise ValueError(f"this code writes format version {FORMAT_VERSION} only")
    fields: dict[str, Any] = {
        "tenant": header.tenant,
        "generation": header.generation,
        "codec": header.codec,
        "app_version": header.app_version,
        "schema_version": header.schema_version,
        "journal_pos": header.journal_pos,
        "payload_length": header.payload_length,
        "checksum": header.checksum,
        "created_at": float(header.created_at),
        "index": header.index,
    }
    clash = _KNOWN_KEYS.intersection(header.extra)
    if clash:
        raise ValueError(f"extra header keys clash with format keys: {sorted(clash)}")
    fields.update(header.extra)
    problem = _fields_problem(fields)
    if problem is not None:
        raise ValueError(f"refusing to write an unreadable snapshot header: {problem}")
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    if len(packed) > MAX_HEADER_LENGTH:
        raise ValueError(f"snapshot header is {len(packed)} bytes, over the 1 MiB limit")
    head = _FIXED.pack(MAGIC, header.format_version, len(packed)) + packed
    return head + _CRC.pack(zlib.crc32(head))


def write_to(fileobj: BinaryIO, header: SnapshotHeader, payload: Payload) -> None:
    """Write the prefix, then the payload itself (no copy, whatever its size).

    Works with raw (unbuffered) files, whose write() may be short.
    """
    view = memoryview(payload).cast("B")
    if view.nbytes != header.payload_length:
        raise ValueError(
            f"payload is {view.nbytes} bytes but the header says {header.payload_length}"
        )
    _write_all(fileobj, memoryview(encode_prefix(header)))
    _write_all(fileobj, view)


def _write_all(fileobj: BinaryIO, view: memoryview) -> None:
    while view.nbytes:
        written = fileobj.write(view)
        if not written:
            # A blocking file that writes nothing and raises nothing: never loop on it.
            raise OSError(f"write returned {written!r} with {view.nbytes} bytes left")
        view = view[written:]


def encode(header: SnapshotHeader, payload: Payload) -> bytes:
    """The whole file as bytes; copies the payload, so for small states and tests."""
    return encode_prefix(header) + bytes(payload)


def read_header(f: BinaryIO, *, source: str) -> SnapshotHeader:
    """Read and verify the prefix from f (positioned at offset 0).

    On return f is positioned at the payload. source names the file in errors.
    """
    fixed = f.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        what = "empty file" if not fixed else f"file is only {len(fixed)} bytes"
        raise SnapshotCorrupt(source, f"truncated: {what}, shorter than the 14-byte prefix")
    magic, version, length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise SnapshotCorrupt(
            source, f"bad magic {magic!r} (expected {MAGIC!r}): not a Switchboard snapshot"
        )
    if length == 0 or length > MAX_HEADER_LENGTH:
        raise SnapshotCorrupt(
            source, f"header length {length} is outside 1..{MAX_HEADER_LENGTH} bytes"
        )
    rest = f.read(length + _CRC.size)
    if len(rest) < length + _CRC.size:
        raise SnapshotCorrupt(
            source,
            f"truncated: header of {length} bytes plus 4-byte CRC expected after offset 14, "
            f"only {len(rest)} bytes present",
        )
    raw_header = memoryview(rest)[:length]
    (stored_crc,) = _CRC.unpack_from(rest, length)
    computed_crc = zlib.crc32(raw_header, zlib.crc32(fixed))
    if stored_crc != computed_crc:
        raise SnapshotCorrupt(
            source,
            f"header CRC mismatch: stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}",
        )
    # Checked after the CRC on purpose: see "Stable across versions" above.
    if version > FORMAT_VERSION:
        raise SnapshotVersionError(source, version, FORMAT_VERSION)
    if version < 1:
        raise SnapshotCorrupt(source, f"format version {version} does not exist")
    return _parse_header(raw_header, version, _FIXED.size + length + _CRC.size, source)


def _parse_header(raw: memoryview, version: int, header_bytes: int, source: str) -> SnapshotHeader:
    try:
        fields = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SnapshotCorrupt(source, f"header is not a valid msgpack map: {exc}") from exc
    if not isinstance(fields, dict):
        raise SnapshotCorrupt(source, f"header is a {type(fields).__name__}, not a map")
    problem = _fields_problem(fields)
    if problem is not None:
        raise SnapshotCorrupt(source, problem)
    return SnapshotHeader(
        tenant=fields["tenant"],
        generation=fields["generation"],
        codec=fields["codec"],
        app_version=fields["app_version"],
        schema_version=fields["schema_version"],
        journal_pos=fields["journal_pos"],
        payload_length=fields["payload_length"],
        checksum=fields["checksum"],
        created_at=float(fields["created_at"]),
        index=fields.get("index"),
        format_version=version,
        header_bytes=header_bytes,
        extra={k: v for k, v in fields.items() if k not in _KNOWN_KEYS},
    )


def _fields_problem(fields: Mapping[str, Any]) -> str | None:
    """What is wrong with a header's fields, or None.

    The writer applies the reader's rules too, so it never writes a header it would refuse.
    """
    for name, types in _REQUIRED.items():
        if name not in fields:
            return f"header field {name!r} is missing"
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            return f"header field {name!r} is {type(value).__name__} {value!r}, expected {expected}"
    for name in ("generation", "journal_pos", "payload_length"):
        if fields[name] < 0:
            return f"header field {name!r} is negative: {fields[name]}"
    if TENANT_NAME_RE.fullmatch(fields["tenant"]) is None:
        return f"header tenant {fields['tenant']!r} is not a valid name"
    if _CHECKSUM_RE.fullmatch(fields["checksum"]) is None:
        return f"header checksum {fields['checksum']!r} is not 'blake2b-256:<64 hex>'"
    return None


def read_snapshot(path: str | os.PathLike[str]) -> tuple[SnapshotHeader, bytes]:
    """Read and fully verify a snapshot file; return its header and payload.

    Raises SnapshotCorrupt or SnapshotVersionError on any problem, OSError when the file
    cannot be read at all. Never returns unverified bytes.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        header = read_header(f, source=source)
        file_size = os.fstat(f.fileno()).st_size
        # Compare sizes before reading, so a truncated 300 MB file is not read for nothing.
        expected = header.header_bytes + header.payload_length
        if file_size < expected:
            raise SnapshotCorrupt(
                source,
                f"truncated: header says the payload is {header.payload_length} bytes, "
                f"only {max(file_size - header.header_bytes, 0)} bytes follow the header",
            )
        if file_size > expected:
            raise SnapshotCorrupt(
                source,
                f"{file_size - expected} trailing bytes after the "
                f"{header.payload_length}-byte payload",
            )
        # BufferedReader.read(n) allocates n bytes once and reads straight into them.
        payload = f.read(header.payload_length)
        if len(payload) != header.payload_length or f.read(1):
            raise SnapshotCorrupt(
                source, "file changed size while being read (payload length mismatch)"
            )
    actual = payload_checksum(payload)
    if actual != header.checksum:
        raise SnapshotCorrupt(
            source, f"payload checksum mismatch: header has {header.checksum}, payload is {actual}"
        )
    return header, payload
